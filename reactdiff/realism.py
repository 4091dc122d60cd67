"""A learned realism feature: a small temporal encoder of listener motion, for a third Frechet distance.

The hand-made realism features of :mod:`reactdiff.metrics` (``stats``: per-window mean and std;
``dynamics``: mean absolute velocity and acceleration) each see one aspect of a window. This module
learns an embedding of whole windows ``[w, d]`` of listener coefficients from the real reactions of
the train split only, and :func:`reactdiff.metrics.compute_all` scores generated reactions with the
Frechet distance between Gaussian fits of the embeddings (``FD_learned``, beside its real-vs-real
floor), exactly as for the hand-made features.

Objective (why this one). A contrastive loss (InfoNCE, SimCLR-style) where the positive of a window
(the anchor) is another window of the same clip overlapping it by at least half (with small Gaussian
jitter on both), and the negatives are the other clips' windows of the batch plus three *temporal
corruptions of the anchor itself*, each keeping its frame content but breaking its motion:

- ``shuffled``: the anchor's frames in a random order (identical per-frame distribution, so identical
  ``stats`` features; no temporal structure at all);
- ``fast``: the same start, every other frame of twice as many frames (motion at double speed);
- ``smoothed``: a 9-frame moving average of the anchor (over-smoothed motion, the usual failure of
  regression-to-the-mean generators).

In-batch negatives alone would let the encoder identify clips by their static content (a person's mean
expression), which the ``stats`` FD already measures; the corrupted negatives share that content with
the anchor, so the only way to tell them from the positive is the temporal structure: speed,
smoothness and the order of frames. That makes the embedding sensitive to how realistic the motion is,
which is what a realism score should add to the hand-made features.

One encoder per coefficient subset of the metrics (``all``, ``expression``, ``pose``: the columns of
:data:`reactdiff.metrics.SUBSETS`), since each subset's Frechet distance only sees its own columns.
Windows are normalised with the train split's per-dimension mean and std (unit variance), and the
statistics are stored in the checkpoint, so :meth:`RealismEncoder.embed` takes FaceVerse units.

Architecture: three 1-D convolutions over time (kernel 5 then two stride-2 layers, GELU), mean and
standard deviation pooling over time, a linear layer to the embedding (the FD features); a two-layer
projection head, used by the loss only, maps embeddings to the unit sphere. About 30k parameters per
subset: trains in seconds on 2 CPU cores and embeds the REACT test set's 240k windows in tens of seconds.

Determinism: initialisation and every batch are drawn from ``seed`` (per subset), so training on CPU is
bit-for-bit repeatable. Checkpoints are ``torch.save`` of a plain dict of tensors, numbers and strings,
loaded with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from reactdiff import atomic, checkpoints
from reactdiff.config import RealismParams
from reactdiff.devices import select_device
from reactdiff.metrics import SUBSETS, SubsetSpec, resolve_subsets

__all__ = [
    "CHECKPOINT_FORMAT",
    "CORRUPTIONS",
    "RealismConfig",
    "TemporalEncoder",
    "RealismEncoder",
    "corrupt",
    "train_realism_encoder",
    "save_encoder",
    "load_encoder",
]

CHECKPOINT_FORMAT = "reactdiff.realism_encoder/1"
CORRUPTIONS = ("shuffled", "fast", "smoothed")
SMOOTH_FRAMES = 9  # moving-average width of the "smoothed" corruption (0.36 s at 25 fps)
STD_FLOOR = 1e-3  # a coefficient that never moves in the train split must not divide by zero
EMBED_BATCH = 256  # windows per forward pass in embed(): activations stay in cache (measured 1.6x faster
# on CPU than 2048, identical results)


_SHIPPED = RealismParams()


@dataclass(frozen=True)
class RealismConfig:
    """Hyper-parameters of the encoder and its training; defaults: ``realism:`` in params.yaml."""

    window: int = _SHIPPED.window
    """Frames per window: the metrics' FD window (2 s at 25 fps); embed() checks it."""
    embedding_dim: int = _SHIPPED.embedding_dim
    channels: int = _SHIPPED.channels
    steps: int = _SHIPPED.steps
    batch_size: int = _SHIPPED.batch_size
    lr: float = _SHIPPED.lr
    temperature: float = _SHIPPED.temperature
    jitter: float = _SHIPPED.jitter
    """Std of the Gaussian noise added to anchor and positive, in normalised (unit-variance) units."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 8:
            raise ValueError(f"realism window must be at least 8 frames, got {self.window}")
        for name in ("embedding_dim", "channels", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"realism {name} must be positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("realism batch_size must be at least 2 (in-batch negatives)")


class TemporalEncoder(nn.Module):
    """``[B, w, d]`` normalised windows -> ``[B, embedding_dim]`` embeddings."""

    def __init__(self, dims: int, channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv1d(2 * dims, channels, 4, stride=2, padding=1),  # sees every frame-to-frame step
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Linear(2 * channels, embedding_dim)
        self.head = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim), nn.GELU(), nn.Linear(embedding_dim, embedding_dim)
        )  # projection for the contrastive loss only (the embedding before it keeps more information)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each window is centred on its own per-dimension mean: its static level (a person's resting
        # expression) is what the stats FD measures; the encoder is left the motion within the window,
        # given as positions and as frame-to-frame velocities (an explicit input, so that the speed and
        # roughness of the motion are first-layer features rather than something to discover).
        x = x - x.mean(dim=1, keepdim=True)
        velocity = torch.diff(x, dim=1, prepend=x[:, :1])
        x = torch.cat([x, velocity], dim=2)
        h = self.convs(x.transpose(1, 2))  # [B, C, w']
        pooled = torch.cat([h.mean(dim=2), h.std(dim=2, unbiased=False)], dim=1)
        return self.out(pooled)

    def project(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(embedding), dim=1)


def corrupt(kind: str, clips: torch.Tensor, starts: torch.Tensor, window: int, generator: torch.Generator):
    """A temporal corruption of the windows ``clips[b, starts[b] : starts[b] + window]``: ``[B, w, d]``.

    ``clips`` ``[B, T, d]`` with ``T >= starts + 2 * window`` (``fast`` reads twice as many frames).
    """
    B = clips.shape[0]
    offsets = torch.arange(window, device=clips.device)
    if kind == "fast":
        idx = starts[:, None] + 2 * offsets[None]
        return torch.gather(clips, 1, idx[..., None].expand(-1, -1, clips.shape[2]))
    anchor = torch.gather(
        clips, 1, (starts[:, None] + offsets[None])[..., None].expand(-1, -1, clips.shape[2])
    )
    if kind == "shuffled":
        order = torch.argsort(torch.rand(B, window, generator=generator, device=clips.device), dim=1)
        return torch.gather(anchor, 1, order[..., None].expand_as(anchor))
    if kind == "smoothed":
        half = SMOOTH_FRAMES // 2
        padded = torch.cat(
            [anchor[:, :1].expand(-1, half, -1), anchor, anchor[:, -1:].expand(-1, half, -1)], 1
        )
        return padded.unfold(1, SMOOTH_FRAMES, 1).mean(dim=-1)
    raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")


def _windows_at(clips: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(window, device=clips.device)[None]
    return torch.gather(clips, 1, idx[..., None].expand(-1, -1, clips.shape[2]))


def _contrastive_loss(model: TemporalEncoder, batch: torch.Tensor, window: int, config: RealismConfig,
                      generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """InfoNCE of one batch of clips ``[B, T, d]`` (normalised): one anchor window per clip."""
    B, T, _ = batch.shape
    dev = batch.device
    # Anchors leave room for the fast corruption (2w frames); positives overlap the anchor by >= w/2.
    anchor_start = torch.randint(0, T - 2 * window + 1, (B,), generator=generator, device=dev)
    shift = torch.randint(-(window // 2), window // 2 + 1, (B,), generator=generator, device=dev)
    positive_start = (anchor_start + shift).clamp(0, T - window)
    anchor = _windows_at(batch, anchor_start, window)
    positive = _windows_at(batch, positive_start, window)
    noise = torch.randn((2, *anchor.shape), generator=generator, device=dev) * config.jitter
    negatives = [corrupt(kind, batch, anchor_start, window, generator) for kind in CORRUPTIONS]
    z = model.project(model(torch.cat([anchor + noise[0], positive + noise[1], *negatives])))
    za, zp, zn = z[:B], z[B : 2 * B], z[2 * B :].reshape(len(CORRUPTIONS), B, -1)
    in_batch = za @ zp.T  # [B, B]: diagonal = positives, off-diagonal = other clips
    hard = (za[None] * zn).sum(-1).T  # [B, corruptions]: the anchor against its own corruptions
    logits = torch.cat([in_batch, hard], dim=1) / config.temperature
    return F.cross_entropy(logits, torch.arange(B, device=dev))


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on ``n`` intra-op threads, restoring the setting afterwards.

    This model's ops are small: with 2 OpenMP threads on 2 busy cores each op waits for a descheduled
    thread, measured 35x slower (750 ms instead of 20 ms per training step) than with one thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_one(clips: np.ndarray, config: RealismConfig, seed: int, device: torch.device):
    """Train one subset's encoder on normalised clips ``[K, T, d]``: ``(model, losses per step)``."""
    torch.manual_seed(seed)
    model = TemporalEncoder(clips.shape[2], config.channels, config.embedding_dim).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    generator = torch.Generator(device=device).manual_seed(seed)
    data = torch.as_tensor(clips, dtype=torch.float32, device=device)
    losses = []
    for _ in range(config.steps):
        pick = torch.randint(0, len(data), (config.batch_size,), generator=generator, device=device)
        loss = _contrastive_loss(model, data[pick], config.window, config, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, losses


class RealismEncoder:
    """Trained encoders, one per coefficient subset, with the normalisation they were trained with.

    ``embed(windows, subset)`` maps FaceVerse-unit windows ``[n, w, d]`` (``d``: the subset's columns) to
    numpy embeddings ``[n, embedding_dim]``; :meth:`extractors` gives the per-subset callables that
    :func:`reactdiff.metrics.compute_all` takes as a feature kind.
    """

    def __init__(
        self,
        config: RealismConfig,
        mean: np.ndarray,
        std: np.ndarray,
        models: Mapping[str, tuple[np.ndarray, TemporalEncoder]],
        stats: dict | None = None,
    ) -> None:
        self.config = config
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.models = dict(models)  # {subset: (columns, model)}
        self.stats = dict(stats or {})
        self.workers = 2  # CPU threads of embed(), each running torch on one op thread
        self.device = next(iter(self.models.values()))[1].out.weight.device

    @property
    def subsets(self) -> list[str]:
        return list(self.models)

    def to(self, device: str | torch.device) -> RealismEncoder:
        self.device = select_device(device) if isinstance(device, str) else torch.device(device)
        for _, model in self.models.values():
            model.to(self.device)
        return self

    def embed(self, windows: np.ndarray, subset: str = "all") -> np.ndarray:
        """Embeddings ``[n, embedding_dim]`` (float64) of windows ``[n, w, d]`` in FaceVerse units."""
        if subset not in self.models:
            raise KeyError(f"no realism encoder for subset {subset!r}; trained for {self.subsets}")
        columns, model = self.models[subset]
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[2] != len(columns):
            raise ValueError(
                f"subset {subset!r} embeds windows [n, frames, {len(columns)}], got shape {windows.shape}"
            )
        if windows.shape[1] != self.config.window:
            raise ValueError(
                f"the realism encoder was trained on windows of {self.config.window} frames, got "
                f"{windows.shape[1]}: score with window={self.config.window} or retrain with realism.window"
            )
        mean, std = self.mean[columns], self.std[columns]
        out = np.empty((len(windows), self.config.embedding_dim))

        def run(s: int) -> None:
            x = ((windows[s : s + EMBED_BATCH] - mean) / std).astype(np.float32)
            with torch.inference_mode():
                out[s : s + EMBED_BATCH] = model(torch.from_numpy(x).to(self.device)).cpu().numpy()

        starts = range(0, len(windows), EMBED_BATCH)
        if self.device.type != "cpu" or self.workers == 1 or len(starts) == 1:
            with _torch_threads(1) if self.device.type == "cpu" else contextlib.nullcontext():
                for s in starts:
                    run(s)
        else:
            # One op thread per Python thread: torch releases the GIL, and no OpenMP barrier spins.
            with _torch_threads(1), ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(run, starts))
        return out

    def extractor(self, subset: str) -> Callable[[np.ndarray], np.ndarray]:
        """``windows [n, w, d] -> [n, embedding_dim]`` for one subset (a metrics feature callable)."""
        if subset not in self.models:
            raise KeyError(f"no realism encoder for subset {subset!r}; trained for {self.subsets}")

        def features(windows: np.ndarray) -> np.ndarray:
            return self.embed(windows, subset)

        features.__name__ = f"learned_{subset}"
        return features

    def extractors(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        """``{subset: extractor}`` for ``compute_all(feature_kinds={"learned": ...})``."""
        return {subset: self.extractor(subset) for subset in self.models}


def train_realism_encoder(
    listener: np.ndarray,
    config: RealismConfig,
    subsets: SubsetSpec | None = None,
    device: str = "auto",
) -> RealismEncoder:
    """Train one encoder per subset on real listener reactions ``[K, T, 58]`` (FaceVerse units).

    ``subsets``: ``{name: columns}`` (default :data:`reactdiff.metrics.SUBSETS`). Normalisation: the
    per-dimension mean and std of ``listener`` (the train split's listeners, the only data seen).
    """
    listener = np.asarray(listener, np.float64)
    if listener.ndim != 3:
        raise ValueError(f"listener reactions must be [clips, frames, dims], got shape {listener.shape}")
    K, T, D = listener.shape
    if T < 2 * config.window:
        raise ValueError(
            f"the realism encoder needs clips of at least 2 x window = {2 * config.window} frames "
            f"(the fast corruption reads twice a window), got {T}: lower realism.window"
        )
    if K < 2:
        raise ValueError(f"the realism encoder needs at least 2 real reactions, got {K}")
    cols = resolve_subsets(subsets if subsets is not None else SUBSETS, D)
    flat = listener.reshape(-1, D)
    mean, std = flat.mean(axis=0), np.maximum(flat.std(axis=0), STD_FLOOR)
    normalised = ((listener - mean) / std).astype(np.float32)
    dev = select_device(device)
    models: dict[str, tuple[np.ndarray, TemporalEncoder]] = {}
    stats: dict[str, Any] = {}
    for i, (name, idx) in enumerate(cols.items()):
        start = time.perf_counter()
        with _torch_threads(1):
            model, losses = _train_one(normalised[..., idx], config, seed=config.seed * 1000 + i, device=dev)
        tail = losses[-max(1, len(losses) // 10) :]
        stats[name] = {
            "first_loss": losses[0],
            "final_loss": float(np.mean(tail)),  # mean of the last 10 % of steps: less noisy than one batch
            "chance_loss": float(np.log(config.batch_size + len(CORRUPTIONS))),
            "seconds": time.perf_counter() - start,
        }
        models[name] = (idx, model)
    stats["device"] = str(dev)
    stats["train_reactions"] = K
    stats["parameters_per_subset"] = {
        n: sum(p.numel() for p in m.parameters()) for n, (_, m) in models.items()
    }
    return RealismEncoder(config, mean, std, models, stats)


def save_encoder(encoder: RealismEncoder, path: Path | str) -> None:
    """``torch.save`` of a plain dict (tensors, numbers, strings), atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(encoder.config),
        "mean": torch.as_tensor(encoder.mean),
        "std": torch.as_tensor(encoder.std),
        "subsets": {
            name: {
                "columns": torch.as_tensor(np.asarray(columns, np.int64)),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            }
            for name, (columns, model) in encoder.models.items()
        },
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_encoder(path: Path | str, device: str = "auto") -> RealismEncoder:
    """Load a checkpoint written by :func:`save_encoder` (``weights_only=True``) onto ``device``."""
    fix = "run `dvc repro realism_encoder` (or `python -m pipelines.realism_encoder`) to train it"
    payload = checkpoints.load_checkpoint(path, CHECKPOINT_FORMAT, fix, kind="realism encoder")
    known = {f.name for f in fields(RealismConfig)}
    config = RealismConfig(**{k: v for k, v in payload["config"].items() if k in known})
    dev = select_device(device)
    models = {}
    for name, part in payload["subsets"].items():
        columns = part["columns"].numpy()
        model = TemporalEncoder(len(columns), config.channels, config.embedding_dim)
        model.load_state_dict(part["state_dict"])
        models[name] = (columns, model.to(dev).eval())
    return RealismEncoder(config, payload["mean"].numpy(), payload["std"].numpy(), models)
