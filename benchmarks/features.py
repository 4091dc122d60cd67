"""Clips per second and peak memory of the ``features`` stage's per-clip work, for each audio encoder.

    python -m benchmarks.features [--clips 8] [--frames 750] [--threads 2] [--strict-wav2vec2]

Each configuration runs in its own process (so peak RSS is its own) on a synthetic corpus in the
REACT2024 layout (44.1 kHz audio, resampled like the real corpus). wav2vec2 is measured with a randomly
initialised model of the *base* architecture (94M parameters): weights do not change the cost, and no
download is possible here. Prefect's per-process start-up (about 10 s, once per stage) is not included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reactdiff  # noqa: F401
from benchmarks.machine import load_average, load_line


def _run_one(args: argparse.Namespace) -> None:
    import torch

    from reactdiff.audio import build_encoder
    from reactdiff.corpus import read_split
    from reactdiff.features import extract_session

    torch.set_num_threads(args.threads)
    kwargs = json.loads(args.encoder_kwargs)
    encoder = build_encoder(args.encoder, **kwargs)
    index = read_split(Path(args.root), "train")
    clips = index.clips()[: args.clips]
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        results = list(
            pool.map(lambda c: extract_session(Path(args.root), "train", "bench", [c], encoder), clips)
        )
    elapsed = time.perf_counter() - start
    written = sum(len(r.clips) for r in results)
    frames = sum(c.n_frames for r in results for c in r.clips)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "clips": written,
                "seconds": elapsed,
                "clips_per_s": written / elapsed,
                "audio_s_per_s": frames / 25 / elapsed,
                "peak_rss_mb": peak_mb,
                "dim": encoder.dim,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=750)
    parser.add_argument("--workers", type=int, default=2, help="parallel clips, as the thread runner does")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument(
        "--strict-wav2vec2", action="store_true", help="also time chunk_frames=1 (slow on CPU)"
    )
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--encoder-kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        _run_one(args)
        return

    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from reactdiff.synthetic import SyntheticSpec, generate_corpus

    with tempfile.TemporaryDirectory(prefix="reactdiff-bench-") as tmp:
        root = Path(tmp) / "corpus"
        sessions = max(1, (args.clips + 1) // 2)
        spec = SyntheticSpec(
            frames=args.frames, families={"train": 1}, sessions_per_family=sessions, sample_rate=44_100
        )
        generate_corpus(root, spec)
        model_dir = Path(tmp) / "wav2vec2-base-random"
        Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(model_dir)  # base architecture, random weights
        configs = [
            ("logmel", "logmel", {}, args.clips),
            ("wav2vec2 base, chunk 16", "wav2vec2", {"model_path": str(model_dir), "chunk_frames": 16}, 2),
        ]
        if args.strict_wav2vec2:
            configs.append(("wav2vec2 base, chunk 1", "wav2vec2", {"model_path": str(model_dir)}, 1))
        load_before = load_average()
        print(f"features benchmark: {args.frames}-frame clips, 44.1 kHz audio, {args.workers} workers")
        print("| encoder | dim | clips | s | clips/s | audio s/s | peak RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for label, name, kwargs, n_clips in configs:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.features", "--_one", "--root", str(root),
                 "--encoder", name, "--encoder-kwargs", json.dumps(kwargs), "--clips", str(n_clips),
                 "--workers", str(args.workers), "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {label} | {r['dim']} | {r['clips']} | {r['seconds']:.1f} | {r['clips_per_s']:.2f} "
                f"| {r['audio_s_per_s']:.1f} | {r['peak_rss_mb']:.0f} |"
            )
        print(load_line(load_before, load_average()))


if __name__ == "__main__":
    main()
