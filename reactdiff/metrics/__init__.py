"""REACT evaluation metrics on 3DMM coefficients: appropriateness, diversity, synchrony and realism.

Inputs (numpy, FaceVerse units, any float dtype; computed in float64):

- ``P``: generated reactions ``[N, M, T, D]`` (``N`` speaker clips, ``M`` samples each).
- ``L``: every real listener reaction of the split ``[K, T, D]``, indexed like the doubled REACT examples.
- ``S``: the speaker behaviour of each clip ``[N, T, D]``.
- ``neighbours``: bool ``[N, K]``; ``A(k) = flatnonzero(neighbours[k])`` are the appropriate reactions to
  speaker clip ``k`` (row ``k`` of ``neighbour_emotion_<split>.npy``).

Every metric is computed for column subsets (:data:`SUBSETS`: ``all`` 0:58, ``expression`` 0:52, ``pose``
52:58, or any mapping of names to columns): per-dimension statistics over time, then a mean over the
subset's dimensions (FRDist instead sums its DTW over the subset, see below).

Conventions, compared with the public REACT 2023/2024 and ReactFace evaluation code (``metric/FR*.py``);
ReactDiff's own 3DMM evaluation code is not public:

- **FRCorr** (:func:`frcorr`): for clip ``k`` and sample ``i``, the max over ``j in A(k)`` of the CCC
  between ``P[k, i]`` and ``L[j]`` (per dimension over time, population moments, averaged over the
  subset's dimensions); summed over the ``M`` samples and averaged over clips, so the range is
  ``-M..M``. The public ``compute_FRC`` reports ``10 * mean`` over samples, the same number when
  ``M = 10``; its multiprocessing variant ``compute_FRC_mp`` multiplies the per-clip *sum* by 10 again
  (a 100x mean), which we do not repeat.
- **CCC on constant channels** (:func:`ccc`): ``2 cov / (var_x + var_y + (mean_x - mean_y)^2)`` is
  well defined unless both channels are constant with equal means (0/0); that case is perfect agreement
  and scores 1. A constant channel against a varying one, or two constants with different means, scores
  0, which is what the formula gives. The public code turns every constant channel into 0 (its
  ``nan_to_num`` of the Pearson factor), so a real reaction scored against itself loses its constant
  channels, which would explain GT scoring 9.48 rather than 10 in the paper (Table 1); here it scores
  exactly ``M`` whenever its own reaction is in ``A(k)``. "Constant" means a standard deviation at most
  ``const_tol`` (default 1e-8).
- **FRDist** (:func:`frdist`): for each ``k, i`` the min over ``j in A(k)`` of ``DTW(P[k, i], L[j])``,
  summed over the ``M`` samples and averaged over clips (the public ``compute_FRD`` reports
  ``10 * mean`` over samples: the same number for ``M = 10``; ``compute_FRD_mp`` multiplies the sum by 10
  again, not repeated here). The public code calls ``tslearn.metrics.dtw`` on the whole multivariate
  sequence (ReactFace's 3DMM code on all coefficients; the REACT challenge code on three groups of its
  25 emotion channels, weighted): one alignment with squared Euclidean local cost over the dimensions,
  and the square root of the best path's total cost. That is our default, ``dtw="euclidean"``, computed
  separately for each subset (one alignment per subset). ``dtw="abs"`` is the alternative of one
  alignment per dimension with ``|x - y|`` local cost, summed over the subset's dimensions: about 14x
  slower compiled (measured, three default subsets). DTW runs compiled (numba, ``backend="numba"``,
  :data:`LANES` alignments per call in SIMD lanes, float32 local costs on inputs centred in float64,
  float64 path sums; within 1e-6 relative of the float64 numpy reference, ``backend="numpy"``, which is
  kept for tests and machines without numba). Its cost, and the designs measured and not taken, are
  in ``benchmarks/metrics.py``.
- **FRDiv** (:func:`frdiv`): mean over clips of the mean squared difference between two different
  samples of the same clip (ordered pairs ``i != j``), per frame and dimension; equal to the public
  ``compute_FRDiv``. Closed form used: ``2 * var(ddof=1)`` over the samples, averaged over frames and dims.
- **Jitter** (:func:`jitter`, not a REACT metric): the mean squared frame-to-frame acceleration, a
  direct measure of the smoothness the FBK prior is meant to bring (used by the Table 4 ablation).
- **FRVar** (:func:`frvar`): mean over clips, samples and dimensions of the variance over time, with the
  unbiased estimator (``ddof=1``) like the public ``torch.var``.
- **FRDvs** (:func:`frdvs`): for each sample index, the mean squared difference between the reactions to
  two different speaker clips (ordered pairs ``k != l``), per frame and dimension, averaged over samples;
  equal to the public ``compute_FRDvs`` (closed form ``2 * var(ddof=1)`` over clips).
- **FRSyn** (:func:`frsyn`): time-lagged cross-correlation between ``P[k, i]`` and ``S[k]`` at lags
  ``-max_lag..max_lag`` (default 49 frames, the public ``range(-(2 * 25 - 1), 2 * 25)``), where lag
  ``l > 0`` pairs ``P[k, i, t + l]`` with ``S[k, t]`` (the listener follows the speaker by ``l`` frames).
  At each lag the Pearson correlation of the overlapping parts is taken per dimension and averaged over
  the subset's valid dimensions; the score of a reaction is ``|lag|`` at the peak, and FRSyn is the mean
  over all clips and all samples. Three defects of the public ``compute_FRSyn_mp`` are not repeated:
  (1) it returns inside its sample loop, so only the first of the ``M`` samples is scored: we score all;
  (2) a channel constant in either sequence makes its Pearson correlation NaN, the NaN poisons the mean
  over dimensions at every lag, and ``argmax`` then returns the first lag, pinning the offset at the
  worst value 49 (consistent with Mirror scoring 42.65 on expression, Table 8, but 0 on pose, Table 9,
  although a mirror is perfectly synchronous): we exclude a channel
  at every lag where its overlapping part is constant in either sequence, and report the number of
  channels constant over the whole clip (``FRSyn_excluded_channels``); (3) a reaction with no valid
  channel at any lag has no defined peak: it is left out of the mean and counted
  (``FRSyn_excluded_reactions``). Ties keep the first (most negative) lag, as ``argmax`` does.
- **Realism** (:func:`frechet_distance`, :func:`window_features`, :func:`real_floor`): the Frechet
  distance between Gaussian fits of two sets of feature vectors, computed on windows of frames with a
  named extractor (``stats``: per-dimension mean and std of each window; ``dynamics``: per-dimension mean
  absolute velocity and acceleration) or any callable (a learned encoder plugs in here). The real floor
  is the distance between two random halves (by clip) of the real reactions: the value an ideal
  generator would reach at that sample size, reported beside each score. A third, learned feature
  (``FD_learned``: embeddings of a small temporal encoder trained on the train split's listeners,
  :mod:`reactdiff.realism`) enters :func:`compute_all` as a ``{subset: callable}`` feature kind.

:func:`compute_all` runs everything for every subset and returns ``{subset: {metric: value}}``; its
cost at the REACT test set's scale is measured by ``python -m benchmarks.metrics``.

Layout: :mod:`~reactdiff.metrics.correlation` (CCC, FRCorr), :mod:`~reactdiff.metrics.dtw_reference`
and :mod:`~reactdiff.metrics.dtw_kernels` (DTW in numpy and compiled), :mod:`~reactdiff.metrics.distance`
(FRDist), :mod:`~reactdiff.metrics.diversity` (FRDiv, FRVar, FRDvs, Jitter),
:mod:`~reactdiff.metrics.synchrony` (FRSyn), :mod:`~reactdiff.metrics.frechet` (the realism FDs),
:mod:`~reactdiff.metrics.compute` (all of them); the names above are importable from here.
"""

