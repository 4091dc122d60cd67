"""Online sampling speed: per-window latency, FPS and FLOPs of the online generator (paper Table 16).

    python -m benchmarks.sampling [--presets demo,paper] [--steps 2,5,10,25,50,100] [--samples 1,10]
                                  [--windows N] [--paper-steps 2,10,50] [--guidance 1.0] [--device cpu]
                                  [--streams 1,16] [--precision auto|fp32|bf16|fp16]
    python -m benchmarks.sampling --student [--presets demo,paper] [--samples 10]

``--student`` times the teacher as the ``sample`` stage runs it (50 steps, SDE, guidance 3 at sigma <= 2)
beside its distilled student (:mod:`reactdiff.distillation`: a quarter of the parameters, 4 consistency
steps, no guidance pass), one after the other in this process, and prints the student's speed-up.

For each network preset (randomly initialised: weights do not change the cost) and each number of solver
steps and samples M, the benchmark streams windows of ``w = 16`` frames through
:class:`reactdiff.online.OnlineReactionGenerator` (M samples as one batch, DPM-Solver++(2M) SDE) and
reports:

- parameters; FLOPs per window, counted with ``torch.utils.flop_counter.FlopCounterMode`` over one full
  window generation (all denoiser evaluations of the window; matrix products, convolutions, attention
  and, through a formula added here, the LSTMs, which the stock counter skips), and per network
  evaluation of one row;
- per-window latency (median and 95th percentile over the timed windows, after warm-up) and frames per
  second ``w / latency``; real time means a window of 16 frames (640 ms of conversation at 25 fps) is
  generated within 640 ms;
- the arithmetic rate achieved (FLOPs per window over the median latency) beside this machine's matrix
  product peak in the same precision, measured here first (:func:`matmul_peak`): how far the sampler is
  from the hardware's limit. ``--precision`` is what the network computes in
  (:func:`reactdiff.devices.select_precision`; ``auto`` picks bf16 for the paper preset on a CPU with
  AMX or AVX-512-BF16, fp32 for the demo one);
- the sampler's own overhead: time per window outside the denoiser (``CountingDenoiser``), i.e.
  the solver updates, noise draws, (de)normalisation and host transfers;
- with ``--streams S`` (S > 1): S conversations stepped in lockstep as one batch
  (``OnlineReactionGenerator(streams=S)``, what the ``sample`` stage does offline); latency is then for
  all S windows together, FPS counts the frames of all streams, and ``ms/stream`` is the amortised cost of
  one conversation's window.

Speaker audio enters as precomputed features (demo: 86-dim log-mel/prosody, paper: 768-dim wav2vec2);
the cost of encoding raw audio per window is reported separately. The first (FLOP-counted) window and
one more are warm-up and not timed. The paper preset is slow on a few CPU cores, so by default it is
timed over 3 windows and, on CPU, only at 2, 10 and 50 steps.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.machine import load_average, load_line
from reactdiff.audio import LogMelProsodyEncoder, encode_causal_window
from reactdiff.config import SampleParams
from reactdiff.devices import PRECISIONS, select_precision
from reactdiff.distillation import student_config
from reactdiff.features import NormStats
from reactdiff.layout import FPS, N_COEFFS
from reactdiff.model import Denoiser, ReactionUNet, build_denoiser, count_parameters
from reactdiff.online import OnlineReactionGenerator
from reactdiff.samplers import CountingDenoiser
from reactdiff.speed import LSTM_FLOPS

WINDOW = 16
BUDGET_MS = 1000.0 * WINDOW / FPS  # 640 ms: a window must be generated as fast as it is spoken
AUDIO_DIM = {"demo": 86, "paper": 768}  # log-mel/prosody features; wav2vec2-base hidden states


@dataclass
class Row:
    preset: str
    model: str
    precision: str
    steps: int
    samples: int
    streams: int
    params_m: float
    gflops_window: float
    gflops_eval_row: float
    p50_ms: float
    p95_ms: float
    network_ms: float
    overhead_ms: float
    peak_gflops_s: float

    @property
    def gflops_s(self) -> float:
        """Arithmetic rate of one stream's window, all streams counted."""
        return self.streams * self.gflops_window / (self.p50_ms / 1000.0)

    @property
    def fps(self) -> float:
        return self.streams * WINDOW / (self.p50_ms / 1000.0)

    @property
    def real_time(self) -> str:
        if self.p95_ms <= BUDGET_MS:
            return "yes"
        if self.p50_ms <= BUDGET_MS:
            return "p50 only"
        return f"no ({self.p50_ms / BUDGET_MS:.1f}x)"

    def markdown(self) -> str:
        return (
            f"| ReactDiff {self.preset}{' student' if self.model == 'student' else ''} | {self.precision} "
            f"| {self.steps} | {self.samples} | {self.streams} "
            f"| {self.params_m:.2f} | {self.gflops_window:.3g} | {self.p50_ms:.1f} | {self.p95_ms:.1f} "
            f"| {self.p50_ms / self.streams:.1f} | {self.fps:.1f} "
            f"| {self.real_time} | {self.network_ms:.1f} | {self.overhead_ms:.1f} "
            f"| {self.gflops_s:.0f} | {100 * self.gflops_s / self.peak_gflops_s:.0f} % |"
        )


