"""Distillation of the guided teacher into a small few-step student (paper app. C.6, Table 16).

What the student is. A :class:`reactdiff.model.Denoiser` of the same architecture with a quarter of the
teacher's parameters or fewer (:data:`STUDENT_PRESETS`), trained to be a *consistency function* of the
teacher's guided probability-flow ODE: ``f(x, sigma)`` is where the ODE trajectory through ``x`` at
level ``sigma`` ends at ``sigma = 0`` (Song et al. 2023, "Consistency Models"). It keeps the denoiser
contract ``(x, sigma, cond) -> x0``, so the samplers, the online generator and the live service run it
unchanged; its own sampler is the multistep consistency one (:func:`reactdiff.samplers.
sample_consistency`): a jump to ``sigma = 0`` per evaluation, fresh noise in between.

Guidance is distilled. The ODE the student learns is the teacher's *with* classifier-free guidance at
the sampling recipe's scale and noise interval (``sample.guidance_scale``, ``sample.guidance_interval``),
so one student evaluation replaces the two of a guided teacher step.

Three choices, each measured on the sample corpus (README "The distilled student" has the table; the
teacher at 50 SDE steps: FRCorr 1.54, FRDiv 0.0114):

- *Targets*: the ends of the teacher's ODE trajectories, solved in advance (``method: trajectory``):
  for a pool of training windows the guided teacher's ODE is solved from fresh noise over
  ``teacher_ode_steps`` DPM-Solver++(2M) steps (:func:`teacher_trajectories`), and every point of a
  trajectory is a training input whose target is the trajectory's end. Consistency distillation
  (``method: consistency``, :func:`consistency_distillation_loss`: one teacher step per optimiser step,
  the target an EMA of the student at the neighbouring level) learns the same function by bootstrapping
  along the trajectories; in the same budget its one-step map stayed as far from the teacher's ODE
  ends as the conditional mean is (mean squared gap 0.079, the mean's 0.065); trajectory targets
  reach 0.009.
- *Skip path*: the end of the prior's *Gaussian* ODE trajectory through ``x`` (``skip: flow``,
  :meth:`reactdiff.prior.WindowPrior.flow`) instead of the teacher's Wiener filter. The Wiener
  estimate tends to the mean at high noise, so a student built on it starts as (and, where it cannot
  resolve the noise, stays) a posterior mean: FRDiv 0.0049, 0.4 of the teacher's. The flow maps every
  noise to its own sample, with the windows' covariance, from the start.
- *Loss*: the energy score of two draws per window (:func:`energy_score`) rather than the squared
  error: what the student cannot resolve, the squared error averages onto the mean; the energy score
  keeps it spread like the teacher's. Its spread weight (0.3) gives some diversity back for
  appropriateness: FRCorr 1.23 / 1.42 / 1.47 at 1 / 0.5 / 0.3, FRDiv 0.015 / 0.012 / 0.0115.

Rollouts. A share (``rollout_prob``) of the pool's windows has its past sampled by the student itself,
as it will be when it runs: the teacher's trajectories then show what to do from there.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from reactdiff import atomic
from reactdiff.conditions import Conditions
from reactdiff.config import DistillParams
from reactdiff.devices import select_device
from reactdiff.model import (
    Denoiser,
    NetworkConfig,
    ReactionUNet,
    count_parameters,
)
from reactdiff.noise import SIGMA_MAX, SIGMA_MIN, karras_sigmas, sample_training_sigmas
from reactdiff.samplers import Denoiser as DenoiserFn
from reactdiff.samplers import guided, prepare, sample_dpmpp_2m
from reactdiff.training.checkpointing import (
    load_checkpoint,
    load_optimizer_state,
    restore_rng_state,
    rng_state,
)
from reactdiff.training.config import CHECKPOINT_FORMAT, WindowSource, _plain, seed_for
from reactdiff.training.data import (
    WindowSampler,
    evenly_spaced,
    sample_previous,
    to_model_inputs,
    with_generated_past,
)
from reactdiff.training.ema import EMA

__all__ = [
    "STUDENT_PRESETS",
    "DistillResult",
    "consistency_distillation_loss",
    "distill",
    "distilled_or_trained",
    "guided_teacher",
    "ode_gap",
    "regression_loss",
    "student_config",
    "teacher_ode_step",
]

STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    # 67k parameters against the demo teacher's 289k (0.23): the teacher's width at full resolution, one
    # level. Measured against the teacher's two levels at half the width (70k): one-step gap to the
    # teacher's ODE 0.015 against 0.023, FRSyn 27.3 against 32.1 (energy score, spread weight 1).
    "demo": dict(channel_mults=(1,), attn_levels=(0,), emb_dim=16, lstm_hidden=8),
    # 15.3M against the paper teacher's 85.4M (0.18; paper Table 16: 19.87M).
    "paper": dict(channels=128, res_blocks=1, emb_dim=512, lstm_hidden=128),
}
"""Network fields the student changes from its teacher's configuration, by the teacher's preset. Every
other field (the ablation switches, the audio size, the window, the speaker history) is the teacher's."""

