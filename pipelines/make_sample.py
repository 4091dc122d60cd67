"""DVC stage ``make_sample``: write the synthetic REACT2024-layout corpus into ``data_sample/``.

It never writes into ``data/``: that folder is the real corpus, tracked by ``data.dvc``, and a stage
writing there would make DVC re-record ``data.dvc`` with the sample's hash.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipelines.flows import StageTimer, run_stage, worker_count
from reactdiff import atomic
from reactdiff.config import SampleCorpusConfig, load_params
from reactdiff.synthetic import SyntheticSpec, generate_corpus, preset

OUT = Path("data_sample")


def spec_from_params(cfg: SampleCorpusConfig) -> SyntheticSpec:
    overrides = {k: v for k, v in cfg.model_dump(exclude={"preset"}).items() if v is not None}
    return dataclasses.replace(preset(cfg.preset), **overrides)


def main() -> None:
    timer = StageTimer("make_sample")
    spec = spec_from_params(load_params().sample_corpus)
    with atomic.atomic_dir(OUT) as tmp:
        summary = generate_corpus(tmp, spec, workers=worker_count(0), progress=True)
    counts = ", ".join(f"{split}: {v['dyads']} dyads" for split, v in summary["splits"].items())
    timer.done(read=f"params sample_corpus ({spec})", wrote=f"{OUT}/ ({counts})")


if __name__ == "__main__":
    run_stage(main, "make_sample")
