"""Seconds and peak memory of each REACT metric (:mod:`reactdiff.metrics`), with an extrapolation.

    python -m benchmarks.metrics [--clips 16] [--samples 10] [--frames 750] [--neighbours 4] [--workers 1]
                                 [--small-clips 4] [--dtw euclidean] [--full-neighbours 4]

Data: random smooth reactions (moving averages of white noise, float32, 58 coefficients), ``K = 2N`` real
reactions (at least 8) and exactly ``--neighbours`` appropriate reactions per clip, seeded. Each metric
runs in its own process, so its peak RSS is its own ("work MB": that peak minus the RSS once the data
exist), after a warm-up call on tiny data (first-call costs of BLAS/LAPACK are not the metric's).
Every metric is computed for the three subsets (all, expression, pose) in one call, as ``compute_all``
does. The last column extrapolates the main scale to the REACT2024 test set (806 sessions, so ``N = K =
1612`` clips, ``M = 10``, ``T = 750``): every metric is linear in the number of clips, and FRCorr and
FRDist are also linear in ``|A(k)|``, whose average over the real test neighbour matrix is not known here:
``--full-neighbours`` states the assumption.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from reactdiff import metrics as m

REACT2024_TEST_CLIPS = 1612  # 806 test sessions, each dyad seen from both sides

METRICS = (
    "FRCorr",
    "FRDist",
    "FRDiv",
    "FRVar",
    "FRDvs",
    "FRSyn",
    "FD_stats",
    "FD_stats_real_floor",
    "FD_dynamics",
    "FD_dynamics_real_floor",
    "compute_all",
)
PER_NEIGHBOUR = {"FRCorr", "FRDist"}  # the metrics whose cost grows with |A(k)|


def _data(clips: int, samples: int, frames: int, neighbours: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    width = 15

    def smooth(shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, np.float32)
        for i in range(shape[0]):  # one clip at a time keeps the float64 temporaries small
            z = rng.standard_normal((*shape[1:-2], shape[-2] + width, shape[-1]))
            c = np.cumsum(z, axis=-2)
            out[i] = (c[..., width:, :] - c[..., :-width, :]) / width
        return out

    K = max(2 * clips, 8)  # real_floor needs two halves of at least two reactions
    P = smooth((clips, samples, frames, 58))
    L = smooth((K, frames, 58))
    S = smooth((clips, frames, 58))
    nb = np.zeros((clips, K), bool)
    for k in range(clips):
        nb[k, rng.choice(K, size=min(neighbours, K), replace=False)] = True
    return P, L, S, nb


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_one(args: argparse.Namespace) -> None:
    name = args.metric
    tiny = _data(2, 2, 60, 2, seed=1)
    _compute(name, *tiny, args, window=20)  # warm-up: thread pools, LAPACK initialisation, imports
    P, L, S, nb = _data(args.clips, args.samples, args.frames, args.neighbours)
    base = _rss_mb()
    start = time.perf_counter()
    value = _compute(name, P, L, S, nb, args)
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {"seconds": seconds, "peak_mb": _rss_mb(), "base_mb": base, "children_mb": children}
    print(json.dumps({**record, "value": value}))


def _compute(
    name: str,
    P: np.ndarray,
    L: np.ndarray,
    S: np.ndarray,
    nb: np.ndarray,
    args: argparse.Namespace,
    window: int = 50,
) -> dict[str, float]:
    """One metric (or compute_all, reduced to its FRDist values) for every subset."""
    if name == "FRCorr":
        value = m.frcorr(P, L, nb)
    elif name == "FRDist":
        value = m.frdist(P, L, nb, dtw=args.dtw, workers=args.workers)
    elif name == "FRDiv":
        value = m.frdiv(P)
    elif name == "FRVar":
        value = m.frvar(P)
    elif name == "FRDvs":
        value = m.frdvs(P)
    elif name == "FRSyn":
        value = m.frsyn(P, S)
    elif name.startswith("FD_"):
        kind = name.split("_")[1]
        cols = m.resolve_subsets(m.SUBSETS, P.shape[-1])
        if name.endswith("floor"):
            value = {s: m.real_floor(L, kind, window, columns=c) for s, c in cols.items()}
        else:
            value = {
                s: m.frechet_distance(
                    m.window_features(P, kind, window, columns=c),
                    m.window_features(L, kind, window, columns=c),
                )
                for s, c in cols.items()
            }
    elif name == "compute_all":
        value = {
            s: v["FRDist"]
            for s, v in m.compute_all(P, L, S, nb, dtw=args.dtw, workers=args.workers, window=window).items()
        }
    else:
        raise SystemExit(f"unknown metric {name}")
    return value


def _measure(args: argparse.Namespace, clips: int, metric: str) -> dict:
    cmd = [
        sys.executable, "-m", "benchmarks.metrics", "--_one", "--metric", metric, "--clips", str(clips),
        "--samples", str(args.samples), "--frames", str(args.frames), "--neighbours", str(args.neighbours),
        "--workers", str(args.workers), "--dtw", args.dtw,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{metric} at N={clips} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=16, help="speaker clips N at the main scale")
    parser.add_argument(
        "--small-clips", type=int, default=4, help="speaker clips at the small scale (0: skip)"
    )
    parser.add_argument("--samples", type=int, default=10, help="samples M per clip")
    parser.add_argument("--frames", type=int, default=750, help="frames T per clip")
    parser.add_argument("--neighbours", type=int, default=4, help="appropriate reactions |A(k)| per clip")
    parser.add_argument("--workers", type=int, default=1, help="FRDist processes")
    parser.add_argument("--dtw", default="euclidean", choices=("euclidean", "abs"))
    parser.add_argument(
        "--full-neighbours", type=float, default=None, help="assumed mean |A(k)| of the real test set"
    )
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metric", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        _run_one(args)
        return

    full_nb = args.full_neighbours if args.full_neighbours is not None else args.neighbours
    scales = [c for c in (args.small_clips, args.clips) if c > 0]
    results = {c: {} for c in scales}
    for clips in scales:
        for metric in METRICS:
            results[clips][metric] = _measure(args, clips, metric)
            print(
                f"  measured {metric} at N={clips}: {results[clips][metric]['seconds']:.2f} s",
                file=sys.stderr,
            )

    main_n = args.clips
    print(
        f"metrics benchmark: M={args.samples}, T={args.frames}, |A(k)|={args.neighbours}, "
        f"K=max(2N, 8) real reactions, dtw={args.dtw}, workers={args.workers}; all three subsets per call"
    )
    head = " | ".join(f"N={c} s" for c in scales)
    print(f"| metric | {head} | N={main_n} peak RSS MB | N={main_n} work MB | N=1612 s (extrapolated) |")
    print("| --- |" + " --- |" * (len(scales) + 3))
    extrapolated = {}
    for metric in METRICS:
        r = results[main_n][metric]
        if metric == "compute_all":
            # the sum of its parts, each scaled by its own law (only FRCorr and FRDist grow with |A(k)|)
            extrapolated[metric] = sum(extrapolated.values())
        else:
            factor = REACT2024_TEST_CLIPS / main_n
            if metric in PER_NEIGHBOUR:
                factor *= full_nb / args.neighbours
            extrapolated[metric] = r["seconds"] * factor
        cells = " | ".join(f"{results[c][metric]['seconds']:.2f}" for c in scales)
        work = r["peak_mb"] - r["base_mb"]
        print(f"| {metric} | {cells} | {r['peak_mb']:.0f} | {work:.0f} | {extrapolated[metric]:.0f} |")
    print(
        f"\nExtrapolation: main-scale seconds x {REACT2024_TEST_CLIPS}/{main_n} clips, and x {full_nb:g}/"
        f"{args.neighbours} for FRCorr and FRDist (assumed mean |A(k)| = {full_nb:g}); compute_all is the "
        "sum of the extrapolated rows. Work MB: peak RSS minus the RSS with the data loaded."
    )
    if args.workers > 1:
        peak = max(results[main_n][m]["children_mb"] for m in ("FRDist", "compute_all"))
        print(f"Largest FRDist worker process: {peak:.0f} MB peak RSS.")


if __name__ == "__main__":
    main()
