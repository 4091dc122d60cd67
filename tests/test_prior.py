"""The Gaussian window prior behind the denoiser's preconditioning, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reactdiff.conditions import Conditions
from reactdiff.model import Denoiser, NetworkConfig, build_denoiser
from reactdiff.noise import karras_sigmas
from reactdiff.prior import WindowPrior
from reactdiff.samplers import sample_dpmpp_2m

W, D = 6, 4


def random_prior(seed: int = 0) -> WindowPrior:
    """A prior with random axes, temporal eigenvectors and variances spanning five decades."""
    g = torch.Generator().manual_seed(seed)
    prior = WindowPrior(W, D)
    prior.mean.copy_(torch.randn(D, generator=g, dtype=torch.float64))
    prior.basis.copy_(torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0])
    prior.eigvecs.copy_(torch.linalg.qr(torch.randn(D, W, W, generator=g, dtype=torch.float64))[0])
    prior.eigvals.copy_(10 ** (torch.rand(D, W, generator=g, dtype=torch.float64) * 5 - 4))
    return prior


def full_covariance(prior: WindowPrior) -> torch.Tensor:
    """The ``[W*D, W*D]`` covariance (frame-major) that the separable prior stands for."""
    temporal = prior.eigvecs @ torch.diag_embed(prior.eigvals) @ prior.eigvecs.transpose(1, 2)  # [D, W, W]
    cov = torch.zeros(W, D, W, D, dtype=torch.float64)
    for axis in range(D):
        v = prior.basis[:, axis]
        cov += temporal[axis][:, None, :, None] * (v[:, None] * v[None, :])[None, :, None, :]
    return cov.reshape(W * D, W * D)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 7.0])
def test_skip_is_the_wiener_filter_of_the_full_covariance(sigma: float) -> None:
    prior = random_prior()
    cov = full_covariance(prior)
    x = torch.randn(3, W, D, dtype=torch.float64)
    centred = (x - prior.mean).reshape(3, -1)
    expected = (cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(W * D), centred.T)).T
    torch.testing.assert_close(prior.skip(x, sigma), expected.reshape(3, W, D) + prior.mean)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 7.0])
def test_flow_is_the_square_root_of_the_wiener_gain_of_the_full_covariance(sigma: float) -> None:
    prior = random_prior(2)
    cov = full_covariance(prior)
    values, vectors = torch.linalg.eigh(cov)
    gain = vectors @ torch.diag((values / (values + sigma**2)).sqrt()) @ vectors.T  # C^1/2 (C + s^2)^-1/2
    x = torch.randn(3, W, D, dtype=torch.float64)
    expected = ((x - prior.mean).reshape(3, -1) @ gain.T).reshape(3, W, D) + prior.mean
    torch.testing.assert_close(prior.flow(x, sigma), expected)
    assert torch.equal(prior.flow(x, 0.0), x)


def test_the_gaussian_denoisers_ode_trajectory_is_the_flow() -> None:
    # The Wiener filter is the exact denoiser of the prior's Gaussian windows: DPM-Solver++(2M) solving
    # its probability-flow ODE from sigma_max follows the closed form that flow() continues to sigma = 0.
    prior = random_prior(3)
    prior.eigvals.clamp_(min=1e-2)  # a direction of variance 1e-4 is too stiff for 200 steps
    x_T = 80.0 * torch.randn(4, W, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(200).double()[:-1]  # stop at sigma_min
    end = sample_dpmpp_2m(lambda x, sigma, cond: prior.skip(x, sigma), x_T, sigmas)
    values, vectors = torch.linalg.eigh(full_covariance(prior))

    def along(sigma: float) -> torch.Tensor:  # the trajectory's point at sigma, in closed form
        gain = vectors @ torch.diag(((values + sigma**2) / (values + 80.0**2)).sqrt()) @ vectors.T
        return ((x_T - prior.mean).reshape(4, -1) @ gain.T).reshape(4, W, D) + prior.mean

    torch.testing.assert_close(end, along(float(sigmas[-1])), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(prior.flow(x_T, 80.0), along(0.0))


@pytest.mark.parametrize("sigma", [0.01, 0.3, 7.0])
def test_output_factor_is_a_causal_square_root_of_the_wiener_error(sigma: float) -> None:
    prior = random_prior(1)
    factor = prior.error_factor(sigma)[0]  # [D, W, W], per axis
    assert torch.equal(factor, factor.tril()), "L(sigma) must be lower triangular in time"
    # L F, with F white, has the covariance of the Wiener filter's error: C - C (C + s^2 I)^-1 C.
    cov = full_covariance(prior)
    error = cov - cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(W * D), cov)
    columns = torch.eye(W * D, dtype=torch.float64).reshape(W * D, W, D)
    mapped = prior.scale_output(columns, sigma).reshape(W * D, W * D).T  # the linear map, as a matrix
    torch.testing.assert_close(mapped @ mapped.T, error, atol=1e-9, rtol=1e-6)


def test_output_frame_t_reads_network_frames_up_to_t_only() -> None:
    prior = random_prior(2)
    out = torch.randn(2, W, D, dtype=torch.float64)
    sigma = torch.tensor([0.05, 2.0])
    for t in range(W - 1):
        later = out.clone()
        later[:, t + 1 :] += 10.0
        change = (prior.scale_output(later, sigma) - prior.scale_output(out, sigma)).abs()
        assert change[:, : t + 1].max() == 0.0
        assert change[:, t + 1 :].max() > 1e-3


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("sigma", [0.002, 0.3, 7.0, 80.0])
def test_a_step_operator_gives_the_skip_path_and_the_scaled_output_in_one_product(
    sigma: float, power: float
) -> None:
    """A sampler's step: ``estimate`` with the level's operator is ``skip`` (``power`` 1) or ``flow``
    (0.5) of ``x`` plus ``scale_output`` of the network's output, from the prediction of the past."""
    prior = random_prior(3)
    g = torch.Generator().manual_seed(4)
    x, out, past = (torch.randn(3, W, D, generator=g, dtype=torch.float64) for _ in range(3))
    prediction = prior.predict(past)
    operator = prior.step_operator(sigma, power)
    assert operator.shape == (D, W, 2 * W)
    shrink = prior.skip if power == 1.0 else prior.flow
    expected = shrink(x, sigma, prediction=prediction) + prior.scale_output(out, sigma)
    torch.testing.assert_close(prior.estimate(x, out, operator, prediction), expected)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 2.0, 80.0])
