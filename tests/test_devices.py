"""Device selection: one rule for every stage."""

import pytest
import torch

from reactdiff import devices
from reactdiff.devices import BF16_MIN_PARAMETERS, DeviceUnavailable, select_device, select_precision


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    auto = select_device("auto")
    if expected:
        assert auto.type == "cuda"
    elif not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        assert auto == torch.device("cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:<index>, mps"):
        select_device("tpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="not available|False"):
            select_device("cuda")


@pytest.mark.parametrize("native_bf16", [True, False])
def test_select_precision(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    large = torch.bfloat16 if native_bf16 else torch.float32
    assert select_precision("auto", cpu, BF16_MIN_PARAMETERS) == large
    assert select_precision("auto", cpu, BF16_MIN_PARAMETERS - 1) == torch.float32  # overhead-bound: fp32
    assert select_precision("auto", torch.device("mps"), 10**9) == torch.float32
    assert select_precision(" BF16 ", cpu, 10) == torch.bfloat16  # as asked, whatever the size
    assert select_precision("fp32", cpu, 10**9) == torch.float32
    with pytest.raises(DeviceUnavailable, match="fp16 needs a CUDA device.*params.yaml"):
        select_precision("fp16", cpu, 10)
    with pytest.raises(ValueError, match="unknown precision 'half'; choose one of auto, fp32, bf16, fp16"):
        select_precision("half", cpu, 10)


def test_cpu_has_bf16_reads_the_flags(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    real_path = devices.Path

    def cpuinfo(flags: str):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\nbogomips\t: 1\n")
        return lambda name: real_path(tmp_path / "cpuinfo") if name == "/proc/cpuinfo" else real_path(name)

    for flags, expected in [
        ("avx512f amx_bf16 amx_tile", True),
        ("avx512_bf16", True),
        ("avx2 avx512f", False),
    ]:
        monkeypatch.setattr(devices, "Path", cpuinfo(flags))
        devices.cpu_has_bf16.cache_clear()
        assert devices.cpu_has_bf16() is expected
    monkeypatch.setattr(devices, "Path", lambda name: real_path(tmp_path / "absent"))
    devices.cpu_has_bf16.cache_clear()
    assert devices.cpu_has_bf16() is False
    devices.cpu_has_bf16.cache_clear()