HEADER = (
    "| Method | precision | Steps | M | streams | Params (M) | GFLOPs/window | latency p50 ms | p95 ms "
    "| ms/stream | FPS | real time? | network ms | sampler overhead ms | GFLOP/s | of matmul peak |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of this machine's square ``size`` matrix product in ``dtype`` on ``device`` (best of the
    repetitions within about ``seconds``, after a warm-up): the limit a network's products approach."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    best, spent = math.inf, 0.0
    while spent < seconds:
        took = once()
        best, spent = min(best, took), spent + took
    return 2 * size**3 / best / 1e9


def random_stats(audio_dim: int, seed: int = 0) -> NormStats:
    rng = np.random.default_rng(seed)
    return NormStats(
        face_mean=rng.normal(size=N_COEFFS).astype(np.float32),
        face_std=rng.uniform(0.2, 2.0, N_COEFFS).astype(np.float32),
        audio_mean=rng.normal(size=audio_dim).astype(np.float32),
        audio_std=rng.uniform(0.5, 2.0, audio_dim).astype(np.float32),
    )


def build_network(preset: str, model: str = "teacher") -> Denoiser:
    """A randomly initialised teacher of ``preset``, or its student (weights do not change the cost)."""
    torch.manual_seed(0)
    teacher = build_denoiser(preset, audio_dim=AUDIO_DIM[preset])
    if model == "teacher":
        return teacher
    return Denoiser(ReactionUNet(student_config(teacher.config, preset)))


def measure(
    preset: str,
    steps: int,
    samples: int,
    windows: int,
    device: torch.device,
    guidance: float,
    solver: str,
    streams: int = 1,
    model: str = "teacher",
    guidance_interval: tuple[float, float] | None = None,
    precision: str = "auto",
    peaks: dict[torch.dtype, float] | None = None,
) -> Row:
    """Generate ``windows`` timed windows (after a FLOP-counted and a plain warm-up window).

    ``peaks``: the machine's matmul GFLOP/s per dtype, measured on first need and kept there.
    """
    audio_dim = AUDIO_DIM[preset]
    denoiser = build_network(preset, model).to(device).eval()
    dtype = select_precision(precision, device, count_parameters(denoiser))
    denoiser.compute_in(dtype)
    peaks = {} if peaks is None else peaks
    if dtype not in peaks:
        peaks[dtype] = matmul_peak(dtype, device)
    counter = CountingDenoiser(denoiser)
    gen = OnlineReactionGenerator(
        counter,
        random_stats(audio_dim),
        window=WINDOW,
        samples=samples,
        steps=steps,
        solver=solver,
        guidance_scale=guidance,
        guidance_interval=guidance_interval,
        device=device,
        streams=streams,
    )
    rng = np.random.default_rng(1)
    total = windows + 2
    face = rng.normal(size=(streams, total * WINDOW, N_COEFFS)).astype(np.float32)
    feats = rng.normal(size=(streams, total * WINDOW, audio_dim)).astype(np.float32)

    def step(i: int) -> None:
        f, a = face[:, i * WINDOW : (i + 1) * WINDOW], feats[:, i * WINDOW : (i + 1) * WINDOW]
        if streams == 1:
            gen.step(f[0], audio_features=a[0])
        else:
            gen.step_streams(f, a)

    with FlopCounterMode(display=False, custom_mapping=LSTM_FLOPS) as flop_counter:
        step(0)
    flops = flop_counter.get_total_flops() / streams
    evaluated_rows = counter.rows / streams
    step(1)

    latencies, network = [], []
    for i in range(2, total):
        counter.reset()
        start = time.perf_counter()
        step(i)  # returns numpy: any device work has finished
        latencies.append(time.perf_counter() - start)
        network.append(counter.seconds)
    lat_ms = np.asarray(latencies) * 1000.0
    net_ms = np.asarray(network) * 1000.0
    return Row(
        preset=preset,
        model=model,
        precision=next(name for name, d in PRECISIONS.items() if d == dtype),
        steps=steps,
        samples=samples,
        streams=streams,
        params_m=count_parameters(denoiser) / 1e6,
        gflops_window=flops / 1e9,
        gflops_eval_row=flops / evaluated_rows / 1e9,
        p50_ms=float(np.median(lat_ms)),
        p95_ms=float(np.percentile(lat_ms, 95)),
        network_ms=float(np.median(net_ms)),
        overhead_ms=float(np.median(lat_ms - net_ms)),
        peak_gflops_s=peaks[dtype],
    )


