"""Device selection: one rule for every stage."""

import pytest
import torch

from reactdiff.devices import select_device


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
