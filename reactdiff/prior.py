"""A Gaussian model of listener windows, used as the denoiser's skip path and output scale.

Why. EDM's preconditioning (Karras et al. 2022) writes the denoiser as ``D = c_skip x + c_out F`` with
scalar ``c_skip = s^2 / (s^2 + sigma^2)`` and ``c_out = sigma s / sqrt(s^2 + sigma^2)``: it is the
Wiener filter, and its posterior standard deviation, of data that are *white* with variance ``s^2``.
Facial coefficients are anything but white: a 16-frame window of 58 coefficients has most of its
variance in a few slow, correlated directions, and almost none at high temporal frequencies. Under the
scalar form, removing noise from those empty directions is the network's job, and at low noise it
needs a gain of ``1 / sigma`` on exactly the part of its input that carries no signal; a small network
trained for minutes does not learn it, and its samples jitter (issue 11 measured the demo model losing to
a linear filter by 3 to 5 times at sigma <= 0.5).

What. :class:`WindowPrior` is the same construction with the data's covariance in place of ``s^2 I``:

- ``skip(x, sigma) = mean + C (C + sigma^2 I)^-1 (x - mean)``: the Wiener filter of the windows;
- ``scale_output(F, sigma) = L(sigma) F`` with ``L L^T = C - C (C + sigma^2 I)^-1 C``, the covariance
  of the Wiener filter's error, so a network output ``F`` with unit variance corrects the filter by
  exactly as much as the filter can be wrong, direction by direction.

With ``C = s^2 I`` (:meth:`WindowPrior.isotropic`) both reduce to EDM's scalars exactly. A network
whose output is zero is the Wiener filter, so training starts from it rather than from ``c_skip x``.

The loss keeps EDM's scalar weighting ``lambda(sigma)`` of the squared error (:func:`reactdiff.losses.
dm_loss`). Whitening the error by ``L(sigma)^-1`` instead (a unit-variance target in every direction,
EDM's argument taken per direction) was measured and rejected: most of the ``w * D`` directions are
nearly empty, their targets are unpredictable unit noise, and the network then learned far less from
the speaker and the past (validation MSE at sigma = 5: 0.127 whitened against 0.074 scalar; the linear
filter's is 0.156).

Structure. ``C`` is separable: coefficients are rotated per frame into the principal axes of the
train frames (``basis`` ``[D, D]``), and each axis gets its own temporal covariance over the window's
``w`` frames (``[D, w, w]``). Cross-covariances between different axes at different lags are left out;
on the sample corpus that costs 2 to 10 % against the full ``wD x wD`` Wiener filter at every noise level,
and it keeps two properties the full matrix would break:

- *speaker causality* (see :mod:`reactdiff.model`): ``L(sigma)`` is a Cholesky factor, lower triangular in
  time within each axis, and the rotation acts within a frame, so output frame ``t`` reads network
  outputs of frames ``<= t`` only (the skip path reads the noised window ``x``, which is generated
  jointly and may be seen in both directions);
- *cost*: the per-noise-level factorisations are ``D`` small ``w x w`` Choleskys, cheap enough to do
  for every row of every training batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["WindowPrior"]

# Temporal variances are floored at this fraction of the largest one: a direction with no variance at
# all would make L(sigma) singular, and whitening would divide by zero.
VARIANCE_FLOOR = 1e-7


class WindowPrior(nn.Module):
    """Separable Gaussian model of ``[w, D]`` windows given the listener's past (module docstring).

    Buffers (saved with the denoiser's weights): ``mean`` ``[D]``, ``basis`` ``[D, D]`` (orthonormal,
    columns are the axes), ``past_gain`` ``[D, w, w]`` and ``history_gain`` ``[D, w]`` (per axis, the
    regression of the window on the previous one and on the listener's mean since the conversation
    began: ``E[x | past, history] = mean + past_gain (past - mean) + history_gain (history - mean)``),
    ``eigvecs`` ``[D, w, w]`` and
    ``eigvals`` ``[D, w]`` of each axis's temporal covariance around that prediction, and
    ``marginal_variance``, the mean variance of a coefficient (it scales the network's input).
    Everything is computed in float64 and applied in the input's dtype.
    """

    mean: Tensor
    basis: Tensor
    past_gain: Tensor
    history_gain: Tensor
    eigvecs: Tensor
    eigvals: Tensor
    marginal_variance: Tensor

    def __init__(self, frames: int, dims: int) -> None:
        super().__init__()
        self.frames, self.dims = int(frames), int(dims)
        self.register_buffer("mean", torch.zeros(dims, dtype=torch.float64))
        self.register_buffer("basis", torch.eye(dims, dtype=torch.float64))
        self.register_buffer("past_gain", torch.zeros(dims, frames, frames, dtype=torch.float64))
        self.register_buffer("history_gain", torch.zeros(dims, frames, dtype=torch.float64))
        self.register_buffer("eigvecs", torch.eye(frames, dtype=torch.float64).repeat(dims, 1, 1))
        self.register_buffer("eigvals", torch.full((dims, frames), 0.25, dtype=torch.float64))
        self.register_buffer("marginal_variance", torch.tensor(0.25, dtype=torch.float64))

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------

    @classmethod
    def isotropic(cls, frames: int, dims: int, sigma_data: float) -> WindowPrior:
        """White windows of variance ``sigma_data^2``, independent of the past: EDM's preconditioning."""
        prior = cls(frames, dims)
        prior.eigvals.fill_(float(sigma_data) ** 2)
        prior.marginal_variance.fill_(float(sigma_data) ** 2)
        return prior

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Priors saved before the history regressor existed predicted from the previous window only.
        state_dict.setdefault(prefix + "history_gain", torch.zeros_like(self.history_gain))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def fit(
        cls,
        windows: np.ndarray | Tensor,
        past: np.ndarray | Tensor | None = None,
        history: np.ndarray | Tensor | None = None,
    ) -> WindowPrior:
        """Fit to windows ``[N, w, D]`` (the normalised train listener windows), their previous windows
        and the listener's means before them (``history`` ``[N, D]``, as in
        :class:`reactdiff.conditions.Conditions`).

        The mean and the axes come from all ``N * w`` frames. Per axis, the covariances of the window,
        the previous one and the history give the regression ``past_gain``, ``history_gain`` and the
        covariance around it (the Gaussian conditional); without ``past`` the prior is the windows'
        marginal, without ``history`` it conditions on the previous window only. Why the history: a
        chain of windows each drawn given the previous one drifts across the levels of all the train
        listeners (their means differ more than one window can tell); on the sample corpus such a linear
        chain had 1.36 times the real listeners' slow (2 s) variance, 1.03 times with the history. The
        windows are taken as stationary: a window's position in the conversation is the network's
        concern (``h``).
        """
        x = cls._checked(windows, "windows")
        n, frames, dims = x.shape
        mean = x.reshape(-1, dims).mean(dim=0)
        centred = x - mean
        spatial = centred.reshape(-1, dims).T @ centred.reshape(-1, dims) / (n * frames)
        _, basis = torch.linalg.eigh(spatial)
        axes = centred @ basis  # [N, w, D]
        cov = torch.einsum("ntd,nsd->dts", axes, axes) / n  # [D, w, w]
        prior = cls(frames, dims)
        prior.marginal_variance.fill_(float(torch.diagonal(cov, dim1=1, dim2=2).mean()))
        if past is not None:
            p = cls._checked(past, "past")
            if p.shape != x.shape:
                raise ValueError(
                    f"WindowPrior.fit: past {tuple(p.shape)} and windows {tuple(x.shape)} differ"
                )
            regressors = (p - mean) @ basis  # [N, w, D]
            if history is not None:
                hist = torch.as_tensor(np.asarray(history), dtype=torch.float64)
                if hist.shape != (n, dims) or not torch.isfinite(hist).all():
                    raise ValueError(
                        f"WindowPrior.fit: history must be finite [{n}, {dims}], got {tuple(hist.shape)}"
                    )
                regressors = torch.cat([regressors, ((hist - mean) @ basis)[:, None]], dim=1)  # [N, w + 1, D]
            k = regressors.shape[1]
            cross = torch.einsum("ntd,nsd->dts", axes, regressors) / n  # [D, w (current), k]
            reg_cov = torch.einsum("ntd,nsd->dts", regressors, regressors) / n
            ridge = 1e-6 * torch.diagonal(reg_cov, dim1=1, dim2=2).mean(dim=1)[:, None, None]
            gain = torch.linalg.solve(reg_cov + ridge * torch.eye(k, dtype=cov.dtype), cross.transpose(1, 2))
            gain = gain.transpose(1, 2)  # [D, w, k]
            prior.past_gain.copy_(gain[:, :, :frames])
            if k > frames:
                prior.history_gain.copy_(gain[:, :, frames])
            cov = cov - gain @ cross.transpose(1, 2)
            cov = (cov + cov.transpose(1, 2)) / 2
        eigvals, eigvecs = torch.linalg.eigh(cov)
        prior.mean.copy_(mean)
        prior.basis.copy_(basis)
        prior.eigvecs.copy_(eigvecs)
        prior.eigvals.copy_(eigvals.clamp_min(VARIANCE_FLOOR * float(eigvals.max())))
        return prior

    @staticmethod
    def _checked(windows: np.ndarray | Tensor, name: str) -> Tensor:
        x = torch.as_tensor(np.asarray(windows), dtype=torch.float64)
        if x.ndim != 3 or x.shape[0] < 2:
            raise ValueError(f"WindowPrior.fit needs {name} [N >= 2, w, D], got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"WindowPrior.fit: the {name} contain NaN or inf")
        return x

    @property
    def variance(self) -> float:
        """Mean marginal variance of a coefficient (the ``sigma_data^2`` that scales the network input)."""
        return float(self.marginal_variance)

    # ----------------------------------------------------------------------------------------------
    # The two maps
    # ----------------------------------------------------------------------------------------------

    def _per_row(self, sigma: Tensor | float, batch: int) -> Tensor:
        sigma = torch.as_tensor(sigma, device=self.mean.device).to(torch.float64).reshape(-1)
        return sigma.expand(batch) if sigma.numel() == 1 else sigma

    @staticmethod
    def _temporal(operators: Tensor, y: Tensor) -> Tensor:
        """Per-axis temporal operators ``[1 or B, D, w, w]`` applied to ``y`` ``[B, w, D]`` in the axes."""
        operators = operators.to(y.dtype)
        if operators.shape[0] == 1:  # one noise level for the whole batch: a sampler step
            return torch.einsum("dts,bsd->btd", operators[0], y)
        return torch.einsum("bdts,bsd->btd", operators, y)

    @staticmethod
    def _levels(sigma: Tensor) -> Tensor:
        """The distinct rows needed: ``sigma[:1]`` when every row has the same level."""
        return sigma[:1] if bool((sigma == sigma[0]).all()) else sigma

    def predict(self, past: Tensor, history: Tensor | None = None) -> Tensor:
        """``E[x | past, history]`` ``[B, w, D]``: the window the previous one ``[B, w, D]`` and the
        listener's mean so far ``[B, D]`` predict (``history=None``: the previous window's mean)."""
        basis, mean = self.basis.to(past.dtype), self.mean.to(past.dtype)
        if history is None:
            history = past.mean(dim=1)
        level = ((history - mean) @ basis)[:, None, :] * self.history_gain.T.to(past.dtype)  # [B, w, D]
        return (self._temporal(self.past_gain[None], (past - mean) @ basis) + level) @ basis.T + mean

    def skip(
        self,
        x: Tensor,
        sigma: Tensor | float,
        past: Tensor | None = None,
        history: Tensor | None = None,
        *,
        prediction: Tensor | None = None,
    ) -> Tensor:
        """Wiener estimate ``E[x0 | x, past, history]`` ``[B, w, D]`` of noised windows ``x`` at ``sigma``.

        ``past`` ``[B, w, D]``: the previous windows (``None``: the prior's mean stands for the
        prediction); ``history`` ``[B, D]``: see :meth:`predict`; ``prediction``: :meth:`predict`'s
        result when the caller has it already (then ``past`` and ``history`` are not read).
        """
        return self._shrink(x, sigma, past, history, prediction, power=1.0)

    def flow(
        self,
        x: Tensor,
        sigma: Tensor | float,
        past: Tensor | None = None,
        history: Tensor | None = None,
        *,
        prediction: Tensor | None = None,
    ) -> Tensor:
        """Where the Gaussian model's probability-flow ODE trajectory through ``x`` at ``sigma`` ends.

        ``prediction + C^(1/2) (C + sigma^2 I)^(-1/2) (x - prediction)``: the square root of the Wiener
        gain, axis by axis (for Gaussian data ``x(sigma) - m = (C + sigma^2)^(1/2) (C + s^2)^(-1/2)
        (x(s) - m)`` along a trajectory). It is the exact consistency function of the prior, what a
        distilled student corrects (:mod:`reactdiff.distillation`): unlike the Wiener estimate, which
        tends to the mean at high noise, it maps every noise to its own sample, with the windows'
        covariance. Arguments as in :meth:`skip`.
        """
        return self._shrink(x, sigma, past, history, prediction, power=0.5)

    def _shrink(
        self,
        x: Tensor,
        sigma: Tensor | float,
        past: Tensor | None,
        history: Tensor | None,
        prediction: Tensor | None,
        power: float,
    ) -> Tensor:
        """``prediction + (C (C + sigma^2 I)^-1)^power (x - prediction)`` in the prior's axes."""
        sigma = self._per_row(sigma, x.shape[0])
        levels = self._levels(sigma)
        basis = self.basis.to(x.dtype)
        if prediction is None:
            prediction = self.mean.to(x.dtype) if past is None else self.predict(past, history)
        gain = (self.eigvals / (self.eigvals + levels[:, None, None] ** 2)) ** power  # [1 or B, D, w]
        gain = gain.to(x.dtype)
        eigvecs = self.eigvecs.to(x.dtype)
        coords = torch.einsum("dtk,btd->bdk", eigvecs, (x - prediction) @ basis)
        estimate = torch.einsum("dtk,bdk->btd", eigvecs, gain * coords) @ basis.T + prediction
        # At sigma = 0 the estimate is x itself, exactly (the rotations above would round it).
        exact = (sigma == 0).to(x.device)[:, None, None]
        return torch.where(exact, x, estimate)

    def error_factor(self, sigma: Tensor | float, batch: int = 1) -> Tensor:
        """``L(sigma)`` ``[B, D, w, w]``: lower-triangular Cholesky factors of the Wiener error covariance.

        At ``sigma = 0`` the filter is exact and ``L = 0``.
        """
        sigma = self._per_row(sigma, batch)
        s2 = sigma.clamp_min(1e-6)[:, None, None] ** 2
        error_var = self.eigvals * s2 / (self.eigvals + s2)  # [B, D, w]
        cov = torch.einsum("dts,bds,dus->bdtu", self.eigvecs, error_var, self.eigvecs)
        factor = torch.linalg.cholesky(cov)
        return torch.where(sigma[:, None, None, None] > 0, factor, torch.zeros_like(factor))

    def scale_output(self, out: Tensor, sigma: Tensor | float) -> Tensor:
        """``L(sigma) F`` ``[B, w, D]`` of the network output ``F`` ``[B, w, D]`` (channel d = axis d)."""
        levels = self._levels(self._per_row(sigma, out.shape[0]))
        return self._temporal(self.error_factor(levels), out) @ self.basis.T.to(out.dtype)

    # ----------------------------------------------------------------------------------------------
    # Both maps at one noise level (a sampler's step)
    # ----------------------------------------------------------------------------------------------

    def step_operator(self, sigma: float, power: float = 1.0) -> Tensor:
        """``[D, w, 2w]`` float64: per axis the skip path's temporal gain ``(C (C + sigma^2 I)^-1)^power``
        (``power`` 1: :meth:`skip`, 0.5: :meth:`flow`) beside the output scale ``L(sigma)``, for
        :meth:`estimate`. A sampler's step gives every row of a window the same level, so the operator
        is formed once per level and both maps cost one product per step. ``sigma > 0``."""
        gain = (self.eigvals / (self.eigvals + sigma**2)) ** power  # [D, w]
        shrink = torch.einsum("dtk,dk,dsk->dts", self.eigvecs, gain, self.eigvecs)
        return torch.cat([shrink, self.error_factor(sigma)[0]], dim=2)

    def estimate(self, x: Tensor, out: Tensor, operator: Tensor, prediction: Tensor) -> Tensor:
        """``skip(x) + scale_output(out)`` (or ``flow``'s) at the level of :meth:`step_operator`'s
        ``operator``, in ``x``'s dtype: ``prediction + [G | L] [(x - prediction); F]`` in the axes."""
        basis = self.basis.to(x.dtype)
        stacked = torch.cat([(x - prediction) @ basis, out.to(x.dtype)], dim=1)  # [B, 2w, D]
        return self._temporal(operator[None], stacked) @ basis.T + prediction
