"""Assemble what the REACT metrics compare, from the pipeline's Parquet outputs, and tabulate results.

The metrics (:mod:`reactdiff.metrics`) take arrays; this module builds them from ``features/<split>``
(real speaker and listener coefficients, the neighbour matrix) and ``samples/<split>.parquet``
(generated reactions), and the reference baselines of the paper's Table 1 (:mod:`reactdiff.baselines`)
from the same data, so that every row of the table is scored by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from reactdiff import baselines, layout
from reactdiff.corpus import CorpusError
from reactdiff.features import EXAMPLES_FILE, FRAMES_FILE, NEIGHBOURS_FILE, read_frames
from reactdiff.metrics import compute_all
from reactdiff.realism import RealismEncoder

FD_WINDOW = 50  # frames per realism window (2 s), for every FD of a table
METRIC_ORDER = (
    "FRCorr", "FRDist", "FRDiv", "FRDvs", "FRVar", "FRSyn", "FD_stats", "FD_dynamics", "FD_learned", "Jitter",
)  # fmt: skip
BASELINE_ORDER = (  # table rows: the paper's Table 1, then the references it lacks
    "GT", "Mirror", "Random", "NN motion", "NN audio", "NN motion (causal)", "Appropriate real",
)  # fmt: skip
HIGHER_IS_BETTER = {
    "FRCorr": True,
    "FRDist": False,
    "FRDiv": True,
    "FRDvs": True,
    "FRVar": True,
    "FRSyn": False,
}


@dataclass
class SplitArrays:
    """Real data of a split, aligned on its usable examples (``N`` of them, ``T`` frames each)."""

    examples: list[dict]  # the usable rows of examples.parquet, in order
    speaker: np.ndarray  # [N, T, 58] FaceVerse units
    speaker_audio: np.ndarray  # [N, T, A] raw audio features
    listener: np.ndarray  # [N, T, 58] the real reaction of each example (also the pool L)
    neighbours: np.ndarray | None  # bool [N, N]: listener j is appropriate for speaker k

    @property
    def frames(self) -> int:
        return int(self.speaker.shape[1])


_RERUN_SAMPLE = "run the sample stage (`dvc repro sample`, or `python -m pipelines.sample`)"


def load_split(features_split_dir: Path) -> SplitArrays:
    """Real speaker/listener sequences of every usable example, cut to the shortest example's length."""
    features_split_dir = Path(features_split_dir)
    if not (features_split_dir / EXAMPLES_FILE).is_file():
        raise CorpusError(
            f"{features_split_dir / EXAMPLES_FILE}: not found; extract the features first (`dvc repro "
            "features`, or `python -m pipelines.features`)",
            features_split_dir,
        )
    examples = [e for e in pq.read_table(features_split_dir / EXAMPLES_FILE).to_pylist() if e["usable"]]
    if not examples:
        raise ValueError(f"{features_split_dir / EXAMPLES_FILE}: no usable example")
    clips = read_frames(features_split_dir / FRAMES_FILE)
    t = min(min(len(clips[e["speaker"]].face), len(clips[e["listener"]].face)) for e in examples)
    speaker = np.stack([clips[e["speaker"]].face[:t] for e in examples])
    audio = np.stack([clips[e["speaker"]].audio[:t] for e in examples])
    listener = np.stack([clips[e["listener"]].face[:t] for e in examples])
    neighbours = None
    path = features_split_dir / NEIGHBOURS_FILE
    if path.exists():
        full = np.load(path)
        rows = np.array([e["example"] for e in examples])
        neighbours = full[np.ix_(rows, rows)]
    return SplitArrays(examples, speaker, audio, listener, neighbours)


