"""Where and in what precision torch runs: the one place a device or precision name from ``params.yaml``
becomes a ``torch.device`` or a ``torch.dtype``.

Every stage that computes with torch (training, the realism encoder, denoising curves, sampling) asks
:func:`select_device`, so ``auto`` means the same everywhere, and a module that only needs a device does
not import the training loop for it. Sampling asks :func:`select_precision` for the dtype the network
computes in (:meth:`reactdiff.model.Denoiser.compute_in`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from reactdiff.errors import UserError

__all__ = [
    "BF16_MIN_PARAMETERS",
    "DEVICE_CHOICES",
    "PRECISIONS",
    "DeviceUnavailable",
    "cpu_has_bf16",
    "select_device",
    "select_precision",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_PARAMETERS = 5_000_000
"""``auto`` computes in bf16 on a CPU only for networks at least this large. Measured on a Xeon with AMX
(2 threads, one denoiser call of 20 rows): the paper preset (85.4M parameters) 81 ms in fp32, 40 ms in
bf16; the demo preset (0.28M) 3.5 ms in fp32, 4.4 ms in bf16, its time being per-operator overhead, which
the conversions only add to."""


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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512-BF16 or AMX), read from ``/proc/cpuinfo``.

    Elsewhere (no such file, another OS) it says no: bf16 emulated in fp32 units is slower than fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def select_precision(requested: str, device: torch.device, parameters: int) -> torch.dtype:
    """The dtype a network of ``parameters`` computes in on ``device`` when sampling.

    ``auto``: on CUDA bf16 where supported, else fp16; on a CPU bf16 when the CPU has it natively
    (:func:`cpu_has_bf16`) and the network has at least :data:`BF16_MIN_PARAMETERS` parameters, else fp32;
    fp32 elsewhere. ``fp32``, ``bf16`` and ``fp16`` are taken as given, except that fp16 needs a GPU (a
    CPU has no fp16 arithmetic worth the rounding): :class:`DeviceUnavailable`.
    """
    name = str(requested).strip().lower()
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16() and parameters >= BF16_MIN_PARAMETERS:
            return torch.bfloat16
        return torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of auto, {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type != "cuda":
        raise DeviceUnavailable(
            f"precision fp16 needs a CUDA device, this run is on {device}: set the precision to auto, "
            "fp32 or bf16 in params.yaml"
        )
    return PRECISIONS[name]