def test_isotropic_prior_is_edm(sigma: float) -> None:
    prior = WindowPrior.isotropic(W, D, sigma_data=0.5)
    x = torch.randn(2, W, D, dtype=torch.float64)
    c_skip = 0.25 / (sigma**2 + 0.25)
    c_out = sigma * 0.5 / np.sqrt(sigma**2 + 0.25)
    torch.testing.assert_close(prior.skip(x, sigma), c_skip * x)
    torch.testing.assert_close(prior.scale_output(x, sigma), c_out * x)
    assert prior.variance == pytest.approx(0.25)


def test_fit_recovers_a_separable_covariance() -> None:
    truth = random_prior(4)
    truth.eigvals.copy_(truth.eigvals.clamp_min(1e-2))  # well-determined by the sample below
    cov = full_covariance(truth)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, W * D, generator=g, dtype=torch.float64)
    windows = (noise @ torch.linalg.cholesky(cov).T).reshape(n, W, D) + truth.mean
    fitted = WindowPrior.fit(windows.numpy())
    torch.testing.assert_close(fitted.mean, truth.mean, atol=0.03, rtol=0)
    relative = (full_covariance(fitted) - cov).norm() / cov.norm()
    assert relative < 0.03


def test_fit_rejects_bad_windows() -> None:
    with pytest.raises(ValueError, match=r"\[N >= 2, w, D\]"):
        WindowPrior.fit(np.zeros((1, W, D)))
    bad = np.zeros((3, W, D))
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        WindowPrior.fit(bad)


def test_untrained_denoiser_is_the_wiener_filter() -> None:
    """With the zero-initialised head D = skip(x): training starts from the linear filter."""
    g = torch.Generator().manual_seed(0)
    windows = torch.randn(64, 16, 58, generator=g, dtype=torch.float64)
    prior = WindowPrior.fit(windows.numpy(), past=torch.roll(windows, 1, dims=0).numpy())
    denoiser = build_denoiser("demo", 12, prior=prior)
    x = torch.randn(3, 16, 58)
    sigma = torch.tensor([0.05, 0.5, 5.0])
    cond = Conditions.create(
        torch.randn(3, 16, 58, generator=g), torch.randn(3, 16, 12, generator=g), torch.randn(3, 16, 58), 40
    )
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, sigma, cond), prior.skip(x, sigma, cond.past))
    assert torch.equal(denoiser(x, 0.0, cond), x)