def generated_reactions(samples_path: Path, split: SplitArrays) -> np.ndarray:
    """``samples/<split>.parquet`` as ``P [N, M, T, 58]`` in the order of ``split.examples``.

    A missing file, or one that lacks examples or frames of the split, raises :class:`CorpusError`
    naming the file and the stage to rerun."""
    samples_path = Path(samples_path)
    if not samples_path.is_file():
        raise CorpusError(f"{samples_path}: not found; {_RERUN_SAMPLE}", samples_path)
    table = pq.read_table(samples_path, columns=["example", "sample", "frame", "coeffs"])
    example = table.column("example").to_numpy()
    sample = table.column("sample").to_numpy().astype(np.int64)
    frame = table.column("frame").to_numpy().astype(np.int64)
    coeffs = table.column("coeffs").combine_chunks().flatten().to_numpy().reshape(-1, layout.N_COEFFS)
    m = int(sample.max()) + 1
    position = {e["example"]: i for i, e in enumerate(split.examples)}
    missing = sorted(set(position) - set(np.unique(example).tolist()))
    if missing:
        raise CorpusError(
            f"{samples_path}: no generated reactions for examples {missing[:10]}; {_RERUN_SAMPLE}",
            samples_path,
        )
    P = np.full((len(split.examples), m, split.frames, layout.N_COEFFS), np.nan, np.float32)
    keep = np.isin(example, list(position)) & (frame < split.frames)
    rows = np.array([position[e] for e in example[keep]])
    P[rows, sample[keep], frame[keep]] = coeffs[keep]
    if np.isnan(P).any():
        raise CorpusError(
            f"{samples_path}: some frames of some samples are missing; {_RERUN_SAMPLE}", samples_path
        )
    return P


def baseline_reactions(
    test: SplitArrays, train: SplitArrays, samples: int, seed: int, segment: int = 16
) -> dict[str, np.ndarray]:
    """The paper's Table 1 baselines and two references, ``{name: P [N, M, T, 58]}``.

    GT and Mirror repeat one sequence ``M`` times (FRDiv 0 by construction, as in the paper); Random
    draws ``M`` independent Gaussian sequences with the train listener statistics; the nearest-neighbour
    baselines return, per ``segment`` frames, the train listener segment whose speaker segment (face
    coefficients, or audio features) is nearest. Not in the paper: NN motion (causal) keys each segment
    on the speaker frames up to its first frame, the ones the model may see; Appropriate real draws
    ``M`` of the test split's real reactions in each clip's ``A(k)`` (``test.neighbours``, the sets the
    metrics use), distinct while ``|A(k)| >= M``: the FRDiv of real variety, which a model's FRDiv
    should reach.
    Names in :data:`BASELINE_ORDER`.
    """
    if test.neighbours is None:
        raise ValueError(
            "the test split has no neighbour matrix (neighbour_emotion_<split>.npy in the corpus), so no "
            "appropriate reactions to draw the Appropriate real baseline from"
        )
    mean, std = baselines.train_statistics(train.listener.reshape(-1, layout.N_COEFFS))
    shape = (len(test.examples), samples, test.frames, layout.N_COEFFS)
    t = min(test.frames, train.frames)
    nn_motion = baselines.nearest_neighbour(
        test.speaker[:, :t], train.speaker[:, :t], train.listener[:, :t], segment=segment
    )
    nn_motion_causal = baselines.nearest_neighbour(
        test.speaker[:, :t], train.speaker[:, :t], train.listener[:, :t], segment=segment, causal=True
    )
    nn_audio = baselines.nearest_neighbour(
        test.speaker_audio[:, :t], train.speaker_audio[:, :t], train.listener[:, :t], segment=segment,
        standardise=True,
    )  # fmt: skip
    return {
        "GT": baselines.gt(test.listener, samples),
        "Mirror": baselines.mirror(test.speaker, samples),
        "Random": baselines.random_gaussian(mean, std, shape, seed=seed),
        "NN motion": baselines.repeat_samples(_pad_frames(nn_motion, test.frames), samples),
        "NN audio": baselines.repeat_samples(_pad_frames(nn_audio, test.frames), samples),
        "NN motion (causal)": baselines.repeat_samples(_pad_frames(nn_motion_causal, test.frames), samples),
        "Appropriate real": baselines.appropriate_real(test.listener, test.neighbours, samples, seed=seed),
    }


