"""The exponential moving average of the weights, the ones sampling uses."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from reactdiff.training.distributed import _unwrap

# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's parameters, kept in a shadow copy of the model.

    ``update(model, step)``: ``shadow = d * shadow + (1 - d) * param`` for every parameter, with
    ``d = min(decay, (1 + step) / (10 + step))`` when ``warmup`` else ``decay``; buffers are copied.
    ``step`` is the 0-based index of the update. The shadow is in eval mode and never needs gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.shadow = copy.deepcopy(_unwrap(model)).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used by the update of index ``step``."""
        if self.warmup:
            return min(self.decay, (1.0 + step) / (10.0 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        source = _unwrap(model)
        shadow: list[torch.Tensor] = list(self.shadow.parameters())
        params = [p.detach() for p in source.parameters()]
        if len(shadow) != len(params):
            raise ValueError("EMA.update: the model does not have the shadow's parameters")
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, params, alpha=1.0 - d)
        for b_shadow, b in zip(self.shadow.buffers(), source.buffers(), strict=True):
            b_shadow.copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones."""
        _unwrap(model).load_state_dict(self.shadow.state_dict())

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow model's state dict (same keys as the model's)."""
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.shadow.load_state_dict(state)