def audio_encoding_ms(windows: int = 20) -> dict[str, float]:
    """Median ms to encode one window of raw 16 kHz audio causally, per encoder."""
    out: dict[str, float] = {}
    hop = 16_000 // FPS
    signal = np.random.default_rng(2).normal(scale=0.1, size=(windows + 1) * WINDOW * hop).astype(np.float32)

    def per_window(encoder, n: int) -> float:
        times = []
        for i in range(1, n + 1):  # window 0 is warm-up
            start = time.perf_counter()
            encode_causal_window(encoder, signal[: (i + 1) * WINDOW * hop], i * WINDOW, WINDOW)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)

    out["logmel (86-dim)"] = per_window(LogMelProsodyEncoder(), windows)
    try:
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from reactdiff.audio import Wav2Vec2Encoder

        with tempfile.TemporaryDirectory(prefix="reactdiff-bench-") as tmp:
            model_dir = Path(tmp) / "wav2vec2-base-random"
            Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(model_dir)  # base architecture, random weights
            encoder = Wav2Vec2Encoder(model_dir, chunk_frames=WINDOW)
            out["wav2vec2-base (768-dim, chunk 16, 1 s context)"] = per_window(encoder, min(windows, 5))
    except Exception as exc:  # the demo numbers stand on their own; say why this one is missing
        print(f"wav2vec2 timing skipped: {exc}", file=sys.stderr)
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


RECIPE = SampleParams()  # what the sample stage runs, for the teacher and for the student


