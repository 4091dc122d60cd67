"""Checkpoints that resume exactly (weights, EMA, optimizer, RNG states) and load with ``weights_only``."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from reactdiff import atomic, checkpoints
from reactdiff.devices import select_device, select_precision
from reactdiff.model import (
    Denoiser,
    NetworkConfig,
    ReactionUNet,
    channel_major_convolutions,
    count_parameters,
)
from reactdiff.training.config import CHECKPOINT_FORMAT, TrainConfig, _plain
from reactdiff.training.distributed import _unwrap
from reactdiff.training.ema import EMA

# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = cast(tuple, np.random.get_state(legacy=True))
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["bit_generator"],
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    path: Path | str,
    *,
    model_args: dict[str, Any],
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    step: int,
    rng: dict[str, Any],
    config_fingerprint: str,
    extra: dict[str, Any],
) -> None:
    """Write a training checkpoint atomically (a reader never sees a half-written file).

    Keys: ``format``, ``model_args`` (``preset``, ``audio_dim``, ``overrides``, ``network`` = the full
    :class:`NetworkConfig` as a dict, ``sigma_data``), ``model`` (raw weights), ``ema`` (EMA weights, or
    ``None``), ``optimizer``, ``scaler``, ``step``, ``rng``, ``config_fingerprint``, ``extra``. Only
    tensors and plain python values, so :func:`load_checkpoint` never unpickles arbitrary objects.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_args": _plain(model_args),
        "model": _unwrap(model).state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": int(step),
        "rng": rng,
        "config_fingerprint": str(config_fingerprint),
        "extra": _plain(extra),
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint: tensors and plain values only (:mod:`reactdiff.checkpoints`)."""
    fix = "train it again (`dvc repro train`, or `python -m pipelines.train`)"
    return checkpoints.load_checkpoint(
        path, CHECKPOINT_FORMAT, fix, map_location=map_location, kind="ReactDiff training"
    )


def _model_args(cfg: TrainConfig, audio_dim: int, denoiser: Denoiser) -> dict[str, Any]:
    return {
        "preset": cfg.preset,
        "audio_dim": int(audio_dim),
        "overrides": dict(cfg.model_overrides),
        "network": denoiser.config.to_dict(),
        "sigma_data": denoiser.sigma_data,
    }


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], module: nn.Module, module_state: Any
) -> None:
    """``optimizer.load_state_dict(state)`` of a checkpoint whose weights ``module_state`` were loaded
    into ``module``: what the optimizer keeps per element of a weight that loading reordered (Adam's
    moments of convolutions saved before their tap-major layout, :func:`reactdiff.model.
    channel_major_convolutions`) is reordered the same way, so the run resumes where it stopped."""
    optimizer.load_state_dict(state)
    for layer in channel_major_convolutions(_unwrap(module), module_state):
        kept = optimizer.state.get(layer.weight, {})
        for key, value in kept.items():
            if torch.is_tensor(value) and value.numel() == layer.weight.numel():
                kept[key] = layer.tap_major(value)


def load_denoiser(
    path: Path | str,
    device: torch.device | str | None = None,
    use_ema: bool = True,
    precision: str = "fp32",
) -> Denoiser:
    """The :class:`Denoiser` of a checkpoint, in eval mode, on ``device`` (``None``: automatic choice).

    The network is rebuilt from the stored :class:`NetworkConfig` (not from today's preset tables) and
    loaded with the EMA weights (``use_ema``, the ones meant for sampling) or the raw trained weights.
    ``precision``: what its network computes in (:func:`reactdiff.devices.select_precision`; the prior
    stays float64), for sampling.
    """
    device = select_device("auto") if device is None else torch.device(device)
    ckpt = load_checkpoint(path)
    args = ckpt["model_args"]
    network = ReactionUNet(NetworkConfig(**args["network"]))
    denoiser = Denoiser(network, sigma_data=args["sigma_data"], skip=args.get("skip", "wiener"))
    state = ckpt["ema"] if use_ema else ckpt["model"]
    if state is None:
        raise ValueError(f"{path} holds no EMA weights; load it with use_ema=False")
    # A checkpoint from before the fitted prior has none: it was trained with EDM's isotropic one,
    # which is what the denoiser was built with.
    merged = OrderedDict((f"prior.{k}", v) for k, v in denoiser.prior.state_dict().items())
    merged.update(state)
    # The state's metadata tells the layouts of earlier versions of its layers (reactdiff.model._TimeConv).
    merged._metadata = getattr(state, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    denoiser.load_state_dict(merged)
    denoiser = denoiser.to(device).eval()
    return denoiser.compute_in(select_precision(precision, device, count_parameters(denoiser)))
