"""The denoising curve and its linear bar, against closed forms on Gaussian data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reactdiff.denoising import LinearDenoiser, denoising_curve
from reactdiff.windows import WindowBatch

W, D = 4, 3


def gaussian_windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` windows ``[n, W, D]`` of a fixed Gaussian with a dense covariance, its mean and covariance."""
    rng = np.random.default_rng(99)
    root = rng.standard_normal((W * D, W * D)) * np.linspace(0.05, 1.0, W * D)
    cov = root @ root.T
    mean = rng.standard_normal(W * D)
    x = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)
    return x.reshape(n, W, D), mean, cov


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_linear_denoiser_is_the_wiener_filter(sigma: float) -> None:
    _, mean, cov = gaussian_windows(2, 0)
    linear = LinearDenoiser(mean, cov, (W, D))
    x = torch.randn(5, W, D, dtype=torch.float64)
    centred = x.reshape(5, -1).numpy() - mean
    expected = mean + (cov @ np.linalg.solve(cov + sigma**2 * np.eye(W * D), centred.T)).T
    np.testing.assert_allclose(linear(x, sigma).numpy().reshape(5, -1), expected, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0])
def test_linear_denoiser_error_on_gaussian_data_matches_the_closed_form(sigma: float) -> None:
    train, mean, cov = gaussian_windows(50_000, 1)
    linear = LinearDenoiser.fit(train)
    np.testing.assert_allclose(linear.mean.numpy(), mean, atol=0.05)
    # Closed form for the true covariance: mean of l s^2 / (l + s^2) over its eigenvalues l.
    eig = np.linalg.eigvalsh(cov)
    closed = float(np.mean(eig * sigma**2 / (eig + sigma**2)))
    assert linear.expected_error(sigma) == pytest.approx(closed, rel=0.03)
    test, _, _ = gaussian_windows(20_000, 2)
    x0 = torch.as_tensor(test)
    g = torch.Generator().manual_seed(0)
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    empirical = float((linear(x, sigma) - x0).pow(2).mean())
    assert empirical == pytest.approx(closed, rel=0.04)


class _Windows:
    """A WindowSource of fixed windows with empty conditions (the curve only reads ``listener``)."""

    def __init__(self, listener: np.ndarray) -> None:
        self.listener = listener.astype(np.float32)
        self.w = listener.shape[1]

    def __len__(self) -> int:
        return len(self.listener)

    @property
    def audio_dim(self) -> int:
        return 2

    def batch(self, indices: np.ndarray) -> WindowBatch:
        x = self.listener[np.asarray(indices)]
        b = len(x)
        return WindowBatch(
            listener=x,
            past=np.zeros_like(x),
            speaker_face=np.zeros_like(x),
            speaker_audio=np.zeros((b, self.w, 2), np.float32),
            frame_index=np.zeros(b, np.int64),
            example=np.zeros(b, np.int32),
        )


class _AsModel(torch.nn.Module):
    """A 'model' that is the linear denoiser itself: its curve must equal the linear column."""

    def __init__(self, linear: LinearDenoiser) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor, sigma: float, cond: object) -> torch.Tensor:
        return self.linear(x, sigma)


def test_curve_columns_and_determinism() -> None:
    train, _, _ = gaussian_windows(20_000, 3)
    val, _, _ = gaussian_windows(3_000, 4)
    linear = LinearDenoiser.fit(train)
    data = _Windows(val)
    curve = denoising_curve(_AsModel(linear), linear, data, sigmas=(0.1, 1.0), windows=3_000, batch_size=700)
    assert [row["sigma"] for row in curve] == [0.1, 1.0]
    for row in curve:
        assert row["noisy"] == pytest.approx(row["sigma"] ** 2, rel=0.03)
        assert row["model"] == pytest.approx(row["linear"], rel=1e-5)
        assert row["linear"] == pytest.approx(linear.expected_error(row["sigma"]), rel=0.06)
    again = denoising_curve(_AsModel(linear), linear, data, sigmas=(0.1, 1.0), windows=3_000, batch_size=300)
    for a, b in zip(curve, again, strict=True):
        assert a == pytest.approx(b, rel=1e-5)  # same noise whatever the batching