from __future__ import annotations

from reactdiff.metrics._common import (
    CONST_TOL,
    DEFAULT_MAX_BYTES,
    SUBSETS,
    SYN_MAX_LAG,
    Columns,
    SubsetSpec,
    resolve_subsets,
)
from reactdiff.metrics.compute import compute_all
from reactdiff.metrics.correlation import ccc, frcorr
from reactdiff.metrics.distance import frdist
from reactdiff.metrics.diversity import frdiv, frdvs, frvar, jitter
from reactdiff.metrics.dtw_kernels import LANES, dtw_abs, dtw_euclidean
from reactdiff.metrics.frechet import (
    FEATURE_EXTRACTORS,
    FeatureFn,
    frechet_distance,
    real_floor,
    window_features,
)
from reactdiff.metrics.synchrony import frsyn, tlcc

__all__ = [
    "SUBSETS",
    "SYN_MAX_LAG",
    "CONST_TOL",
    "DEFAULT_MAX_BYTES",
    "LANES",
    "FEATURE_EXTRACTORS",
    "Columns",
    "FeatureFn",
    "SubsetSpec",
    "resolve_subsets",
    "ccc",
    "dtw_euclidean",
    "dtw_abs",
    "frcorr",
    "frdist",
    "frdiv",
    "frvar",
    "frdvs",
    "jitter",
    "tlcc",
    "frsyn",
    "window_features",
    "frechet_distance",
    "real_floor",
    "compute_all",
]
