"""Training windows as model inputs, the rollouts that fight exposure bias, and the prior's fit."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reactdiff.model import (
    Conditions,
)
from reactdiff.prior import WindowPrior
from reactdiff.samplers import sample
from reactdiff.training.config import _BATCHES, TrainConfig, WindowSource, seed_for
from reactdiff.windows import WindowBatch

# Windows the prior is fitted on, evenly spaced over the split: its ~60k numbers are well determined by
# far fewer windows than a large corpus has.
PRIOR_MAX_WINDOWS = 50_000


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def to_model_inputs(batch: WindowBatch, device: torch.device | str) -> tuple[Tensor, Conditions]:
    """``(x0 [B, w, 58], Conditions)`` on ``device`` from a numpy :class:`WindowBatch`.

    ``x0`` is the current listener window (the diffusion target); ``cond.past`` the previous listener
    window, ``cond.speaker_face`` ``[B, w, 58]``, ``cond.speaker_audio`` ``[B, w, A]``,
    ``cond.frame_index`` ``[B]`` long and ``cond.speaker_mask`` all ones.
    """
    non_blocking = torch.device(device).type == "cuda"

    def tensor(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(
            device=device, dtype=dtype, non_blocking=non_blocking
        )

    x0 = tensor(batch.listener, torch.float32)
    cond = Conditions.create(
        speaker_face=tensor(batch.speaker_face, torch.float32),
        speaker_audio=tensor(batch.speaker_audio, torch.float32),
        past=tensor(batch.past, torch.float32),
        frame_index=tensor(batch.frame_index, torch.long),
        history=None if batch.history is None else tensor(batch.history, torch.float32),
    )
    return x0, cond


def rollout_ease(frames: int, ease_frames: int = 0, **tensor_kwargs: Any) -> Tensor:
    """Weight ``[frames]`` of the past-to-real gap in a rollout row's target.

    ``(1 + cos(pi (t + 1) / E)) / 2`` at frame ``t < E``, 0 from frame ``E`` on (``E = ease_frames``; 0 or
    more than ``frames``: the whole window).

    Continuous in position and velocity at the boundary for any ``E``. Why ``E`` matters: until frame
    ``E`` the target still leans towards the generated past, so a response the past lacks is taught to
    arrive ``E / 2`` frames late on average, and a sampled chain inherits that lag window after window.
    """
    e = frames if ease_frames <= 0 else min(ease_frames, frames)
    t = torch.arange(1, frames + 1, **tensor_kwargs).clamp(max=e)  # from frame E on: cos(pi) = -1, weight 0
    return (1 + torch.cos(math.pi * t / e)) / 2


def rollout_past(
    denoiser: nn.Module,
    data: WindowSource,
    indices: np.ndarray,
    x0: Tensor,
    cond: Conditions,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Conditions]:
    """Give some rows the previous window as ``denoiser`` samples it, and a target that eases out of it.

    Each row of ``indices`` (the batch's windows in ``data``; targets ``x0`` ``[B, w, D]``) that has a
    previous window is picked with probability ``cfg.rollout_prob``. A picked row's past is sampled with
    ``cfg.rollout_steps`` ODE steps from the previous window's own conditions (the real window before it,
    the previous speaker window), and its target becomes ``x0 + gap * (1 + cos(pi (t + 1) / w)) / 2``
    with ``gap`` the generated past's last frame minus the real one's (module docstring, *Rollouts*);
    its listener history counts the generated past in place of the real one. Returns ``(x0, cond)``, the
    inputs themselves when no row is picked.
    """
    pick = torch.rand(len(indices), generator=generator).numpy() < cfg.rollout_prob
    rows = np.flatnonzero(pick & data.has_previous(indices))
    if rows.size == 0:
        return x0, cond
    device = cond.past.device
    generated = sample_previous(
        denoiser, data, indices[rows], device, generator, steps=cfg.rollout_steps, solver="ode"
    ).to(cond.past.dtype)
    picked = torch.from_numpy(rows).to(device)
    ease = rollout_ease(x0.shape[1], cfg.rollout_ease_frames, device=device, dtype=x0.dtype)
    gap = generated[:, -1] - cond.past[picked, -1]  # [R, D]
    x0 = x0.clone()
    x0[picked] += gap[:, None, :] * ease[None, :, None]
    return x0, with_generated_past(cond, data, indices, rows, generated)


def sample_previous(
    denoiser: nn.Module,
    data: WindowSource,
    indices: np.ndarray,
    device: torch.device | str,
    generator: torch.Generator,
    **sampler: Any,
) -> Tensor:
    """The windows before ``indices`` (each must have one) as ``denoiser`` samples them from their own
    conditions (the real window before them, their speaker): ``[len(indices), w, D]``. ``sampler``:
    :func:`reactdiff.samplers.sample`'s settings (steps, solver, ...)."""
    _, previous = to_model_inputs(data.batch(indices, windows_back=1), device)
    with torch.no_grad():
        return sample(
            denoiser, tuple(previous.past.shape), previous, generator=generator, device=device, **sampler
        )


