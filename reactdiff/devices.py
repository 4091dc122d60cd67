"""Where torch runs: the one place a device name from ``params.yaml`` becomes a ``torch.device``.

Every stage that computes with torch (training, the realism encoder, denoising curves, sampling) asks
:func:`select_device`, so ``auto`` means the same everywhere, and a module that only needs a device does
not import the training loop for it.
"""

from __future__ import annotations

import torch

from reactdiff.errors import UserError

__all__ = ["DEVICE_CHOICES", "DeviceUnavailable", "select_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")


class DeviceUnavailable(RuntimeError, UserError):
    """A device named in the params that this machine does not have."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str = "auto") -> torch.device:
    """The torch device for ``requested``: ``"auto"`` picks cuda, then mps, then cpu.

    Raises ``ValueError`` for a string that names no supported device and :class:`DeviceUnavailable` (a
    ``RuntimeError``) for a device this machine does not have.
    """
    name = str(requested).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceUnavailable(
                "device 'mps' requested but torch.backends.mps.is_available() is False: set the device "
                "to auto or cpu in params.yaml"
            )
        return torch.device("mps")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {requested!r} requested but torch.cuda.is_available() is False (no GPU, or a CPU "
                "build of torch): set the device to auto or cpu in params.yaml"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {requested!r} requested but this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return device
    raise ValueError(f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}")
