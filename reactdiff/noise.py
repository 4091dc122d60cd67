"""Noise levels of the EDM (Karras et al. 2022) formulation shared by training and sampling.

A noise level is the standard deviation ``sigma`` of the Gaussian noise added to clean data:
``x_sigma = x0 + sigma * eps``. Both the training noise distribution and the sampler's schedule live
here so that the loss gates (the FBK prior's "last steps" of sampling) and the samplers agree.
"""

from __future__ import annotations

import math

import torch

SIGMA_MIN = 0.01
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5


def karras_sigmas(
    n_steps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Karras et al. (2022) eq. 5 noise levels, decreasing, with a final 0 appended.

    Returns ``[n_steps + 1]`` float64-accurate values in float32: ``sigma_max ... sigma_min, 0``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    ramp = torch.linspace(0, 1, n_steps, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    if n_steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(device=device, dtype=torch.float32)


def consistency_sigmas(
    n_steps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``n_steps`` noise levels a consistency model is evaluated at, decreasing, with a final 0.

    The Karras schedule of ``n_steps + 1`` levels without its last, ``sigma_min``: a consistency model is
    the identity there (its boundary condition), so an evaluation at ``sigma_min`` would be wasted.
    Returns ``[n_steps + 1]``: ``sigma_max ... , 0`` (``[sigma_max, 0]`` for one step).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    levels = karras_sigmas(n_steps + 1, sigma_min, sigma_max, rho, device)
    return torch.cat([levels[:-2], levels[-1:]])


def late_step_threshold(
    n_steps: int,
    last_steps: int = 5,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> float:
    """The largest noise level among the last ``last_steps`` denoising steps of an ``n_steps`` schedule.

    The FBK prior is applied only at noise levels at or below this value (paper sec. 4.2: "from t = 5 to
    t = 0"), because at high noise the denoised estimate barely moves and a kinematic constraint there
    pushes samples off the data distribution.
    """
    sigmas = karras_sigmas(n_steps, sigma_min, sigma_max, rho)[:-1]
    index = max(len(sigmas) - last_steps, 0)
    return float(sigmas[index])


def sample_training_sigmas(
    batch: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    sigma_data: float = SIGMA_DATA,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels from the cosine schedule (paper Table 7: "Noise Schedule: Cosine").

    Under the cosine schedule a diffusion time ``t ~ U(0, 1)`` has signal ``cos(pi t / 2)`` and noise
    ``sin(pi t / 2)``, so the equivalent EDM noise level is ``sigma = sigma_data * tan(pi t / 2)``
    (scaled so that t = 1/2 sits at the data scale). ``t`` is drawn uniformly between the times that map
    to ``sigma_min`` and ``sigma_max``, which truncates the density to the sampler's range.

    Returns ``[batch]`` float32 noise levels.
    """
    t_min = 2 / math.pi * math.atan(sigma_min / sigma_data)
    t_max = 2 / math.pi * math.atan(sigma_max / sigma_data)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    t = t_min + u * (t_max - t_min)
    sigma = sigma_data * torch.tan(math.pi * t / 2)
    return sigma.to(device=device, dtype=torch.float32)
