"""Seconds and peak memory of each REACT metric (:mod:`reactdiff.metrics`), with an extrapolation.

    python -m benchmarks.metrics [--clips 16] [--samples 10] [--frames 750] [--neighbours 4] [--workers 1]
                                 [--small-clips 4] [--real K] [--dtw euclidean] [--backend auto]
                                 [--full-neighbours 4] [--metrics FRDist,compute_all]
    python -m benchmarks.metrics --full [--workers 2] [--metrics ...]

Data: random smooth reactions (moving averages of white noise, float32, 58 coefficients), ``K`` real
reactions (default ``max(2N, 8)``) and exactly ``--neighbours`` appropriate reactions per clip, seeded.
FD_learned embeds with a realism encoder (reactdiff/realism.py) trained, untimed, on up to 64 of the
real reactions before the measurement. Each metric runs in its own process, so its peak RSS is its own
("work MB": that peak minus the RSS once the data exist), after a warm-up call on tiny data (first-call
costs of BLAS/LAPACK and numba's compilation or cache loading are not the metric's). Every metric is
computed for the three subsets (all, expression, pose) in one call, as ``compute_all`` does. The
1-minute load average of the machine is recorded when each measurement starts: other processes
competing for the cores inflate wall-clock times.

Default mode: two scales, and the last column extrapolates the main scale to the REACT2024 test set (806
sessions, so ``N = K = 1612`` clips, ``M = 10``, ``T = 750``): every metric is linear in the number of
clips, and FRCorr and FRDist are also linear in ``|A(k)|``, whose average over the real test neighbour
matrix is not known here: ``--full-neighbours`` states the assumption.

``--full``: the real scale itself, measured rather than extrapolated: ``N = K = 1612``, ``M = 10``,
``T = 750``, 20 neighbours per clip, ``--workers 2`` unless given (P alone is 2.8 GB of float32). The
arrays are generated once and cached under ``benchmarks/out/metrics_data/`` for the per-metric processes.

Measured (the log that used to sit in the metrics module's docstring). The compiled DTW of FRDist takes
2.2 ns of CPU time per (pair, cell) for the three default subsets on an idle AMD EPYC (Zen 3) core, up
to 2.7 ns when other processes share the cores and caches, so the REACT test set (322k alignments of
750 x 750 frames at 20 neighbours per clip) takes 390 to 490 CPU seconds, 3.5 to 4 minutes on two cores
(``workers=2``); for an Intel Xeon with AVX-512 see below. At that scale, in CPU seconds:
FRDist 390 to 490, the learned FD 35, FRSyn 18, FRCorr 5, the stats and dynamics FDs 11, FRDiv, FRVar,
FRDvs, Jitter and the constant channels together 1 (one compiled pass over ``P``): 460 to 560 in all,
under 5 minutes on two cores with ``workers=2``. Peak memory is ``P`` (2.8 GB as float32) plus about
0.5 GB. Two alternatives were measured and not taken: local costs as a GEMM (``||x||^2 + ||y||^2 -
2 x.y``, float32 sgemm) cost 1.55 ns per (pair, cell) before any dynamic programming, and the expanded
form loses the exact zero of identical frames. Exact early abandoning of the min over ``A(k)`` (stop an
alignment once a whole row of its cumulative costs exceeds the best found so far) is not done: on the
benchmark's data the squared distances to the 20 neighbours spread by 1.5 % (relative std), so even
knowing the best in advance would skip about 3 % of the rows, and a lane group can only stop when all
its 16 pairs and three subsets can.

On an Intel Xeon with AVX-512 (Sapphire Rapids class, 2 vCPUs under KVM, shared with other jobs) the DTW
kernel alone measured 2.0 ns per (pair, cell) and FRDist at 96 clips and 20 neighbours per clip 2.4 ns with
256-bit vectors, 1.6 and 1.9 ns since the kernel uses 512-bit ones there (reactdiff/metrics/dtw_kernels.py).
A full run on that machine had been reported at about 5.3 ns, which neither measurement reproduced.

``--full --workers 2 --metrics compute_all`` on 2 cores of an AMD EPYC (Zen 4, AVX-512), quiet: 226.6 s
wall, 444.9 CPU-s, peak RSS 4.4 GB (1-minute load 1.74 at its start: the benchmark's data generation and a
sampling benchmark just before; nothing else ran).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from reactdiff import metrics as m

REACT2024_TEST_CLIPS = 1612  # 806 test sessions, each dyad seen from both sides
FULL_NEIGHBOURS = 20  # appropriate reactions per clip assumed at full scale
DATA_CACHE = Path("benchmarks/out/metrics_data")

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
    "FD_learned",
    "FD_learned_real_floor",
    "compute_all",
)
LEARNED = {"FD_learned", "FD_learned_real_floor", "compute_all"}  # need a trained realism encoder
PER_NEIGHBOUR = {"FRCorr", "FRDist"}  # the metrics whose cost grows with |A(k)|


def _n_real(clips: int, real: int | None) -> int:
    return real if real is not None else max(2 * clips, 8)  # real_floor needs two halves of two reactions


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _data(
    clips: int, samples: int, frames: int, neighbours: int, real: int | None = None, seed: int = 0
) -> _Arrays:
    """``P [N, M, T, 58]``, ``L [K, T, 58]``, ``S [N, T, 58]`` float32 and ``neighbours`` bool ``[N, K]``."""
    rng = np.random.default_rng(seed)
    width = 15

    def smooth(shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, np.float32)
        for i in range(shape[0]):  # one clip at a time keeps the float64 temporaries small
            z = rng.standard_normal((*shape[1:-2], shape[-2] + width, shape[-1]))
            c = np.cumsum(z, axis=-2)
            out[i] = (c[..., width:, :] - c[..., :-width, :]) / width
        return out

    K = _n_real(clips, real)
    P = smooth((clips, samples, frames, 58))
    L = smooth((K, frames, 58))
    S = smooth((clips, frames, 58))
    nb = np.zeros((clips, K), bool)
    for k in range(clips):
        nb[k, rng.choice(K, size=min(neighbours, K), replace=False)] = True
    return P, L, S, nb


def _cache_dir(clips: int, samples: int, frames: int, neighbours: int, real: int | None) -> Path:
    K = _n_real(clips, real)
    return DATA_CACHE / f"N{clips}_M{samples}_T{frames}_K{K}_A{neighbours}"


def _cached_data(clips: int, samples: int, frames: int, neighbours: int, real: int | None) -> _Arrays:
    """:func:`_data`, saved once as ``.npy`` files so that every per-metric process reads the same arrays."""
    folder = _cache_dir(clips, samples, frames, neighbours, real)
    names = ("P", "L", "S", "nb")
    if not all((folder / f"{n}.npy").exists() for n in names):
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in zip(names, _data(clips, samples, frames, neighbours, real), strict=True):
            part = folder / f"{name}.npy.part"
            with open(part, "wb") as f:
                np.save(f, array)
            os.replace(part, folder / f"{name}.npy")  # a half-written file never passes for the data
    P, L, S, nb = (np.load(folder / f"{n}.npy") for n in names)
    return P, L, S, nb


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _encoder(L: np.ndarray, window: int):
    """A realism encoder (reactdiff/realism.py, default config but ``window``) trained on up to 64 of
    ``L``: its training is the ``realism_encoder`` stage's cost, not the metric's, so it is not timed."""
    from reactdiff.realism import RealismConfig, train_realism_encoder

    return train_realism_encoder(L[:64], RealismConfig(window=window), device="cpu")


def _run_one(args: argparse.Namespace) -> None:
    name = args.metric
    tiny = _data(4, 2, 60, 2, seed=1)
    args.encoder = _encoder(tiny[1], 20) if name in LEARNED else None
    _compute(name, *tiny, args, window=20)  # warm-up: thread pools, LAPACK initialisation, numba, imports
    if args.cached:
        P, L, S, nb = _cached_data(args.clips, args.samples, args.frames, args.neighbours, args.real)
    else:
        P, L, S, nb = _data(args.clips, args.samples, args.frames, args.neighbours, args.real)
    args.encoder = _encoder(L, 50) if name in LEARNED else None
    base = _rss_mb()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    cpu = time.process_time()
    value = _compute(name, P, L, S, nb, args)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load": load,
        "peak_mb": _rss_mb(),
        "base_mb": base,
        "children_mb": children,
    }
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
    """One metric (or compute_all, reduced to its FRDist values) for every subset.

    The FD_learned rows and compute_all (which includes FD_learned) embed with ``args.encoder``, using
    ``args.workers`` threads as the evaluate stage does.
    """
    if getattr(args, "encoder", None) is not None:
        args.encoder.workers = args.workers
    if name == "FRCorr":
        value = m.frcorr(P, L, nb)
    elif name == "FRDist":
        value = m.frdist(P, L, nb, dtw=args.dtw, workers=args.workers, backend=args.backend)
    elif name == "FRDiv":
        value = m.frdiv(P)
    elif name == "FRVar":
        value = m.frvar(P)
    elif name == "FRDvs":
        value = m.frdvs(P)
    elif name == "FRSyn":
        value = m.frsyn(P, S)
    elif name.startswith("FD_"):
        cols = m.resolve_subsets(m.SUBSETS, P.shape[-1])
        kinds = args.encoder.extractors() if name.startswith("FD_learned") else None
        kind = {s: kinds[s] for s in cols} if kinds else {s: name.split("_")[1] for s in cols}
        if name.endswith("floor"):
            value = {s: m.real_floor(L, kind[s], window, columns=c) for s, c in cols.items()}
        else:
            value = {
                s: m.frechet_distance(
                    m.window_features(P, kind[s], window, columns=c),
                    m.window_features(L, kind[s], window, columns=c),
                )
                for s, c in cols.items()
            }
    elif name == "compute_all":
        kinds = {"stats": "stats", "dynamics": "dynamics", "learned": args.encoder.extractors()}
        results = m.compute_all(
            P, L, S, nb, dtw=args.dtw, workers=args.workers, backend=args.backend, window=window,
            feature_kinds=kinds,
        )  # fmt: skip
        value = {s: v["FRDist"] for s, v in results.items()}
    else:
        raise SystemExit(f"unknown metric {name}")
    return value


def _measure(args: argparse.Namespace, clips: int, metric: str) -> dict:
    cmd = [
        sys.executable, "-m", "benchmarks.metrics", "--_one", "--metric", metric, "--clips", str(clips),
        "--samples", str(args.samples), "--frames", str(args.frames), "--neighbours", str(args.neighbours),
        "--workers", str(args.workers), "--dtw", args.dtw, "--backend", args.backend,
    ]  # fmt: skip
    if args.real is not None:
        cmd += ["--real", str(args.real)]
    if args.cached:
        cmd += ["--cached"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{metric} at N={clips} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _main_full(args: argparse.Namespace, metrics: list[str]) -> None:
    args.clips = args.real = REACT2024_TEST_CLIPS
    args.samples, args.frames, args.neighbours = 10, 750, FULL_NEIGHBOURS
    args.cached = True
    start = time.perf_counter()
    _cached_data(args.clips, args.samples, args.frames, args.neighbours, args.real)
    print(f"  data ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    results = {}
    for metric in metrics:
        results[metric] = r = _measure(args, args.clips, metric)
        print(f"  measured {metric}: {r['seconds']:.1f} s (load {r['load']:.2f})", file=sys.stderr)
    print(
        f"metrics benchmark, full REACT2024 test scale: N = K = {args.clips}, M = {args.samples}, "
        f"T = {args.frames}, |A(k)| = {args.neighbours}, D = 58, float32 inputs, dtw={args.dtw}, "
        f"backend={args.backend}, workers={args.workers}; all three subsets per call"
    )
    print("| metric | wall s | CPU s | peak RSS MB | work MB | load (1 min) at start |")
    print("| --- | --- | --- | --- | --- | --- |")
    for metric, r in results.items():
        work = r["peak_mb"] - r["base_mb"]
        print(
            f"| {metric} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_mb']:.0f} | {work:.0f} | "
            f"{r['load']:.2f} |"
        )
    print(
        "\nCPU s counts every thread of the process; wall s above CPU s / workers means the cores were "
        "shared with other work. Work MB: peak RSS minus the RSS with the data loaded."
    )


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
    parser.add_argument("--real", type=int, default=None, help="real reactions K (default max(2N, 8))")
    parser.add_argument("--workers", type=int, default=None, help="FRDist threads (default 1, 2 in --full)")
    parser.add_argument("--dtw", default="euclidean", choices=("euclidean", "abs"))
    parser.add_argument("--backend", default="auto", choices=("auto", "numba", "numpy"), help="FRDist DTW")
    parser.add_argument(
        "--full-neighbours", type=float, default=None, help="assumed mean |A(k)| of the real test set"
    )
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated subset of the metrics")
    parser.add_argument("--full", action="store_true", help="measure at the real test-set scale")
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metric", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        _run_one(args)
        return
    metrics = [name for name in args.metrics.split(",") if name]
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise SystemExit(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    if args.workers is None:
        args.workers = 2 if args.full else 1
    if args.full:
        _main_full(args, metrics)
        return

    full_nb = args.full_neighbours if args.full_neighbours is not None else args.neighbours
    scales = [c for c in (args.small_clips, args.clips) if c > 0]
    results: dict[int, dict[str, Any]] = {c: {} for c in scales}
    for clips in scales:
        for metric in metrics:
            results[clips][metric] = _measure(args, clips, metric)
            print(
                f"  measured {metric} at N={clips}: {results[clips][metric]['seconds']:.2f} s",
                file=sys.stderr,
            )

    main_n = args.clips
    print(
        f"metrics benchmark: M={args.samples}, T={args.frames}, |A(k)|={args.neighbours}, "
        f"K={'max(2N, 8)' if args.real is None else args.real} real reactions, dtw={args.dtw}, "
        f"backend={args.backend}, workers={args.workers}; all three subsets per call"
    )
    head = " | ".join(f"N={c} s" for c in scales)
    print(
        f"| metric | {head} | N={main_n} CPU s | N={main_n} peak RSS MB | N={main_n} work MB | "
        f"load at start | N=1612 s (extrapolated) | N=1612 CPU s (extrapolated) |"
    )
    print("| --- |" + " --- |" * (len(scales) + 6))
    extrapolated: dict[str, tuple[float, float]] = {}  # (wall s, CPU s)
    for metric in metrics:
        r = results[main_n][metric]
        if metric != "compute_all":
            factor = REACT2024_TEST_CLIPS / main_n
            if metric in PER_NEIGHBOUR:
                factor *= full_nb / args.neighbours
            extrapolated[metric] = (r["seconds"] * factor, r["cpu_seconds"] * factor)
        elif set(metrics) == set(METRICS):
            # the sum of its parts, each scaled by its own law (only FRCorr and FRDist grow with |A(k)|)
            parts = [v for name, v in extrapolated.items() if not name.endswith("real_floor")]
            extrapolated[metric] = (sum(w for w, _ in parts), sum(c for _, c in parts))
        cells = " | ".join(f"{results[c][metric]['seconds']:.2f}" for c in scales)
        work = r["peak_mb"] - r["base_mb"]
        guess = " | ".join(f"{v:.0f}" for v in extrapolated[metric]) if metric in extrapolated else "- | -"
        print(
            f"| {metric} | {cells} | {r['cpu_seconds']:.2f} | {r['peak_mb']:.0f} | {work:.0f} | "
            f"{r['load']:.2f} | {guess} |"
        )
    print(
        f"\nExtrapolation: main-scale seconds x {REACT2024_TEST_CLIPS}/{main_n} clips, and x {full_nb:g}/"
        f"{args.neighbours} for FRCorr and FRDist (assumed mean |A(k)| = {full_nb:g}); compute_all is the "
        "sum of the extrapolated rows but the real floors (it reuses the real features) when all are "
        "measured; CPU s are the ones to compare on a busy machine. Work MB: peak RSS minus the RSS with "
        "the data loaded. Load: 1-minute load average of the machine when the measurement started."
    )
    dist = [name for name in ("FRDist", "compute_all") if name in metrics]
    if args.workers > 1 and args.backend == "numpy" and dist:
        peak = max(results[main_n][name]["children_mb"] for name in dist)
        print(f"Largest FRDist worker process: {peak:.0f} MB peak RSS.")


if __name__ == "__main__":
    main()
