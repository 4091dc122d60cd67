"""DVC stage ``realism_encoder``: train the learned realism feature on the train split's listeners.

Reads ``features/train`` (the real listener reaction of every usable example; no other split is
seen) and writes ``models_realism/encoder.pt`` (one small temporal encoder per coefficient subset, with
its config and normalisation; see :mod:`reactdiff.realism`) and ``metrics/realism_encoder.json`` (losses
and timings). ``baselines`` and ``evaluate`` score ``FD_learned`` with it.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.flows import StageTimer, run_stage
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.evaluation import load_split
from reactdiff.realism import RealismConfig, save_encoder, train_realism_encoder

FEATURES = Path("features")
OUT = Path("models_realism/encoder.pt")
METRICS = Path("metrics/realism_encoder.json")


def main() -> None:
    timer = StageTimer("realism_encoder")
    params = load_params()
    config = RealismConfig(**params.realism.model_dump(exclude={"device"}), seed=params.seed)
    train = load_split(FEATURES / "train")
    encoder = train_realism_encoder(train.listener, config, device=params.realism.device)
    save_encoder(encoder, OUT)
    atomic.write_json(encoder.stats, METRICS)
    losses = ", ".join(f"{s} {encoder.stats[s]['final_loss']:.3f}" for s in encoder.subsets)
    timer.done(
        read=f"{FEATURES}/train ({len(train.listener)} listener reactions)",
        wrote=f"{OUT}, {METRICS} (final loss {losses}; chance {encoder.stats['all']['chance_loss']:.3f})",
    )


if __name__ == "__main__":
    run_stage(main, "realism_encoder")