def _plan(args: argparse.Namespace, preset: str, device: torch.device) -> list[dict]:
    """The settings to measure for ``preset``: a grid of steps x M x streams, or teacher beside student."""
    samples, streams = _ints(args.samples), _ints(args.streams)
    if args.student:
        interval = tuple(RECIPE.guidance_interval) if RECIPE.guidance_interval else None
        teacher = dict(
            model="teacher",
            steps=RECIPE.steps,
            solver=RECIPE.solver,
            guidance=RECIPE.guidance_scale,
            guidance_interval=interval,
        )
        student = dict(
            model="student", steps=RECIPE.student.steps, solver=RECIPE.student.solver, guidance=1.0
        )
        return [
            {**m, "samples": n, "streams": s} for n in samples for s in streams for m in (teacher, student)
        ]
    steps = _ints(args.steps)
    if preset == "paper":
        if args.paper_steps:
            steps = _ints(args.paper_steps)
        elif device.type == "cpu":
            steps = [s for s in steps if s in (2, 10, 50)] or steps
    return [
        dict(steps=n, samples=m, streams=s, solver=args.solver, guidance=args.guidance)
        for n in steps
        for m in samples
        for s in streams
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="demo,paper", help="comma-separated network presets")
    parser.add_argument("--steps", default="2,5,10,25,50,100", help="solver steps (comma-separated)")
    parser.add_argument("--samples", default="1,10", help="samples M per window (comma-separated)")
    parser.add_argument("--windows", type=int, default=None, help="timed windows (default: demo 20, paper 3)")
    parser.add_argument(
        "--paper-steps",
        default=None,
        help="steps for the paper preset (default: 2,10,50 on CPU, else --steps)",
    )
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="classifier-free guidance (!=1 doubles rows)"
    )
    parser.add_argument("--solver", default="sde", choices=["sde", "ode"])
    parser.add_argument(
        "--student",
        action="store_true",
        help="teacher (the sample stage's recipe) beside its distilled student, per preset and M",
    )
    parser.add_argument("--streams", default="1", help="conversations batched in lockstep (comma-separated)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *PRECISIONS],
        help="what the network computes in (auto: reactdiff.devices.select_precision)",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads")
    parser.add_argument("--no-audio", action="store_true", help="skip timing the audio encoders")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    presets = [p for p in args.presets.split(",") if p]
    unknown = sorted(set(presets) - set(AUDIO_DIM))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(AUDIO_DIM)}")

    load_before = load_average()
    rows: list[Row] = []
    peaks: dict[torch.dtype, float] = {}
    print(HEADER.splitlines()[0], file=sys.stderr)
    for preset in presets:
        windows = args.windows or (3 if preset == "paper" else 20)
        for kwargs in _plan(args, preset, device):
            start = time.perf_counter()
            row = measure(
                preset, windows=windows, device=device, precision=args.precision, peaks=peaks, **kwargs
            )
            rows.append(row)
            took = time.perf_counter() - start
            print(f"{row.markdown()}  [{took:.0f} s]", file=sys.stderr, flush=True)

    recipe = (
        f"teacher: {RECIPE.steps} steps {RECIPE.solver}, guidance {RECIPE.guidance_scale:g} at sigma in "
        f"{RECIPE.guidance_interval}; student: {RECIPE.student.steps} {RECIPE.student.solver} steps, unguided"
        if args.student
        else f"solver DPM-Solver++(2M) {args.solver}, guidance scale {args.guidance:g}"
    )
    lines = [
        f"Online sampling on {name} (torch {torch.__version__}); window w = {WINDOW} frames, {recipe}; "
        f"real time = a window within {BUDGET_MS:.0f} ms (25 fps). Random weights; audio as precomputed "
        f"features. " + load_line(load_before, load_average()),
        "",
        HEADER,
        *(row.markdown() for row in rows),
        "",
    ]
    for dtype, peak in peaks.items():
        name = next(n for n, d in PRECISIONS.items() if d == dtype)
        lines.append(f"- Matrix product peak measured here ({name}, 2048 x 2048 x 2048): {peak:.0f} GFLOP/s.")
    for preset in presets:
        mine = [r for r in rows if r.preset == preset]
        if mine:
            lines.append(
                f"- {preset}: {mine[0].params_m:.2f} M parameters, {mine[0].gflops_eval_row:.4f} GFLOPs per "
                f"network evaluation of one row (one window of one sample at one noise level)."
            )
    paper = [r for r in rows if r.preset == "paper" and r.model == "teacher"]
    if paper:
        # The paper's own setting (50 steps, M = 10) when measured, else the most expensive one measured.
        paper_setting = [r for r in paper if (r.steps, r.samples) == (50, 10)]
        worst = paper_setting[0] if paper_setting else max(paper, key=lambda r: (r.steps, r.samples))
        fast = [r for r in paper if r.p50_ms <= BUDGET_MS]
        reach = ", ".join(f"{r.steps} steps M={r.samples}" for r in fast) or "none of the measured settings"
        lines.append(
            f"- Paper preset on this device: {worst.steps} steps, M={worst.samples} takes "
            f"{worst.p50_ms / 1000:.2f} s per window, {worst.p50_ms / BUDGET_MS:.1f}x the {BUDGET_MS:.0f} ms "
            f"budget ({worst.fps:.2f} FPS vs 25); real time (p50) at: {reach}."
        )
    for teacher, student in zip(rows[::2], rows[1::2], strict=False) if args.student else ():
        lines.append(
            f"- {teacher.preset}, M={teacher.samples}: the student ({student.params_m:.2f} M parameters, "
            f"{student.gflops_window:.3g} GFLOPs per window) runs at {student.fps:.1f} FPS, "
            f"{student.fps / teacher.fps:.1f}x the teacher's {teacher.fps:.1f} FPS; real time: "
            f"{student.real_time}."
        )
    if not args.no_audio:
        for label, ms in audio_encoding_ms().items():
            lines.append(f"- Raw-audio encoding per window, {label}: {ms:.1f} ms (add to the latency above).")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