class _ZeroNetwork(torch.nn.Module):
    """A network whose output is an autocast-dtype zero (a bf16 matmul under autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = NetworkConfig()
        self.head = torch.nn.Linear(58, 58)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        return self.head(x_in)


def test_skip_path_keeps_full_precision_under_mixed_precision() -> None:
    """Autocast (bf16 on CUDA in training) must not round the Wiener filter: bf16 products would be off by
    about 3e-3, more than the noise at the lowest training levels."""
    g = torch.Generator().manual_seed(1)
    windows = torch.randn(64, 16, 58, generator=g, dtype=torch.float64)
    prior = WindowPrior.fit(windows.numpy(), past=torch.roll(windows, 1, dims=0).numpy())
    denoiser = Denoiser(_ZeroNetwork(), prior=prior)
    cond = Conditions.create(
        torch.randn(2, 16, 58, generator=g), torch.randn(2, 16, 12, generator=g), torch.randn(2, 16, 58), 40
    )
    x, sigma = torch.randn(2, 16, 58, generator=g), torch.tensor([0.01, 0.3])
    with torch.no_grad():
        plain = denoiser(x, sigma, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = denoiser(x, sigma, cond)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(plain, prior.skip(x, sigma, cond.past))


def test_fit_regresses_each_axis_on_its_past_and_the_history() -> None:
    # Windows whose level follows a per-sequence history plus an AR term: the fitted gains are the least
    # squares coefficients of each axis's window on [its previous window, the history], computed here
    # directly, and the covariance left is that of the residuals.
    g = torch.Generator().manual_seed(6)
    n = 4000
    history = torch.randn(n, D, generator=g, dtype=torch.float64)
    past = history[:, None] + 0.5 * torch.randn(n, W, D, generator=g, dtype=torch.float64)
    windows = (
        0.6 * history[:, None]
        + 0.3 * past.flip(1)
        + 0.2 * torch.randn(n, W, D, generator=g, dtype=torch.float64)
    )
    prior = WindowPrior.fit(windows, past=past, history=history)
    mean, basis = prior.mean, prior.basis
    axes = lambda t: (t - mean) @ basis  # noqa: E731
    x, p, h = axes(windows), axes(past), axes(history)
    for d in range(D):
        regressors = torch.cat([p[:, :, d], h[:, d : d + 1]], dim=1)  # [n, W + 1]
        coef = torch.linalg.lstsq(regressors, x[:, :, d]).solution  # [W + 1, W]
        torch.testing.assert_close(prior.past_gain[d], coef[:W].T, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(prior.history_gain[d], coef[W], atol=1e-4, rtol=1e-4)
        residual = x[:, :, d] - regressors @ coef
        cov = prior.eigvecs[d] @ torch.diag(prior.eigvals[d]) @ prior.eigvecs[d].T
        torch.testing.assert_close(cov, residual.T @ residual / n, atol=1e-4, rtol=1e-3)
    assert prior.history_gain.abs().max() > 0.1  # the history carries the level
    # The prediction uses both.
    expected = (
        prior._temporal(prior.past_gain[None], p) + h[:, None] * prior.history_gain.T
    ) @ basis.T + mean
    torch.testing.assert_close(prior.predict(past, history), expected)


def test_a_prior_saved_without_history_loads_and_ignores_it() -> None:
    prior = random_prior(7)
    state = {k: v for k, v in prior.state_dict().items() if k != "history_gain"}
    loaded = WindowPrior(W, D)
    loaded.load_state_dict(state)
    assert torch.equal(loaded.history_gain, torch.zeros(D, W, dtype=torch.float64))
    past = torch.randn(2, W, D, dtype=torch.float64)
    torch.testing.assert_close(
        loaded.predict(past, torch.randn(2, D, dtype=torch.float64)), loaded.predict(past)
    )