# Stream identifiers of the counter-based seeds (distinct from the training loop's).
_BATCHES, _NOISE, _VALIDATION, _POOL = 11, 12, 13, 14
_POOL_CHUNK = 500  # windows whose trajectories the teacher solves in one batch


def distilled_or_trained(checkpoint: Path | str) -> Literal["teacher", "student"]:
    """``"student"`` for a checkpoint :func:`distill` wrote, ``"teacher"`` for one of the training loop: the
    ``sample.model`` whose recipe (steps, solver, guidance) the network is meant to run with."""
    return "student" if "distill" in (load_checkpoint(checkpoint).get("extra") or {}) else "teacher"


def student_config(teacher: NetworkConfig, preset: str) -> NetworkConfig:
    """The student's network: ``teacher``'s configuration with :data:`STUDENT_PRESETS` ``[preset]``, made
    narrower while it has more than a quarter of the teacher's parameters (wide audio features, such as
    wav2vec2's 768, weigh more on a small network than on its teacher)."""
    if preset not in STUDENT_PRESETS:
        raise ValueError(f"no student for the {preset!r} preset; known: {sorted(STUDENT_PRESETS)}")
    config = dataclasses.replace(teacher, dropout=0.0, **STUDENT_PRESETS[preset])
    budget = _parameters(teacher) / 4
    step = math.lcm(config.norm_groups, config.attn_heads, 2)  # widths the network accepts
    while _parameters(config) > budget and config.channels > step:
        config = dataclasses.replace(config, channels=config.channels - step)
    return config


def _parameters(config: NetworkConfig) -> int:
    with torch.device("meta"):  # counted without allocating the weights
        return count_parameters(ReactionUNet(config))


def guided_teacher(teacher: Denoiser, scale: float, interval: tuple[float, float] | None) -> DenoiserFn:
    """The teacher as the sampling recipe runs it: guided at ``scale`` over ``interval`` of noise levels."""
    return guided(teacher, scale, None if interval is None else (float(interval[0]), float(interval[1])))


def teacher_ode_step(teacher: DenoiserFn, x: Tensor, sigma: Tensor, sigma_next: Tensor, cond: Any) -> Tensor:
    """One first-order step of the teacher's probability-flow ODE from ``sigma`` to ``sigma_next`` (rows).

    DPM-Solver++(1): ``x' = (s'/s) x + (1 - s'/s) D(x, s)``, the exact solution when ``D`` is constant
    over the step. ``x``: ``[B, w, D]``; ``sigma``, ``sigma_next``: ``[B]``.
    """
    ratio = (sigma_next / sigma)[:, None, None]
    return ratio * x + (1 - ratio) * teacher(x, sigma, cond)


