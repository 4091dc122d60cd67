"""DVC stage ``baselines``: the paper's reference rows (GT, Mirror, Random, NN motion, NN audio), NN motion
(causal) (keyed on the speaker frames the model may see: the fair reference for FRSyn) and Appropriate
real (``M`` real reactions of each clip's appropriate set: the FRDiv of real variety).

They depend on the data and the split only, not on the model, so they are their own stage: DVC
computes them once and every experiment's ``evaluate`` reuses them. Scored with the learned realism
feature of the ``realism_encoder`` stage (``FD_learned``) beside the hand-made ones.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.flows import StageTimer, run_stage, worker_count
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.evaluation import baseline_reactions, load_split, score
from reactdiff.realism import load_encoder

FEATURES = Path("features")
REALISM_ENCODER = Path("models_realism/encoder.pt")
OUT = Path("metrics/baselines.json")


def main() -> None:
    timer = StageTimer("baselines")
    params = load_params()
    split = load_split(FEATURES / params.sample.split)
    train = load_split(FEATURES / "train")
    encoder = load_encoder(REALISM_ENCODER, device=params.realism.device)
    variants = baseline_reactions(
        split, train, params.sample.samples, params.seed, segment=params.windows.size
    )
    workers = min(2, worker_count(0))
    results = {
        name: score(P, split, seed=params.seed, workers=workers, realism_encoder=encoder)
        for name, P in variants.items()
    }
    atomic.write_json(results, OUT)
    summary = ", ".join(f"{name} FRCorr {r['all']['FRCorr']:.3f}" for name, r in results.items())
    timer.done(
        read=f"{FEATURES}/{params.sample.split}, {FEATURES}/train, {REALISM_ENCODER}",
        wrote=f"{OUT} ({summary})",
    )


if __name__ == "__main__":
    run_stage(main, "baselines")
