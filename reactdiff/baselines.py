"""The reference baselines of the ReactDiff paper (Table 1), shaped like generated reactions.

Every baseline returns ``[N, M, T, D]`` (``N`` speaker clips, ``M`` samples, FaceVerse units) and is scored
by :mod:`reactdiff.metrics` exactly like a model:

- **GT** (:func:`gt`): the real listener reaction of each clip, repeated ``M`` times. The paper's GT row
  scores FRCorr 9.48 of 10 and no FRDiv ("-"), which fits ``M`` copies of the clip's own reaction (each
  copy finds itself among its appropriate reactions), not ``M`` different appropriate reactions.
- **Mirror** (:func:`mirror`): the speaker's own behaviour, repeated ``M`` times.
- **Random** (:func:`random_gaussian`): independent Gaussian draws per frame and dimension with the train
  listeners' per-dimension mean and std (:func:`train_statistics`); ``M`` different draws, seeded.
- **NN motion / NN audio** (:func:`nearest_neighbour`): for each segment of the speaker's face
  coefficients (motion) or audio features (audio), the listener segment of the train dyad whose speaker
  segment is nearest in Euclidean distance; deterministic, so ``M`` copies (FRDiv 0, as in the paper).
  Each output segment is chosen by the speaker's frames of the same segment, so its first frame
  depends on the next ``segment - 1`` speaker frames: a glimpse of the future that the model, whose
  frame ``t`` sees speaker frames ``<= t`` (paper A.1: causal masks), never gets.
- **NN motion (causal)** (:func:`nearest_neighbour` with ``causal=True``, not in the paper): the same
  retrieval keyed on the ``segment`` speaker frames that end at the output segment's first frame, so
  that every output frame depends on speaker frames up to itself, as the model's do. On the sample
  corpus it costs NN motion 2 of its 28 frames of FRSyn (and 17% of its FRCorr): the part of the
  paper baseline's synchrony that comes from seeing the speaker's next frames.
- **Appropriate real** (:func:`appropriate_real`, not in the paper): ``M`` real reactions drawn from the
  clip's appropriate set ``A(k)``, distinct while ``|A(k)| >= M``. A reference for diversity: its FRDiv
  is how different the real appropriate reactions to one speaker are from each other, the level a
  model's FRDiv should reach (GT and the NN baselines score 0, Random's FRDiv is noise, not variety).

``repeat_samples`` returns a read-only broadcast view: ``M`` copies cost no memory (2.8 GB of float32 at
the REACT2024 test scale otherwise); copy it before writing into it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "repeat_samples",
    "gt",
    "mirror",
    "train_statistics",
    "random_gaussian",
    "nearest_neighbour",
    "appropriate_indices",
    "appropriate_real",
]

DEFAULT_SAMPLES = 10  # reactions per speaker clip in the REACT protocol


def repeat_samples(x: np.ndarray, samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """``[N, T, D]`` -> read-only view ``[N, samples, T, D]`` of ``samples`` identical reactions per clip."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected [clips, frames, dims], got shape {x.shape}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    return np.broadcast_to(x[:, None], (x.shape[0], samples, *x.shape[1:]))