def consistency_distillation_loss(
    student: DenoiserFn,
    target: DenoiserFn,
    teacher: DenoiserFn,
    x0: Tensor,
    cond: Any,
    levels: Tensor,
    generator: torch.Generator,
    substeps: int = 1,
) -> Tensor:
    """Consistency distillation loss (module docstring) on a batch of clean windows ``x0`` ``[B, w, D]``.

    ``levels``: ``[N]`` increasing noise levels (``levels[0]`` is where ``f`` is the identity);
    ``teacher``: the (guided) teacher denoiser; ``target``: the EMA student. Segments and noise are drawn
    from ``generator`` (CPU), so a step's randomness depends on its seed only. ``substeps``: teacher steps
    per segment (geometrically spaced), a more exact target for a coarse grid. Returns the scalar loss.
    """
    b = x0.shape[0]
    segment = torch.randint(0, len(levels) - 1, (b,), generator=generator)
    z = torch.randn(x0.shape, generator=generator).to(x0)
    levels = levels.to(x0)
    segment = segment.to(x0.device)
    sigma_lo, sigma_hi = levels[segment], levels[segment + 1]
    x_hi = x0 + sigma_hi[:, None, None] * z
    with torch.no_grad():
        x_lo, sigma, teacher_cond = x_hi, sigma_hi, prepare(teacher, cond)
        for k in range(1, substeps + 1):  # geometric sub-levels from sigma_hi down to sigma_lo
            sigma_next = sigma_hi ** (1 - k / substeps) * sigma_lo ** (k / substeps)
            x_lo, sigma = teacher_ode_step(teacher, x_lo, sigma, sigma_next, teacher_cond), sigma_next
        aim = torch.where((segment == 0)[:, None, None], x_lo, target(x_lo, sigma_lo, cond))
    return (student(x_hi, sigma_hi, cond) - aim).pow(2).mean()


def regression_loss(
    student: DenoiserFn, teacher: DenoiserFn, x0: Tensor, cond: Any, generator: torch.Generator
) -> Tensor:
    """EDM-weighted squared error between the student's and the teacher's denoised estimates.

    Noise levels from the training distribution (:func:`reactdiff.noise.sample_training_sigmas`), the
    weight ``(sigma^2 + 1) / sigma^2`` that makes the error at every level count alike (unit data scale).
    """
    sigma = sample_training_sigmas(x0.shape[0], generator=generator).to(x0)
    z = torch.randn(x0.shape, generator=generator).to(x0)
    x = x0 + sigma[:, None, None] * z
    with torch.no_grad():
        aim = teacher(x, sigma, cond)
    weight = ((sigma**2 + 1) / sigma**2)[:, None, None]
    return (weight * (student(x, sigma, cond) - aim).pow(2)).mean()


