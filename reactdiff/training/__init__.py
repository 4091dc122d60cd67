"""The ReactDiff training loop: AdamW on eq. 10, EMA weights, checkpoints that resume exactly, DDP.

Recipe (paper Table 7): AdamW, lr 1e-4, betas (0.95, 0.999), weight decay 1e-3, batch 100, 30k steps for
the paper preset (the demo preset's shorter recipe, 1700 steps at lr 1e-3, is params.yaml's default and
:class:`TrainConfig`'s), cosine noise schedule (:func:`reactdiff.noise.sample_training_sigmas`). Unlike the
official code (batch 1, sampling with the raw weights) the batch is 100 and the weights used for sampling
are an exponential moving average of the trained ones. Gradients are clipped by global norm; on CUDA the
forward pass runs under bf16 (or fp16 with a ``GradScaler``) autocast.

Randomness. Every random stream of a step is keyed by a counter rather than carried as state:

- batches: the training windows are visited in epochs, each epoch a permutation of all windows drawn by a
  ``torch.Generator`` seeded from ``(seed, epoch)``; the global batch of step ``s`` is positions
  ``[s * B, (s + 1) * B)`` of the concatenated epochs (sampling without replacement within an epoch), so
  it is a pure function of ``(seed, s, B, len(data))``. Under DDP every rank computes the same global
  batch and takes its own contiguous slice of ``B // world_size`` windows: ranks never see the same
  window in a step, and the global batches are those of a single-process run.
- noise levels, noise and the classifier-free-guidance drop: a second ``torch.Generator`` passed to
  :func:`reactdiff.losses.training_loss`, re-seeded at every step from ``(seed, rank, step)``;
- dropout: the global torch RNG, re-seeded at every step from ``(seed, rank, step)``;
- rollouts (below): a third generator, re-seeded at every step from ``(seed, rank, step)``.

Rollouts (exposure bias). The network is conditioned on the previous listener window. Trained only on
real previous windows, which already carry the listener's response to the speaker, it learns to continue
the past and to add little of its own response; when sampling, its past is its own output, which lacks
the part of the response it did not make, so each window adds a little more and the generated reaction
follows the speaker one to two windows late (issue 11 measured the smile cluster's cross-correlation
with the speaker peaking 19 frames late on validation rollouts against 4 when every window starts from
its real past). From step ``rollout_start`` on, a fraction ``rollout_prob`` of the rows that have a
previous window get, in place of their real past, the previous window as the EMA model itself samples
it (``rollout_steps`` ODE steps, from the real window before it and the previous speaker window). The
generated past does not end where the real one does (on the sample corpus the gap at the boundary was 8
times a real frame-to-frame step), and a real target after it teaches the network to jump at every
window boundary (measured: Jitter up 50 %, FD_learned 5 times worse). So the target eases out of the
generated past into the real window: ``x0 + (g - r) * (1 + cos(pi (t + 1) / E)) / 2`` at frame ``t < E``
and ``x0`` from frame ``E`` on (:func:`rollout_ease`), with ``g - r`` the gap between the two pasts' last
frames, is continuous in position and velocity at the boundary and is the real window from frame ``E``:
the network learns to take its own past where the speaker says the listener should be. ``E`` is
``rollout_ease_frames``. Easing over the whole window (``E = w``) leaves the target leaning towards
the generated past for most of the window, so a response that the past lacks is taught to come
``w / 2`` frames late on average, and a sampled chain, whose every past is generated, carries that lag
on: measured on the sample corpus, ``E`` 16 / 8 / 6 / 3 gave FRSyn 30.5 / 28.3 / 28.6 / 29.3 and FRCorr
1.31 / 1.42 / 1.41 / 1.35; below 6 the jumps come back (``E = 3``: Jitter 4.7e-5 and FD_learned 0.71
against 3.7e-5 and 0.24 at ``E = 8``, the default).

The step counter is therefore the whole state of the training streams; a checkpoint stores it with the
raw and EMA weights, the optimizer and grad-scaler states, and the global torch / CUDA / numpy / python
RNG states (restored on resume for any other user of them). A run interrupted at step ``k`` and resumed
reproduces the uninterrupted run bit for bit on CPU; on any device it continues with exactly the batches,
noise and dropout seeds the uninterrupted run would have used (the batches even under another world size).

Checkpoints hold only tensors and plain python values, so they load with
``torch.load(..., weights_only=True)``; :func:`load_denoiser` rebuilds the network from the stored
:class:`reactdiff.model.NetworkConfig` and loads the EMA weights (the ones meant for sampling).
"""

from __future__ import annotations

from reactdiff.training.checkpointing import (
    load_checkpoint,
    load_denoiser,
    save_checkpoint,
)
from reactdiff.training.config import (
    CHECKPOINT_FORMAT,
    PRECONDITIONINGS,
    TrainConfig,
    WindowSource,
    config_fingerprint,
)
from reactdiff.training.data import (
    PRIOR_MAX_WINDOWS,
    evenly_spaced,
    fit_prior,
    rollout_ease,
    rollout_past,
    to_model_inputs,
)
from reactdiff.training.distributed import DistInfo, ddp_context, dist_info
from reactdiff.training.ema import EMA
from reactdiff.training.loop import TrainResult, train, validation_loss

__all__ = [
    "CHECKPOINT_FORMAT",
    "PRECONDITIONINGS",
    "PRIOR_MAX_WINDOWS",
    "rollout_ease",
    "rollout_past",
    "TrainConfig",
    "TrainResult",
    "DistInfo",
    "EMA",
    "WindowSource",
    "to_model_inputs",
    "evenly_spaced",
    "fit_prior",
    "config_fingerprint",
    "save_checkpoint",
    "load_checkpoint",
    "load_denoiser",
    "validation_loss",
    "ddp_context",
    "dist_info",
    "train",
]
