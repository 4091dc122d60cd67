"""The training recipe as one dataclass (defaults from params.yaml's schema), its fingerprint, the seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from reactdiff.config import TrainParams
from reactdiff.losses import LossConfig
from reactdiff.windows import WindowBatch

CHECKPOINT_FORMAT = 1
PRECONDITIONINGS = ("wiener", "edm")

# Stream identifiers mixed into the counter-based seeds (any distinct constants would do).
_BATCHES, _NOISE, _DROPOUT, _VALIDATION, _ROLLOUT = 1, 2, 3, 4, 5


class WindowSource(Protocol):
    """What :func:`train` needs from a split: :class:`reactdiff.windows.WindowDataset` or any look-alike."""

    w: int

    def __len__(self) -> int: ...

    @property
    def audio_dim(self) -> int: ...

    def batch(self, indices: np.ndarray, windows_back: int = 0) -> WindowBatch: ...

    def has_previous(self, indices: np.ndarray) -> np.ndarray: ...

    def frames_before(self, indices: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


_RECIPE = TrainParams()
"""The shipped recipe (``train:`` in params.yaml, validated by :mod:`reactdiff.config`): the one set of
defaults, for the pipeline and for library callers alike. The paper preset's values (Table 7: 30000
steps at lr 1e-4) are set in params.yaml, not here."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (see the module docstring for the recipe).

    - ``preset`` / ``model_overrides``: the network (:func:`reactdiff.model.network_config`), e.g.
      ``{"use_frame_index": False}`` for the paper's ablations. ``frames`` is taken from the data.
    - ``preconditioning``: ``"wiener"`` fits a :class:`reactdiff.prior.WindowPrior` to the train
      listener windows (the denoiser corrects their Wiener filter); ``"edm"`` keeps EDM's scalar
      preconditioning with ``sigma_data = 0.5``, the setting whose samples jitter (issue 11).
    - ``batch_size``: the global batch; under DDP each of ``N`` ranks trains on ``batch_size // N``.
    - ``ema_warmup``: use ``min(ema_decay, (1 + s) / (10 + s))`` at update ``s``, so the average does not
      remember the random initialisation for thousands of steps.
    - ``grad_clip``: max global gradient norm; ``<= 0`` disables clipping (the norm is still logged).
    - ``amp`` / ``amp_dtype``: autocast on CUDA only (``"auto"`` = bf16 when supported, else fp16 with a
      grad scaler); ignored on other devices.
    - ``device``: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:<i>"``, ``"mps"``.
    - ``log_every`` / ``checkpoint_every`` / ``val_every``: in steps; ``0`` disables (the final step is
      always checkpointed, and validated when there is validation data and ``val_every > 0``).
    - ``val_batches``: validation batches of ``batch_size`` windows each, a fixed subset of the split.
    - ``rollout_prob`` / ``rollout_start`` / ``rollout_steps`` / ``rollout_ease_frames``: training on the
      model's own past (module docstring); ``rollout_prob = 0`` trains on real pasts only;
      ``rollout_ease_frames`` ``E`` (0: the whole window) is how many frames the target takes to ease
      out of the generated past.
    """

    preset: str = "demo"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    preconditioning: str = _RECIPE.preconditioning
    steps: int = _RECIPE.steps
    batch_size: int = _RECIPE.batch_size
    lr: float = _RECIPE.lr
    betas: tuple[float, float] = tuple(_RECIPE.betas)  # type: ignore[assignment]
    weight_decay: float = _RECIPE.weight_decay
    ema_decay: float = _RECIPE.ema_decay
    ema_warmup: bool = True
    grad_clip: float = _RECIPE.grad_clip
    amp: bool = _RECIPE.amp
    amp_dtype: str = "auto"
    device: str = _RECIPE.device
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    log_every: int = _RECIPE.log_every
    checkpoint_every: int = _RECIPE.checkpoint_every
    val_every: int = _RECIPE.val_every
    val_batches: int = _RECIPE.val_batches
    rollout_prob: float = _RECIPE.rollout_prob
    rollout_start: int = _RECIPE.rollout_start
    rollout_steps: int = _RECIPE.rollout_steps
    rollout_ease_frames: int = _RECIPE.rollout_ease_frames

    def __post_init__(self) -> None:
        # Configs arrive from YAML/JSON: lists for tuples, dicts for nested dataclasses.
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.model_overrides = dict(self.model_overrides)
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype must be 'auto', 'bf16' or 'fp16', got {self.amp_dtype!r}")
        for name in ("log_every", "checkpoint_every", "val_every", "val_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.preconditioning not in PRECONDITIONINGS:
            raise ValueError(
                f"preconditioning must be one of {PRECONDITIONINGS}, got {self.preconditioning!r}"
            )
        if not 0.0 <= self.rollout_prob <= 1.0:
            raise ValueError(f"rollout_prob must be in [0, 1], got {self.rollout_prob}")
        if self.rollout_ease_frames < 0:
            raise ValueError(
                f"rollout_ease_frames must be >= 0 (0: the whole window), got {self.rollout_ease_frames}"
            )
        if self.rollout_start < 0 or self.rollout_steps < 1:
            raise ValueError(
                f"rollout_start must be >= 0 and rollout_steps >= 1, got {self.rollout_start} and "
                f"{self.rollout_steps}"
            )
        if "frames" in self.model_overrides:
            raise ValueError("model_overrides may not set 'frames': the window size comes from the data")


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-like python values (dict, list, str, int, float, bool, None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} as a plain value")


# Settings that change what is computed. Steps are not among them (a longer run extends a shorter one),
# nor are device, amp, logging, checkpoint and validation cadences.
_FINGERPRINT_FIELDS = (
    "preset",
    "model_overrides",
    "preconditioning",
    "batch_size",
    "lr",
    "betas",
    "weight_decay",
    "ema_decay",
    "ema_warmup",
    "grad_clip",
    "seed",
    "loss",
    "rollout_prob",
    "rollout_start",
    "rollout_steps",
    "rollout_ease_frames",
)


def config_fingerprint(cfg: TrainConfig, audio_dim: int, data_id: str = "") -> str:
    """A 16-hex-digit hash of everything a checkpoint's training trajectory depends on.

    ``data_id`` names the training data (the stage passes a content hash of its windows); settings that
    do not change the trajectory (``steps``, device, amp, cadences) are left out, so a run may be
    extended or moved to another device and still resume.
    """
    payload = {name: _plain(getattr(cfg, name)) for name in _FINGERPRINT_FIELDS}
    payload.update(audio_dim=int(audio_dim), data_id=str(data_id), format=CHECKPOINT_FORMAT)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # Metric sums stay on the device (no sync per step); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def seed_for(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys (decorrelated even for adjacent keys)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))