def _pad_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """Hold the last frame when the train clips are shorter than the test clips."""
    if x.shape[1] >= frames:
        return x[:, :frames]
    pad = np.repeat(x[:, -1:], frames - x.shape[1], axis=1)
    return np.concatenate([x, pad], axis=1)


def score(
    P: np.ndarray,
    split: SplitArrays,
    seed: int,
    workers: int = 1,
    realism_encoder: RealismEncoder | None = None,
) -> dict[str, dict[str, float]]:
    """Every metric of ``P [N, M, T, 58]`` on the paper's three coefficient subsets (all, expression, pose).

    The model and every baseline go through this one function, so the rows of a table are comparable.
    With ``realism_encoder`` (the ``realism_encoder`` stage's artifact), the Frechet distance of its
    embeddings is added as ``FD_learned`` with its real-vs-real floor ``FD_learned_real_floor``, on
    windows of the encoder's length, beside the hand-made ``FD_stats`` and ``FD_dynamics``.
    """
    if split.neighbours is None:
        raise ValueError("the split has no neighbour matrix (neighbour_emotion_<split>.npy in the corpus)")
    kinds: dict = {"stats": "stats", "dynamics": "dynamics"}
    window = FD_WINDOW
    if realism_encoder is not None:
        if realism_encoder.config.window != FD_WINDOW:
            raise ValueError(
                f"the realism encoder was trained on {realism_encoder.config.window}-frame windows; the "
                f"FD window is {FD_WINDOW} frames: set realism.window: {FD_WINDOW} in params.yaml"
            )
        realism_encoder.workers = max(1, workers)
        kinds["learned"] = realism_encoder.extractors()
    results = compute_all(
        P, split.listener, split.speaker, split.neighbours, workers=workers, seed=seed,
        feature_kinds=kinds, window=window,
    )  # fmt: skip
    return {subset: _in_metric_order(metrics) for subset, metrics in results.items()}


def _in_metric_order(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics of :data:`METRIC_ORDER` first, in that order, then the rest (floors, counts) sorted.

    The metrics file keeps this order, and ``dvc exp show`` its columns: the figures a researcher
    compares lead.
    """
    lead = [m for m in METRIC_ORDER if m in metrics]
    return {m: metrics[m] for m in lead + sorted(set(metrics) - set(lead))}


def ordered_baselines(results: dict[str, dict]) -> dict[str, dict]:
    """Baseline results (``metrics/baselines.json`` is written with sorted keys) in table order.

    The names of :data:`BASELINE_ORDER` first, in that order (the paper's Table 1 rows, then Appropriate
    real), then any other name alphabetically.
    """
    known = [name for name in BASELINE_ORDER if name in results]
    return {name: results[name] for name in known + sorted(set(results) - set(known))}


def results_table(results: dict[str, dict[str, dict[str, float]]]) -> pd.DataFrame:
    """``{variant: {subset: {metric: value}}}`` -> one row per (variant, subset), metrics as columns."""
    rows = []
    for variant, by_subset in results.items():
        for subset, metrics in by_subset.items():
            rows.append({"variant": variant, "subset": subset, **metrics})
    frame = pd.DataFrame(rows)
    ordered = [c for c in METRIC_ORDER if c in frame.columns]
    rest = [c for c in frame.columns if c not in ("variant", "subset", *ordered)]
    return frame[["variant", "subset", *ordered, *rest]]


def markdown_table(frame: pd.DataFrame, subset: str = "all") -> str:
    """A Markdown table of one subset, in the paper's column order, with arrows for better."""
    part = frame[frame["subset"] == subset]
    columns = [c for c in METRIC_ORDER if c in part.columns]
    header = ["variant"] + [f"{c} {'↑' if HIGHER_IS_BETTER.get(c, False) else '↓'}" for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in part.iterrows():
        cells = [str(row["variant"])] + [_fmt(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.4g}"