def with_generated_past(
    cond: Conditions, data: WindowSource, indices: np.ndarray, rows: np.ndarray, generated: Tensor
) -> Conditions:
    """``cond`` with the past of rows ``rows`` replaced by ``generated`` ``[R, w, D]``, and their listener
    history counting the generated past in place of the real one (``indices``: the batch's windows)."""
    device = cond.past.device
    picked = torch.from_numpy(rows).to(device)
    frames = torch.from_numpy(data.frames_before(indices[rows])).to(device=device, dtype=cond.past.dtype)
    past, history = cond.past.clone(), cond.listener_history.clone()
    history[picked] += (generated.sum(dim=1) - cond.past[picked].sum(dim=1)) / frames[:, None]
    past[picked] = generated
    return dataclasses.replace(cond, past=past, history=history)


class WindowSampler:
    """Global batch of step ``s``: positions ``[s * B, (s + 1) * B)`` of a stream of seeded epoch orders."""

    def __init__(self, n_windows: int, global_batch: int, seed: int) -> None:
        if n_windows < 1:
            raise ValueError("the training data has no windows")
        self.n = n_windows
        self.global_batch = global_batch
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(seed_for(self.seed, _BATCHES, epoch))
            if len(self._cache) >= 2:  # a batch spans at most the current and the next epoch
                self._cache.pop(min(self._cache))
            self._cache[epoch] = torch.randperm(self.n, generator=gen).numpy()
        return self._cache[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, offset)`` of the first window of step ``step``."""
        start = step * self.global_batch
        return start // self.n, start % self.n

    def global_indices(self, step: int) -> np.ndarray:
        """Window indices ``[global_batch]`` of step ``step``."""
        epoch, offset = self.position(step)
        parts, need = [], self.global_batch
        while need > 0:
            perm = self.permutation(epoch)
            take = perm[offset : offset + need]
            parts.append(take)
            need -= len(take)
            epoch, offset = epoch + 1, 0
        return np.concatenate(parts)

    def indices(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This rank's contiguous slice ``[global_batch // world_size]`` of the global batch."""
        per_rank = self.global_batch // world_size
        return self.global_indices(step)[rank * per_rank : (rank + 1) * per_rank]


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """At most ``count`` distinct indices spread evenly over ``range(total)``, first and last included."""
    n = min(total, count)
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))


def fit_prior(data: WindowSource, max_windows: int = PRIOR_MAX_WINDOWS) -> WindowPrior:
    """The :class:`reactdiff.prior.WindowPrior` of a split's listener windows given their previous windows
    (at most ``max_windows``, evenly spaced)."""
    batch = data.batch(evenly_spaced(len(data), max_windows))
    return WindowPrior.fit(batch.listener, past=batch.past, history=batch.history)