@torch.no_grad()
def teacher_trajectories(
    teacher: DenoiserFn, cond: Any, shape: tuple[int, ...], steps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's ODE trajectories from fresh noise: ``(states [K, B, ...], levels [K], ends [B, ...])``.

    ``x_T = sigma_max z`` (``z`` from ``generator``, ``shape`` = ``[B, w, D]``) is solved over ``steps``
    Karras levels by DPM-Solver++(2M); ``states[k]`` is where the trajectory is at ``levels[k]`` (every
    level the solver evaluates but ``sigma_min``, where a consistency function is the identity) and
    ``ends`` where it arrives. Every ``(states[k, b], levels[k])`` is a point of the consistency function
    whose value is ``ends[b]``.
    """
    device = cond.past.device if isinstance(cond, Conditions) else None
    x_T = SIGMA_MAX * torch.randn(shape, generator=generator).to(device)
    sigmas = karras_sigmas(steps).to(x_T.device)
    states: list[Tensor] = []

    def recording(x: Tensor, sigma: Tensor, c: Any) -> Tensor:
        states.append(x)
        return teacher(x, sigma, c)

    ends = sample_dpmpp_2m(recording, x_T, sigmas, prepare(teacher, cond))
    return torch.stack(states[:-1]), sigmas[:-2], ends


@torch.no_grad()
def ode_gap(
    student: DenoiserFn,
    teacher: DenoiserFn,
    x0: Tensor,
    cond: Conditions,
    teacher_steps: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """How far the student's one-step map is from the end of the teacher's ODE trajectory.

    From the same noise ``x_T = sigma_max z``: the teacher's guided ODE over ``teacher_steps``
    DPM-Solver++(2M) steps gives ``y``, the student's single evaluation gives ``f(x_T)``. Returns
    ``one_step_gap`` (mean squared difference, normalised units) and ``teacher_spread``: the mean squared
    difference between two teacher solutions from independent noises, the scale at which the gap means
    "unrelated sample" (a gap well below it means the student follows the trajectories).
    """
    z = torch.randn((2, *x0.shape), generator=generator).to(x0)
    sigmas = karras_sigmas(teacher_steps).to(x0.device)
    teacher_cond = prepare(teacher, cond)  # the student's evaluation below has its own network
    ends = [sample_dpmpp_2m(teacher, SIGMA_MAX * z[i], sigmas, teacher_cond) for i in range(2)]
    jump = student(SIGMA_MAX * z[0], torch.full((x0.shape[0],), SIGMA_MAX, device=x0.device), cond)
    return {
        "one_step_gap": float((jump - ends[0]).pow(2).mean()),
        "teacher_spread": float((ends[1] - ends[0]).pow(2).mean()),
    }


@dataclass
class DistillResult:
    """What :func:`distill` did: the per-log records, the validation gaps, the student and its file."""

    history: list[dict[str, float]]
    val: dict[str, float]
    student: Denoiser
    teacher_parameters: int
    student_parameters: int
    checkpoint: Path
    seconds: float
    resumed_from: int = 0
    fingerprint: str = ""
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(cfg: DistillParams, teacher_digest: str, data_id: str, guidance: dict[str, Any]) -> str:
    """Everything the distillation's trajectory depends on (cadences and the step count left out)."""
    settings = cfg.model_dump(exclude={"steps", "log_every", "checkpoint_every", "val_batches", "device"})
    payload = {"distill": settings, "teacher": teacher_digest, "data": data_id, "guidance": guidance}
    text = json.dumps(_plain(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def distill(
    cfg: DistillParams,
    teacher: Denoiser,
    teacher_preset: str,
    train_data: WindowSource,
    val_data: WindowSource | None,
    checkpoint_path: Path | str,
    *,
    guidance_scale: float,
    guidance_interval: tuple[float, float] | None,
    seed: int,
    student_steps: int = 4,
    teacher_digest: str = "",
    data_id: str = "",
    log: Callable[[dict[str, float], int], None] | None = None,
) -> DistillResult:
    """Distil ``teacher`` (guided as given) into a new student for ``cfg.steps`` steps (module docstring).

    The checkpoint at ``checkpoint_path`` is written every ``cfg.checkpoint_every`` steps and at the end,
    in the training checkpoint format (:func:`reactdiff.training.load_denoiser` loads the student from
    it, EMA weights); a run interrupted and restarted with the same fingerprint resumes from it and
    reproduces the uninterrupted run on CPU.
    """
    started = time.perf_counter()
    run = _Distiller(
        cfg,
        teacher,
        teacher_preset,
        train_data,
        Path(checkpoint_path),
        guidance_scale,
        guidance_interval,
        seed,
        student_steps,
        teacher_digest,
        data_id,
    )
    history = run.run(log)
    val: dict[str, float] = {}
    if val_data is not None and len(val_data):
        indices = evenly_spaced(len(val_data), cfg.batch_size * cfg.val_batches)
        x0, cond = to_model_inputs(val_data.batch(indices), run.device)
        run.gen.manual_seed(seed_for(seed, _VALIDATION))
        val = ode_gap(run.ema.shadow, run.teacher_fn, x0, cond, cfg.teacher_ode_steps, run.gen)
    return DistillResult(
        history=history,
        val=val,
        student=cast(Denoiser, run.ema.shadow),
        teacher_parameters=run.teacher_parameters,
        student_parameters=count_parameters(run.student),
        checkpoint=run.path,
        seconds=time.perf_counter() - started,
        resumed_from=run.start,
        fingerprint=run.key,
        device=str(run.device),
        extra=run.extra,
    )


class _TrajectoryPool:
    """Points of the teacher's ODE trajectories and where they end: two trajectories (two noises) for each
    of ``cfg.pool_windows / 2`` windows, drawn afresh every ``cfg.pool_refresh`` steps (pool ``i`` is
    seeded by ``(seed, i)``). Rows ``2j`` and ``2j + 1`` share window ``j``'s conditions."""

    def __init__(self, run: _Distiller) -> None:
        self.run = run
        self.index: int | None = None
        self.sampler_state: dict[str, Tensor] | None = None
        self.resumed: dict[str, Any] | None = None

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps to rebuild the current pool: its index and the student (EMA) weights
        that sampled its pasts (the pool itself is regenerated from its seed)."""
        return None if self.index is None else {"index": self.index, "sampler": self.sampler_state}

    def refresh(self, index: int) -> None:
        run, cfg = self.run, self.run.cfg
        sampler = cast(Denoiser, run.ema.shadow)
        if self.resumed is not None and self.resumed["index"] == index:
            # The pool an interrupted run was in the middle of: its pasts came from the EMA of then.
            sampler = copy.deepcopy(sampler)
            sampler.load_state_dict(self.resumed["sampler"])
        self.resumed = None
        self.sampler_state = {k: v.detach().clone() for k, v in sampler.state_dict().items()}
        gen = torch.Generator().manual_seed(seed_for(run.seed, _POOL, index))
        windows = torch.randint(
            0, len(run.train_data), (max(cfg.pool_windows // 2, 1),), generator=gen
        ).numpy()
        parts = []
        for lo in range(0, len(windows), _POOL_CHUNK):
            chunk = windows[lo : lo + _POOL_CHUNK]
            _, cond = to_model_inputs(run.train_data.batch(chunk), run.device)
            cond = run.own_pasts(sampler, chunk, cond, gen).repeat_interleave(2)
            shape = (cond.batch_size, *cond.past.shape[1:])
            parts.append(
                (cond, *teacher_trajectories(run.teacher_fn, cond, shape, cfg.teacher_ode_steps, gen))
            )
        self.cond = parts[0][0] if len(parts) == 1 else _cat([p[0] for p in parts])
        self.states = torch.cat([p[1] for p in parts], dim=1)  # [K, P, w, D]
        self.levels = parts[0][2]
        self.ends = torch.cat([p[3] for p in parts])
        self.index = index

    def batch(self, step: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Conditions, Tensor]:
        """``size`` points ``(x, sigma, cond, end)``: ``size / 2`` (window, level) draws, each with both of
        the window's trajectories at that level, the first of every pair in the first half."""
        index = step // self.run.cfg.pool_refresh
        if self.index != index:
            self.refresh(index)
        device = self.states.device
        half = max(size // 2, 1)
        k = torch.randint(0, self.states.shape[0], (half,), generator=gen).to(device)
        j = torch.randint(0, self.states.shape[1] // 2, (half,), generator=gen).to(device)
        k, b = torch.cat([k, k]), torch.cat([2 * j, 2 * j + 1])
        return self.states[k, b], self.levels[k], self.cond.index(b), self.ends[b]


def energy_score(out: Tensor, target: Tensor, spread_weight: float = 1.0) -> Tensor:
    """Energy score of paired draws: rows ``[:n]`` and ``[n:]`` of ``out`` are two student outputs for the
    same conditions, ``target`` the teacher's ends of the same two trajectories.

    ``(|o1 - y1| + |o2 - y2|) / 2 - |o1 - o2| / 2`` with ``|.|`` the Euclidean norm of a window: a proper
    scoring rule, minimised in expectation when the student's outputs are distributed as the teacher's.
    Unlike the squared error it does not pay for collapsing what the student cannot resolve onto the
    mean; the second term pays for keeping two draws apart (Gneiting and Raftery 2007).
    """
    n = out.shape[0] // 2
    norm = lambda a: a.flatten(1).norm(dim=1)  # noqa: E731
    fit = (norm(out[:n] - target[:n]) + norm(out[n:] - target[n:])) / 2
    return (fit - spread_weight * norm(out[:n] - out[n:]) / 2).mean()


def _cat(conds: list[Conditions]) -> Conditions:
    out = conds[0]
    for c in conds[1:]:
        out = out.cat(c)
    return out


class _Distiller:
    """One run of :func:`distill`: teacher, student, its EMA (and the consistency target), the streams."""

    def __init__(
        self,
        cfg: DistillParams,
        teacher: Denoiser,
        teacher_preset: str,
        train_data: WindowSource,
        path: Path,
        guidance_scale: float,
        guidance_interval: tuple[float, float] | None,
        seed: int,
        student_steps: int,
        teacher_digest: str,
        data_id: str,
    ) -> None:
        self.cfg, self.train_data, self.path, self.seed = cfg, train_data, path, seed
        self.student_steps = student_steps
        self.device = select_device(cfg.device)
        teacher = teacher.to(self.device).eval()
        self.teacher_parameters = count_parameters(teacher)
        for p in teacher.parameters():
            p.requires_grad_(False)
        guidance = {"scale": float(guidance_scale), "interval": guidance_interval}
        self.key = fingerprint(cfg, teacher_digest, data_id, {**guidance, "student_steps": student_steps})
        self.teacher_fn = guided_teacher(teacher, guidance_scale, guidance_interval)

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        network = ReactionUNet(student_config(teacher.config, teacher_preset))
        prior = copy.deepcopy(teacher.prior)
        student = Denoiser(network, sigma_data=teacher.sigma_data, prior=prior, skip=cfg.skip)
        self.student = student.to(self.device)
        self.ema = EMA(self.student, cfg.ema_decay)
        self.target = EMA(self.student, cfg.target_decay, warmup=False)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.levels = karras_sigmas(cfg.levels - 1, SIGMA_MIN, SIGMA_MAX)[:-1].flip(0).to(self.device)
        self.sampler = WindowSampler(len(train_data), cfg.batch_size, seed_for(seed, _BATCHES))
        self.pool = _TrajectoryPool(self)
        self.gen = torch.Generator()
        self.model_args = {
            "preset": f"{teacher_preset}-student",
            "audio_dim": int(self.student.config.audio_dim),
            "overrides": STUDENT_PRESETS[teacher_preset],
            "network": self.student.config.to_dict(),
            "sigma_data": self.student.sigma_data,
            "skip": cfg.skip,
        }
        self.extra = {
            "distill": cfg.model_dump(),
            "guidance": guidance,
            "teacher": teacher_digest,
            "data_id": data_id,
            "seed": seed,
        }
        self.start = 0
        ckpt = _resumable(path, self.key)
        if ckpt is not None:
            self.student.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.target.load_state_dict(ckpt["target"])
            load_optimizer_state(self.optimizer, ckpt["optimizer"], self.student, ckpt["model"])
            restore_rng_state(ckpt["rng"])
            self.pool.resumed = ckpt.get("pool")
            self.start = int(ckpt["step"])
            print(f"distill: resuming {path} at step {self.start}", flush=True)

    def own_pasts(
        self, student: Denoiser, indices: np.ndarray, cond: Conditions, gen: torch.Generator
    ) -> Conditions:
        """``cond`` with the past of a ``rollout_prob`` share of the windows (those that have one) sampled
        by ``student`` itself, as it will be when it runs: the teacher then shows what to do from there."""
        pick = torch.rand(len(indices), generator=gen).numpy() < self.cfg.rollout_prob
        rows = np.flatnonzero(pick & self.train_data.has_previous(indices))
        if rows.size == 0:
            return cond
        generated = sample_previous(
            student,
            self.train_data,
            indices[rows],
            self.device,
            gen,
            steps=self.student_steps,
            solver="consistency",
        )
        return with_generated_past(cond, self.train_data, indices, rows, generated.to(cond.past.dtype))

    def phase(self, step: int) -> str:
        return "regression" if step < self.cfg.warmup_steps else self.cfg.method

    def loss(self, step: int) -> Tensor:
        cfg, gen = self.cfg, self.gen
        gen.manual_seed(seed_for(self.seed, _NOISE, step))
        phase = self.phase(step)
        if phase == "trajectory":
            x, sigma, cond, ends = self.pool.batch(step, cfg.batch_size, gen)
            out = self.student(x, sigma, cond)
            if cfg.loss == "mse":
                return (out - ends).pow(2).mean()
            return energy_score(out, ends, cfg.spread_weight)
        x0, cond = to_model_inputs(self.train_data.batch(self.sampler.indices(step, 0, 1)), self.device)
        if phase == "regression":
            return regression_loss(self.student, self.teacher_fn, x0, cond, gen)
        if step == cfg.warmup_steps:  # the consistency phase starts from the warmed-up student
            self.target.shadow.load_state_dict(self.student.state_dict())
        return consistency_distillation_loss(
            self.student,
            self.target.shadow,
            self.teacher_fn,
            x0,
            cond,
            self.levels,
            gen,
            cfg.teacher_substeps,
        )

    def run(self, log: Callable[[dict[str, float], int], None] | None) -> list[dict[str, float]]:
        cfg = self.cfg
        history: list[dict[str, float]] = []
        running, count, interval_start = 0.0, 0, time.perf_counter()
        self.student.train()
        for step in range(self.start, cfg.steps):
            loss = self.loss(step)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.update(self.student, step)
            if self.phase(step) == "consistency":
                self.target.update(self.student, step)
            running, count = running + float(loss.detach()), count + 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = max(time.perf_counter() - interval_start, 1e-9)
                record = {
                    "step": done,
                    "loss": running / count,
                    "windows_per_s": count * cfg.batch_size / elapsed,
                }
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"distillation loss is {record['loss']} at step {done}")
                history.append(record)
                print(
                    f"distill: step {done}/{cfg.steps} {self.phase(step)} loss {record['loss']:.5f} "
                    f"{record['windows_per_s']:.0f} windows/s",
                    flush=True,
                )
                if log is not None:
                    log({f"{self.phase(step)}_loss": record["loss"]}, done)
                running, count, interval_start = 0.0, 0, time.perf_counter()
            if done == cfg.steps or done % cfg.checkpoint_every == 0:
                self.save(done)
        if self.start >= cfg.steps:
            print(f"distill: {self.path} is already at step {self.start}; nothing to distil", flush=True)
        return history

    def save(self, step: int) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_args": _plain(self.model_args),
            "model": self.student.state_dict(),
            "ema": self.ema.state_dict(),
            "target": self.target.state_dict(),
            "pool": self.pool.state(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": {},
            "step": step,
            "rng": rng_state(),
            "config_fingerprint": self.key,
            "extra": _plain(self.extra),
        }
        with atomic.atomic_path(self.path) as tmp:
            torch.save(payload, tmp)


def _resumable(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it was written by this configuration, else ``None`` (said why)."""
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # an unreadable file must not stop a fresh run from replacing it
        print(f"distill: cannot read {path} ({type(exc).__name__}: {exc}); starting fresh", flush=True)
        return None
    if ckpt.get("config_fingerprint") != key or "target" not in ckpt:
        print(f"distill: {path} was written by another configuration; starting fresh", flush=True)
        return None
    return ckpt
