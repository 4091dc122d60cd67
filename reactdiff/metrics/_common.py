"""What every metric shares: the coefficient subsets, tolerances, input checks and memory budgets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from reactdiff.layout import EXPRESSION, FPS, N_COEFFS, POSE

try:  # installed with scikit-learn (an MLflow dependency); optional
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - only slower under load without it
    threadpool_limits = None

SUBSETS: dict[str, slice] = {"all": slice(0, N_COEFFS), "expression": EXPRESSION, "pose": POSE}
SYN_MAX_LAG = 2 * FPS - 1  # +-2 s at 25 fps, as the public code's range(-49, 50)
CONST_TOL = 1e-8  # a channel whose std is at most this is constant
DEFAULT_MAX_BYTES = 256 * 2**20  # working-memory budget for the batched DTW cost volumes

Columns = slice | Sequence[int] | np.ndarray
SubsetSpec = Sequence[str] | Mapping[str, Columns]


def resolve_subsets(subsets: SubsetSpec, n_dims: int) -> dict[str, np.ndarray]:
    """Names (keys of :data:`SUBSETS`) or a ``{name: columns}`` mapping -> ``{name: int column indices}``."""
    if isinstance(subsets, Mapping):
        items = list(subsets.items())
    else:
        unknown = [s for s in subsets if s not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown subsets {unknown}; known: {sorted(SUBSETS)} (or pass a mapping)")
        items = [(s, SUBSETS[s]) for s in subsets]
    out: dict[str, np.ndarray] = {}
    for name, cols in items:
        idx = np.arange(n_dims)[cols] if isinstance(cols, slice) else np.asarray(cols, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n_dims:
            raise ValueError(f"subset {name!r} selects columns {idx.tolist()} outside 0..{n_dims - 1}")
        if len(np.unique(idx)) != idx.size:  # a repeated column would count twice in some metrics only
            raise ValueError(f"subset {name!r} repeats columns: {idx.tolist()}")
        out[name] = idx
    if not out:
        raise ValueError("no subsets requested")
    return out


def _check_reactions(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P)
    if P.ndim != 4:
        raise ValueError(f"generated reactions must be [clips, samples, frames, dims], got shape {P.shape}")
    return P


def _neighbour_lists(neighbours: np.ndarray, n_clips: int, n_real: int) -> list[np.ndarray]:
    neighbours = np.asarray(neighbours)
    if neighbours.shape != (n_clips, n_real):
        raise ValueError(
            f"neighbour matrix has shape {neighbours.shape}, expected (clips, real reactions) = "
            f"({n_clips}, {n_real}): take the rows of the evaluated clips and all columns"
        )
    return [np.flatnonzero(row) for row in neighbours]


def _clip_chunks(n: int, per_item_bytes: int, budget: int = DEFAULT_MAX_BYTES) -> Iterator[slice]:
    step = max(1, budget // max(1, per_item_bytes))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    return threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext()