def gt(listener_own: np.ndarray, samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """GT baseline: each clip's real listener reaction ``[N, T, D]``, repeated -> ``[N, samples, T, D]``."""
    return repeat_samples(listener_own, samples)


def mirror(speaker: np.ndarray, samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """Mirror baseline: the speaker's behaviour ``[N, T, D]`` as the reaction -> ``[N, samples, T, D]``."""
    return repeat_samples(speaker, samples)


def train_statistics(train_listener: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (ddof=0) over every frame of the train listeners ``[K, T, D]``."""
    x = np.asarray(train_listener, np.float64)
    flat = x.reshape(-1, x.shape[-1])
    return flat.mean(axis=0), flat.std(axis=0)


def random_gaussian(
    mean: np.ndarray, std: np.ndarray, shape: Sequence[int], seed: int = 0, dtype: type = np.float32
) -> np.ndarray:
    """Random baseline: ``mean + std * N(0, 1)`` drawn independently per element of ``shape``.

    ``mean``, ``std``: ``[D]``; ``shape``: ``(N, M, T, D)``. The same seed gives the same array.
    """
    mean = np.asarray(mean, np.float64)
    std = np.asarray(std, np.float64)
    shape = tuple(int(s) for s in shape)
    if mean.shape != (shape[-1],) or std.shape != (shape[-1],):
        raise ValueError(f"mean {mean.shape} and std {std.shape} must be [{shape[-1]}] for shape {shape}")
    if np.any(std < 0):
        raise ValueError("std must be non-negative")
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return (noise * std.astype(np.float32) + mean.astype(np.float32)).astype(dtype, copy=False)


def nearest_neighbour(
    query: np.ndarray,
    train_keys: np.ndarray,
    train_listener: np.ndarray,
    segment: int,
    hop: int | None = None,
    standardise: bool = False,
    causal: bool = False,
    max_bytes: int = 256 * 2**20,
) -> np.ndarray:
    """Nearest-neighbour baseline: the train listener segment of the nearest train speaker segment.

    ``query`` ``[N, T, F]`` (speaker face coefficients for NN motion, audio features per frame for NN
    audio), ``train_keys`` ``[K, T', F]`` the same features of the train speakers, ``train_listener``
    ``[K, T', D]`` their listeners' reactions -> ``[N, T, D]``.

    The query is cut into consecutive segments of ``segment`` frames; the database holds every train
    segment starting at multiples of ``hop`` (default ``segment``: non-overlapping) in every train clip.
    Each query segment takes the listener frames of the database segment at the smallest Euclidean distance
    over all its frames and features (first one on ties). A trailing partial segment of ``r`` frames is
    compared with the first ``r`` frames of each database segment. ``standardise`` z-scores every feature
    with the train keys' mean and std first (useful for audio features of unequal scales).

    ``causal`` keys every segment on the ``segment`` frames that END at its first frame instead (speaker
    frames before frame 0 repeat frame 0, in the query and in the database alike): output frame ``t``
    then depends on query frames ``<= t`` only.
    """
    query = np.asarray(query)
    keys = np.asarray(train_keys)
    values = np.asarray(train_listener)
    if query.ndim != 3 or keys.ndim != 3 or values.ndim != 3:
        raise ValueError(f"expected 3-D arrays, got query {query.shape}, keys {keys.shape}, {values.shape}")
    if keys.shape[:2] != values.shape[:2] or query.shape[2] != keys.shape[2]:
        raise ValueError(
            f"train keys {keys.shape} and listeners {values.shape} must share [K, T'], and the query "
            f"{query.shape} the feature size of the keys"
        )
    hop = segment if hop is None else hop
    if segment < 1 or hop < 1 or segment > keys.shape[1]:
        raise ValueError(f"segment {segment} and hop {hop} must be >= 1 and segment <= {keys.shape[1]}")
    if causal:
        query, keys = _delay_frames(query, segment - 1), _delay_frames(keys, segment - 1)
    K, Tk, F = keys.shape
    N, T, _ = query.shape
    # Centring (or z-scoring) both sides leaves every distance (or its standardised version) unchanged and
    # keeps the expanded form ||q||^2 + ||e||^2 - 2 q.e well conditioned. Keys are kept as float32 (one copy
    # of the train set); identical inputs stay identical, and the GEMMs run in float64.
    centre = np.mean(keys, axis=(0, 1), dtype=np.float64)
    scale = np.std(keys, axis=(0, 1), dtype=np.float64) if standardise else np.ones(F)
    scale = np.where(scale > 0, scale, 1.0)
    keys32 = np.empty(keys.shape, np.float32)
    for c in range(0, K, 256):
        keys32[c : c + 256] = (keys[c : c + 256] - centre) / scale
    q32 = ((query - centre) / scale).astype(np.float32)

    starts = np.arange(0, Tk - segment + 1, hop)
    entry_clip = np.repeat(np.arange(K), len(starts))
    entry_start = np.tile(starts, K)
    out = np.empty((N, T, values.shape[2]), values.dtype)
    q_starts = np.arange(0, T, segment)
    q_len = np.minimum(segment, T - q_starts)
    for length in np.unique(q_len):  # the full segments, then a trailing partial one
        length = int(length)
        frames = np.arange(length)
        rows = [(n, s) for s in q_starts[q_len == length] for n in range(N)]
        row_bytes = 8 * length * F
        # Query rows, entry rows and the [queries, entries] distance block each get a quarter of max_bytes.
        e_step = max(1, max_bytes // (4 * row_bytes))
        q_step = max(1, min(max_bytes // (4 * row_bytes), max_bytes // (32 * min(e_step, len(entry_clip)))))
        for qa in range(0, len(rows), q_step):
            chunk = rows[qa : qa + q_step]
            qn = np.array([r[0] for r in chunk])
            qs = np.array([r[1] for r in chunk])
            Q = q32[qn[:, None], qs[:, None] + frames].reshape(len(chunk), -1).astype(np.float64)
            best_d = np.full(len(chunk), np.inf)
            best_e = np.zeros(len(chunk), np.int64)
            for ea in range(0, len(entry_clip), e_step):
                eb = min(len(entry_clip), ea + e_step)
                E = keys32[entry_clip[ea:eb, None], entry_start[ea:eb, None] + frames]
                E = E.reshape(eb - ea, -1).astype(np.float64)
                # ||q - e||^2 = ||q||^2 + ||e||^2 - 2 q.e; ||q||^2 does not change the argmin.
                d = (E**2).sum(axis=1)[None] - 2.0 * (Q @ E.T)
                arg = np.argmin(d, axis=1)
                dmin = d[np.arange(len(chunk)), arg]
                better = dmin < best_d  # strict: the first entry wins ties across chunks too
                best_d[better], best_e[better] = dmin[better], ea + arg[better]
            src_clip, src_start = entry_clip[best_e], entry_start[best_e]
            out[qn[:, None], qs[:, None] + frames] = values[src_clip[:, None], src_start[:, None] + frames]
    return out


def _delay_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """``[N, T, F]`` delayed by ``frames`` along time (``out[:, t] = x[:, t - frames]``), frame 0 repeated."""
    frames = min(max(frames, 0), x.shape[1])
    return np.concatenate([np.repeat(x[:, :1], frames, axis=1), x[:, : x.shape[1] - frames]], axis=1)


def appropriate_indices(neighbours: np.ndarray, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> np.ndarray:
    """Which real reactions the Appropriate real baseline takes: int ``[N, samples]`` indices into ``L``.

    ``neighbours`` bool ``[N, K]``, ``A(k) = flatnonzero(neighbours[k])``: the same appropriate sets as
    FRCorr and FRDist in :mod:`reactdiff.metrics`, so the clip's own listener reaction is a candidate
    exactly when the matrix marks it (the REACT protocol counts a clip's own reaction as appropriate, and
    the sample corpus sets the diagonal), drawn with the same chance as every other member, neither forced
    in nor left out: the row shows the variety of ``A(k)`` as the metrics define it.

    Per clip, in clip order from one ``numpy.random.default_rng(seed)``: random permutations of ``A(k)``
    laid end to end, the first ``samples`` entries kept. With ``|A(k)| >= samples`` that is ``samples``
    distinct members, uniformly without replacement. With ``n = |A(k)| < samples = q n + r`` every member
    appears ``q`` times and ``r`` distinct members (the start of one more permutation) once more: repeats
    only where the set is too small, spread as evenly as possible, so FRDiv is not lowered more than the
    set forces (two copies of one reaction are a pair at difference 0: on the sample corpus, ``|A(k)| = 4``
    and ``M = 10`` give counts 3, 3, 2, 2, so 16 of the 90 ordered pairs). A clip with an empty ``A(k)``
    has no real reference: ``ValueError`` naming the clips (the metrics leave such clips out of FRCorr and
    FRDist, but FRDiv would need a made-up reaction).
    """
    nb = np.asarray(neighbours)
    if nb.ndim != 2:
        raise ValueError(f"neighbours must be [clips, real reactions], got shape {nb.shape}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    sets = [np.flatnonzero(row) for row in nb]
    empty = [k for k, members in enumerate(sets) if members.size == 0]
    if empty:
        raise ValueError(
            f"{len(empty)} of {len(sets)} clips have no appropriate real reaction (empty A(k)), e.g. clips "
            f"{empty[:10]}: the Appropriate real baseline needs at least one per clip; check the neighbour "
            "matrix (its diagonal marks each clip's own reaction) or drop those clips"
        )
    rng = np.random.default_rng(seed)
    out = np.empty((len(sets), samples), np.int64)
    for k, members in enumerate(sets):
        rounds = -(-samples // members.size)  # ceil
        out[k] = np.concatenate([rng.permutation(members) for _ in range(rounds)])[:samples]
    return out


def appropriate_real(
    listener: np.ndarray | Sequence[np.ndarray],
    neighbours: np.ndarray,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    frames: int | None = None,
) -> np.ndarray:
    """Appropriate real baseline: ``samples`` real reactions of each clip's ``A(k)``, ``[N, samples, T, D]``.

    ``listener``: the split's real reactions ``L``, ``[K, T', D]`` or ``K`` arrays ``[T_j, D]`` of any
    lengths; ``neighbours`` bool ``[N, K]``. The draws are :func:`appropriate_indices` (same seed, same
    array). Each reaction is fitted to ``T = frames`` (default: the shortest reaction, as
    :func:`reactdiff.evaluation.load_split` cuts a split): longer ones are cropped, shorter ones hold their
    last frame (as the NN baselines are padded). Every sample is a member of ``A(k)``, so scored against the
    same ``L`` FRCorr is ``M`` and FRDist 0 by construction; the row is there for FRDiv (and FRVar, FRSyn,
    realism) of real variety.
    A new array (not a view): ``N * M`` reactions are gathered.
    """
    if isinstance(listener, np.ndarray):
        if listener.ndim != 3:
            raise ValueError(f"expected listener reactions [K, frames, dims], got shape {listener.shape}")
        pool: np.ndarray | list[np.ndarray] = listener
    else:
        pool = [np.asarray(x) for x in listener]
        shapes = [x.shape for x in pool]
        if not pool or any(len(s) != 2 or s[0] < 1 or s[1] != shapes[0][1] for s in shapes):
            raise ValueError(f"expected K >= 1 reactions [frames >= 1, dims] of one dims, got {shapes}")
    nb = np.asarray(neighbours)
    if nb.ndim != 2 or nb.shape[1] != len(pool):
        raise ValueError(f"neighbours {nb.shape} must be [clips, {len(pool)}]: one column per real reaction")
    if frames is None:
        frames = pool.shape[1] if isinstance(pool, np.ndarray) else min(len(x) for x in pool)
    frames = int(frames)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    idx = appropriate_indices(nb, samples, seed)
    if isinstance(pool, np.ndarray) and pool.shape[1] >= frames:
        return pool[:, :frames][idx]
    used = np.unique(idx)  # fit only the reactions drawn
    if used.size == 0:  # no clip
        like = pool if isinstance(pool, np.ndarray) else pool[0]
        return np.empty((*idx.shape, frames, like.shape[-1]), like.dtype)
    fitted = np.stack([_fit_frames(np.asarray(pool[j]), frames) for j in used])
    return fitted[np.searchsorted(used, idx)]


def _fit_frames(x: np.ndarray, frames: int) -> np.ndarray:
    """``[T, D]`` -> ``[frames, D]``: cropped, or its last frame held."""
    if len(x) >= frames:
        return x[:frames]
    return np.concatenate([x, np.repeat(x[-1:], frames - len(x), axis=0)])
