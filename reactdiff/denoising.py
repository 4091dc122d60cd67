"""The denoising curve: how well a trained denoiser removes noise, level by level, against a linear bar.

The first thing to look at when a diffusion model misbehaves. For each noise level ``sigma``, real
validation windows ``x0`` are noised once, ``x = x0 + sigma * eps``, and three estimates of ``x0`` are
scored by their mean squared error over windows, frames and coefficients (normalised units):

- ``noisy``: ``x`` itself (error ``sigma^2``);
- ``linear``: :class:`LinearDenoiser`, the Wiener filter ``mu + C (C + sigma^2 I)^-1 (x - mu)`` with the
  mean and *full* ``wD x wD`` covariance of the train listener windows. It knows nothing of the speaker or
  the past; on data whose windows were Gaussian it would be the best denoiser there is, so a conditional
  network should approach it at low noise and beat it once the conditions carry information;
- ``model``: the trained denoiser, given each window's real past and speaker (the conditions it has
  when sampling).

Every estimate sees the same ``x``, drawn from a seeded generator, so the curve is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from reactdiff.training import WindowSource, evenly_spaced, to_model_inputs

__all__ = ["CURVE_SIGMAS", "LinearDenoiser", "denoising_curve"]

CURVE_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class LinearDenoiser:
    """Wiener filter of ``[w, D]`` windows with their full mean and covariance (float64).

    ``denoiser(x [B, w, D], sigma) -> [B, w, D]``. The covariance is eigendecomposed once, so each
    noise level costs two matrix products: ``C (C + sigma^2 I)^-1 = U diag(l / (l + sigma^2)) U^T``.
    """

    def __init__(self, mean: np.ndarray, covariance: np.ndarray, shape: tuple[int, int]) -> None:
        size = shape[0] * shape[1]
        if mean.shape != (size,) or covariance.shape != (size, size):
            raise ValueError(f"mean {mean.shape} / covariance {covariance.shape} do not fit windows {shape}")
        self.shape = tuple(shape)
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        eigvals, self.eigvecs = torch.linalg.eigh(torch.as_tensor(covariance, dtype=torch.float64))
        self.eigvals = eigvals.clamp_min(0.0)  # round-off can leave tiny negative eigenvalues

    @classmethod
    def fit(cls, windows: np.ndarray) -> LinearDenoiser:
        """Maximum-likelihood mean and covariance of windows ``[N, w, D]`` (``N`` should exceed ``w * D``)."""
        x = np.asarray(windows, dtype=np.float64)
        if x.ndim != 3 or x.shape[0] < 2:
            raise ValueError(f"LinearDenoiser.fit needs windows [N >= 2, w, D], got {x.shape}")
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(axis=0)
        centred = flat - mean
        return cls(mean, centred.T @ centred / len(flat), x.shape[1:])

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        flat = x.to(torch.float64).reshape(x.shape[0], -1) - self.mean
        gain = self.eigvals / (self.eigvals + float(sigma) ** 2)
        out = ((flat @ self.eigvecs) * gain) @ self.eigvecs.T + self.mean
        return out.reshape(x.shape).to(x.dtype)

    def expected_error(self, sigma: float) -> float:
        """The filter's mean squared error on data with exactly this mean and covariance (closed form)."""
        s2 = float(sigma) ** 2
        return float((self.eigvals * s2 / (self.eigvals + s2)).mean())


@torch.no_grad()
def denoising_curve(
    denoiser: torch.nn.Module,
    linear: LinearDenoiser,
    data: WindowSource,
    sigmas: Sequence[float] = CURVE_SIGMAS,
    *,
    windows: int = 1024,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """``[{"sigma", "noisy", "linear", "model"}]``: mean squared errors per noise level (module docstring).

    Scored on ``min(windows, len(data))`` windows evenly spaced over ``data``, with the real past and
    speaker as conditions; the noise of level ``i`` is seeded from ``(seed, i)``.
    """
    if min(windows, len(data)) == 0:
        raise ValueError("denoising_curve: the data has no windows")
    indices = evenly_spaced(len(data), windows)
    was_training = denoiser.training
    denoiser.eval()
    curve = []
    for level, sigma in enumerate(sigmas):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + level)
        sums = {"noisy": 0.0, "linear": 0.0, "model": 0.0}
        for start in range(0, len(indices), batch_size):
            x0, cond = to_model_inputs(data.batch(indices[start : start + batch_size]), device)
            x = x0 + float(sigma) * torch.randn(x0.shape, generator=gen).to(device)
            estimates = {
                "noisy": x,
                "linear": linear(x.cpu(), sigma).to(device),
                "model": denoiser(x, sigma, cond),
            }
            for name, est in estimates.items():
                sums[name] += float((est.float() - x0).pow(2).sum())
        count = len(indices) * x0.shape[1] * x0.shape[2]
        curve.append({"sigma": float(sigma), **{k: v / count for k, v in sums.items()}})
    denoiser.train(was_training)
    return curve
