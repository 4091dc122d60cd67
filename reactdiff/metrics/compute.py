"""compute_all: every metric for every coefficient subset in one call."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from reactdiff.metrics._common import (
    CONST_TOL,
    SYN_MAX_LAG,
    SubsetSpec,
    _check_reactions,
    _neighbour_lists,
    resolve_subsets,
)
from reactdiff.metrics.correlation import frcorr
from reactdiff.metrics.distance import frdist
from reactdiff.metrics.diversity import _diversity_totals, _subset_means
from reactdiff.metrics.frechet import FeatureFn, _floor_from_features, frechet_distance, window_features
from reactdiff.metrics.synchrony import _frsyn_counts

# ----------------------------------------------------------------------------------------------------------
# Everything


def compute_all(
    P: np.ndarray,
    L: np.ndarray,
    S: np.ndarray,
    neighbours: np.ndarray,
    subsets: SubsetSpec = ("all", "expression", "pose"),
    *,
    dtw: str = "euclidean",
    band: int | None = None,
    workers: int = 1,
    backend: str = "auto",
    max_lag: int = SYN_MAX_LAG,
    feature_kinds: Mapping[str, str | FeatureFn | Mapping[str, FeatureFn]] | Sequence[str] = (
        "stats",
        "dynamics",
    ),
    window: int = 50,
    seed: int = 0,
    const_tol: float = CONST_TOL,
) -> dict[str, dict[str, float]]:
    """Every metric for every subset: ``{subset: {metric: value}}``.

    ``P`` ``[N, M, T, D]`` generated, ``L`` ``[K, T, D]`` all real listener reactions of the split, ``S``
    ``[N, T, D]`` speakers, ``neighbours`` bool ``[N, K]``. Metrics: ``FRCorr``, ``FRDist``, ``FRDiv``,
    ``FRVar``, ``FRDvs``, ``FRSyn``, ``Jitter`` (smoothness, not a REACT metric), and for each feature
    kind ``FD_<kind>`` (generated vs all real reactions) and ``FD_<kind>_real_floor``. Counts:
    ``clips_without_neighbours`` (left out of FRCorr and FRDist), ``constant_channels`` (clip, sample, dim
    channels of ``P`` constant over time), ``FRSyn_excluded_channels`` (constant over the whole clip in
    ``P`` or ``S``), ``FRSyn_excluded_reactions`` (no valid channel at any lag) and ``FRSyn_reactions``
    (scored). ``workers`` parallelises FRDist (threads with the compiled ``backend``, processes with
    numpy). ``feature_kinds``: names of :data:`FEATURE_EXTRACTORS`, or ``{label: kind}`` where a kind is a
    name, a callable, or a ``{subset: callable}`` mapping (one extractor per subset, e.g. the learned
    encoders of :mod:`reactdiff.realism`; subsets it lacks get no ``FD_<label>``).
    """
    P = _check_reactions(P)
    L, S = np.asarray(L), np.asarray(S)
    N, _, T, D = P.shape
    if S.shape != (N, T, D) or L.ndim != 3 or L.shape[2] != D:
        raise ValueError(f"shapes disagree: P {P.shape}, L {L.shape} (expected [K, T, {D}]), S {S.shape}")
    cols = resolve_subsets(subsets, D)
    kinds = dict(feature_kinds) if isinstance(feature_kinds, Mapping) else {k: k for k in feature_kinds}
    lists = _neighbour_lists(neighbours, N, len(L))
    no_neighbours = sum(1 for js in lists if js.size == 0)

    results: dict[str, dict[str, float]] = {name: {} for name in cols}
    dist = frdist(P, L, neighbours, cols, dtw=dtw, band=band, workers=workers, backend=backend)
    tasks: list[Callable[[], list[_Entry]]] = [
        lambda: _per_subset("FRCorr", frcorr(P, L, neighbours, cols, const_tol)),
        lambda: _per_subset("FRDist", dist),
        functools.partial(_diversity_entries, P, cols, const_tol),
        functools.partial(_syn_entries, P, S, cols, max_lag, const_tol),
    ]
    for label, kind in kinds.items():
        for name in cols:
            fn = kind.get(name) if isinstance(kind, Mapping) else kind
            if fn is not None:  # a per-subset extractor mapping without this subset: not scored
                tasks.append(functools.partial(_fd_entries, P, L, cols[name], name, label, fn, window, seed))
    # The metrics besides FRDist are single-threaded compiled kernels or numpy, both of which release the
    # GIL: ``workers`` threads run them side by side (each bounds its own working memory).
    # Results are collected in task order, so the output does not depend on which finishes first.
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            entries = list(pool.map(lambda task: task(), tasks))
    else:
        entries = [task() for task in tasks]
    for group in entries:
        for name, metric, value in group:
            results[name][metric] = value
    for name in cols:
        results[name]["constant_channels"] = results[name].pop("constant_channels")  # last, as before
        results[name]["clips_without_neighbours"] = float(no_neighbours)
    return results


_Entry = tuple[str, str, float]  # (subset, metric, value)


def _per_subset(metric: str, values: Mapping[str, float]) -> list[_Entry]:
    return [(name, metric, float(v)) for name, v in values.items()]


def _syn_entries(
    P: np.ndarray, S: np.ndarray, cols: Mapping[str, np.ndarray], max_lag: int, const_tol: float
) -> list[_Entry]:
    syn = _frsyn_counts(P, S, cols, max_lag, const_tol)
    keys = ("FRSyn", "FRSyn_reactions", "FRSyn_excluded_channels", "FRSyn_excluded_reactions")
    return [(name, key, float(v[i])) for i, key in enumerate(keys) for name, v in syn.items()]


def _fd_entries(
    P: np.ndarray,
    L: np.ndarray,
    idx: np.ndarray,
    name: str,
    label: str,
    fn: str | FeatureFn,
    window: int,
    seed: int,
) -> list[_Entry]:
    gen = window_features(P, fn, window, columns=idx)
    real = window_features(L, fn, window, columns=idx)
    enough = len(gen) >= 2 and len(real) >= 2
    fd = frechet_distance(gen, real) if enough else math.nan
    floor = _floor_from_features(real, len(L), seed) if len(L) >= 4 else math.nan
    return [(name, f"FD_{label}", fd), (name, f"FD_{label}_real_floor", floor)]


def _diversity_entries(P: np.ndarray, cols: Mapping[str, np.ndarray], const_tol: float) -> list[_Entry]:
    """FRDiv, FRVar, FRDvs, Jitter and the constant channels in one pass over ``P`` (two for FRDvs)."""
    N, M, T, _ = P.shape
    names = ["var", "constant"] + (["div"] if M >= 2 else []) + (["dvs"] if N >= 2 else [])
    names += ["jitter"] if T >= 3 else []
    totals = _diversity_totals(P, names, const_tol)
    out = _per_subset(
        "FRDiv", _subset_means(totals["div"] / (N * T), cols) if M >= 2 else dict.fromkeys(cols, 0.0)
    )
    out += _per_subset("FRVar", _subset_means(totals["var"] / (N * M), cols))
    dvs = _subset_means(totals["dvs"] / (M * T), cols) if N >= 2 else dict.fromkeys(cols, math.nan)
    out += _per_subset("FRDvs", dvs)
    if T >= 3:
        out += _per_subset("Jitter", _subset_means(totals["jitter"] / (N * M * (T - 2)), cols))
    constant = totals["constant"]
    return out + _per_subset(
        "constant_channels", {name: int(constant[idx].sum()) for name, idx in cols.items()}
    )
