"""ReactDiff's training objective, paper eq. 10: ``L = L_dm + L_fbk + lambda * L_fac``.

Every term is computed on the denoised estimate ``x0_hat = D(x0 + sigma * eps, sigma, cond)`` of the
EDM denoiser (:class:`reactdiff.model.Denoiser`), never on the raw network output. The paper writes
eqs. 7-9 in score space; with EDM the model's score is ``(D(x; sigma) - x) / sigma^2`` and the target's
is ``(x0 - x) / sigma^2``, so a score error is a denoising error divided by ``sigma^2``. Each term below is
that score-space quantity rewritten on ``x0_hat``:

- ``L_dm`` (eq. 7): EDM-weighted denoising error, ``lambda(sigma) = (sigma^2 + s^2) / (sigma s)^2``
  with ``s = sigma_data`` (the weighting under which it is score matching with unit-variance targets).
- ``L_fbk`` (eq. 8): frame-to-frame velocities and the window-level velocity ``(x_i - x_{i-w}) / w`` of
  the estimate matched to those of the real reaction, only at late denoising steps (the gate below).
- ``L_fac`` (eq. 9): differences between the coefficients of each of the 108 facial action unit pairs
  (20 symmetric, 30 co-occurring, 58 mutually exclusive) of the estimate matched to those of the data.

Reductions. The paper sums norms; here every term is a mean over its elements (frames x coefficients,
velocities x coefficients, frames x pairs) and over the batch. The element counts of the three terms are
within a factor of two of each other, so the relative weighting of eq. 10 is kept up to that factor, and
the values do not grow with ``w``. By default (``LossConfig.weight_priors``) the two priors carry the same
``lambda(sigma)`` as ``L_dm``: it is what the score-space form implies, and without it a prior on
``x0_hat`` would act mostly at high noise, where estimates are blurry means, and vanish at the late steps
that it is meant to shape.

Normalisation. The model sees coefficients normalised per dimension (zero mean, unit std), and the FAC
pair differences are computed on those normalised tensors by default: a difference in normalised units
still ties the two coefficients of a pair together, and every pair then counts on the same scale whatever
the spread of its coefficients. Passing ``scale`` (the per-dimension std ``[58]``) computes them in
FaceVerse units instead; the means cancel in a difference of differences, so only the scale is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reactdiff.conditions import Conditions
from reactdiff.config import Params
from reactdiff.layout import N_EXPRESSION
from reactdiff.noise import SIGMA_DATA, late_step_threshold, sample_training_sigmas

__all__ = [
    "AU_PAIR_GROUPS",
    "LossConfig",
    "load_au_pairs",
    "edm_weight",
    "dm_loss",
    "fbk_loss",
    "fac_loss",
    "drop_speaker_rows",
    "training_loss",
]

AU_PAIR_GROUPS = ("symmetric", "co_occurring", "mutually_exclusive")

Denoiser = Callable[[Tensor, Tensor, Conditions], Tensor]
"""``denoiser(x [batch, w, 58], sigma [batch], cond) -> x0 estimate [batch, w, 58]``."""

_SHIPPED = Params()  # the defaults of params.yaml (lambda and the train: section's loss keys)


@dataclass
class LossConfig:
    """Which terms of eq. 10 are on and how they are weighted.

    - ``fac_weight``: lambda of eq. 10 (paper: 1e-4); scales only the FAC term.
    - ``fbk_last_steps`` / ``sampling_steps``: FBK applies at noise levels at or below the largest of the
      last ``fbk_last_steps`` levels of a ``sampling_steps`` Karras schedule (paper: last 5 of 50).
    - ``cfg_drop_prob``: per-sample probability of dropping the speaker conditions (classifier-free
      guidance training).
    - ``fac_scale``: optional per-dimension std ``[58]`` to compute FAC in FaceVerse units.
    - ``weight_priors``: multiply FBK and FAC by the EDM weight ``lambda(sigma)`` like ``L_dm``.
    """

    use_fbk: bool = _SHIPPED.train.use_fbk
    use_fac: bool = _SHIPPED.train.use_fac
    fac_weight: float = _SHIPPED.fac_weight
    fbk_last_steps: int = _SHIPPED.train.fbk_last_steps
    sampling_steps: int = _SHIPPED.train.fbk_schedule_steps
    cfg_drop_prob: float = _SHIPPED.train.cfg_drop_prob
    fac_scale: Sequence[float] | None = None
    weight_priors: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.cfg_drop_prob <= 1.0:
            raise ValueError(f"cfg_drop_prob must be in [0, 1], got {self.cfg_drop_prob}")
        if self.fac_weight < 0:
            raise ValueError(f"fac_weight (lambda) must be >= 0, got {self.fac_weight}")
        if self.fbk_last_steps < 1 or self.sampling_steps < 1:
            raise ValueError("fbk_last_steps and sampling_steps must be >= 1")

    @property
    def fbk_threshold(self) -> float:
        """Largest noise level at which the FBK prior applies."""
        return late_step_threshold(self.sampling_steps, self.fbk_last_steps)


# --------------------------------------------------------------------------------------------------
# Facial action unit pairs
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _read_pairs(path: str | None) -> dict[str, np.ndarray]:
    if path is None:
        text = resources.files("reactdiff").joinpath("resources", "au_pairs.json").read_text()
        source = "reactdiff/resources/au_pairs.json"
    else:
        text = Path(path).read_text()
        source = path
    raw = json.loads(text)
    out: dict[str, np.ndarray] = {}
    for group in AU_PAIR_GROUPS:
        if group not in raw:
            raise KeyError(f"{source}: missing the {group!r} pair list")
        arr = np.asarray(raw[group], dtype=np.int64).reshape(-1, 2)
        if arr.min(initial=0) < 0 or arr.max(initial=0) >= N_EXPRESSION:
            raise ValueError(
                f"{source}: {group} pair index outside the {N_EXPRESSION} expression coefficients"
            )
        if np.any(arr[:, 0] == arr[:, 1]):
            raise ValueError(f"{source}: {group} has a pair of a coefficient with itself")
        out[group] = arr
    out["all"] = np.concatenate([out[g] for g in AU_PAIR_GROUPS])
    for arr in out.values():
        arr.setflags(write=False)  # shared by the cache
    return out


def load_au_pairs(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The facial action unit pairs of the FAC prior (paper Table 17) as int64 index arrays ``[n, 2]``.

    Keys: ``symmetric`` (20), ``co_occurring`` (30), ``mutually_exclusive`` (58) and ``all`` (their
    concatenation, 108). Table 17 lists mouthFrownLeft/Right both as symmetric and as mutually
    exclusive, so that pair counts twice in ``all``, as in eq. 9's sum over the three sets. Indices point
    into the 52 expression coefficients, which are also dims 0..51 of the 58-dim coefficient vector.
    The default is the copy shipped inside the package (``reactdiff/resources/au_pairs.json``, read with
    ``importlib.resources``); the arrays are read-only.
    """
    return _read_pairs(None if path is None else str(path))


# --------------------------------------------------------------------------------------------------
# Loss terms
# --------------------------------------------------------------------------------------------------


def edm_weight(sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """EDM loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2``."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dm_loss(x0_hat: Tensor, x0: Tensor, sigma: Tensor) -> Tensor:
    """Denoising loss (eq. 7 in EDM form): ``mean_b lambda(sigma_b) * mean_{t,d} (x0_hat - x0)^2``.

    ``x0_hat``, ``x0``: ``[batch, w, 58]``; ``sigma``: ``[batch]``. Returns a scalar.
    """
    per_sample = (x0_hat - x0).pow(2).flatten(1).mean(dim=1)
    return (edm_weight(sigma) * per_sample).mean()


def fbk_loss(
    x0_hat: Tensor,
    x0: Tensor,
    past: Tensor,
    sigma: Tensor,
    threshold: float,
    past_hat: Tensor | None = None,
    weighted: bool = True,
) -> Tensor:
    """Facial behavioural kinematics prior (eq. 8), gated to late denoising steps.

    ``x0_hat``, ``x0``: current window ``[batch, w, 58]`` (estimate and real); ``past``: the real
    previous window ``[batch, w, 58]``; ``past_hat``: the previous window the estimate continues from,
    which in training is the real past window itself (it is what the network is conditioned on, as when
    sampling it is conditioned on the window it generated before), so it defaults to ``past``.

    Velocities of a sequence ``y`` (estimate: ``[past_hat, x0_hat]``, real: ``[past, x0]``):

    - frame to frame: ``y_i - y_{i-1}`` for the ``w`` frames of the current window, the first one being
      the step from the last frame of the previous window;
    - window level: ``(y_i - y_{i-w}) / w``, each current frame against the same position in the
      previous window.

    Per sample: ``mean (v_hat - v)^2`` over frame-to-frame velocities plus the same over window-level ones,
    times ``lambda(sigma)`` when ``weighted``. Only samples with ``sigma <= threshold`` contribute; the sum
    is divided by the whole batch size, which estimates ``E_sigma[1(sigma <= threshold) * loss]`` (the
    term of the expected objective) rather than re-normalising by the few gated samples. Returns a scalar;
    exactly 0 (no gradient) when no sample is gated in.
    """
    if past_hat is None:
        past_hat = past
    w = x0.shape[1]
    est = torch.cat([past_hat[:, -1:], x0_hat], dim=1)
    real = torch.cat([past[:, -1:], x0], dim=1)
    frame = (est.diff(dim=1) - real.diff(dim=1)).pow(2).flatten(1).mean(dim=1)
    window = (((x0_hat - past_hat) - (x0 - past)) / w).pow(2).flatten(1).mean(dim=1)
    per_sample = frame + window
    if weighted:
        per_sample = per_sample * edm_weight(sigma)
    gate = sigma <= threshold
    # torch.where (not a product) so a gated-off row contributes an exact 0 and no gradient.
    return torch.where(gate, per_sample, torch.zeros_like(per_sample)).sum() / x0.shape[0]


def fac_loss(
    x0_hat: Tensor,
    x0: Tensor,
    pairs: Tensor | np.ndarray,
    sigma: Tensor | None = None,
    scale: Tensor | Sequence[float] | None = None,
) -> Tensor:
    """Facial action constraint (eq. 9): pairwise coefficient differences of estimate vs data.

    For every pair ``(i, j)`` of ``pairs`` ``[P, 2]`` (all 108 in training):
    ``d_hat = x0_hat[..., i] - x0_hat[..., j]`` and ``d = x0[..., i] - x0[..., j]``; per sample the mean of
    ``(d_hat - d)^2`` over frames and pairs, times ``lambda(sigma)`` when ``sigma`` ``[batch]`` is given,
    averaged over the batch. ``scale`` ``[58]`` multiplies the coefficients first (FaceVerse units; see
    the module docstring). ``x0_hat``, ``x0``: ``[batch, w, 58]``. Returns a scalar.
    """
    idx = torch.tensor(np.asarray(pairs), dtype=torch.long, device=x0.device)
    if idx.ndim != 2 or idx.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2], got {tuple(idx.shape)}")
    if scale is not None:
        scale_t = torch.as_tensor(scale, dtype=x0.dtype, device=x0.device)
        x0_hat, x0 = x0_hat * scale_t, x0 * scale_t
    d_hat = x0_hat[..., idx[:, 0]] - x0_hat[..., idx[:, 1]]  # [batch, w, P]
    d = x0[..., idx[:, 0]] - x0[..., idx[:, 1]]
    per_sample = (d_hat - d).pow(2).flatten(1).mean(dim=1)
    if sigma is not None:
        per_sample = per_sample * edm_weight(sigma)
    return per_sample.mean()


# --------------------------------------------------------------------------------------------------
# Training objective
# --------------------------------------------------------------------------------------------------


def drop_speaker_rows(cond: Conditions, prob: float, generator: torch.Generator | None = None) -> Conditions:
    """Classifier-free guidance dropout: each row's speaker conditions are dropped with probability ``prob``.

    Rows already dropped stay dropped. Draws ``[batch]`` uniforms from ``generator`` on its device (CPU
    when ``None``), so a seeded CPU generator gives the same drops on any device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    keep = torch.rand(cond.batch_size, generator=generator, device=gen_device) >= prob
    mask = cond.speaker_mask.to(torch.bool) & keep.to(cond.speaker_mask.device)
    return cond.with_speaker_mask(mask.to(cond.speaker_mask.dtype))


def training_loss(
    denoiser: Denoiser,
    x0: Tensor,
    cond: Conditions,
    cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Eq. 10 on one batch: ``{"loss": dm + fbk + lambda * fac, "dm": ..., "fbk": ..., "fac": ...}``.

    ``x0``: clean current windows ``[batch, w, 58]`` (normalised); ``cond``: their conditions, with
    ``cond.past`` the real previous window. Draws, in this order from ``generator`` (a CPU generator, or
    the global CPU RNG when ``None``; the draws are then moved to ``x0``'s device): noise levels from the
    cosine density (:func:`reactdiff.noise.sample_training_sigmas`), the noise ``eps``, and the speaker
    dropout. A disabled prior is reported as an exact 0 and contributes nothing. ``fac`` is reported
    without lambda.
    """
    batch, device = x0.shape[0], x0.device
    sigma = sample_training_sigmas(batch, generator=generator, device=device).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
    cond = drop_speaker_rows(cond, cfg.cfg_drop_prob, generator)

    x0_hat = denoiser(x0 + sigma[:, None, None] * eps, sigma, cond)
    zero = x0_hat.new_zeros(())
    dm = dm_loss(x0_hat, x0, sigma)
    fbk = (
        fbk_loss(x0_hat, x0, cond.past, sigma, cfg.fbk_threshold, weighted=cfg.weight_priors)
        if cfg.use_fbk
        else zero
    )
    fac = (
        fac_loss(
            x0_hat,
            x0,
            load_au_pairs()["all"],
            sigma=sigma if cfg.weight_priors else None,
            scale=cfg.fac_scale,
        )
        if cfg.use_fac
        else zero
    )
    return {"loss": dm + fbk + cfg.fac_weight * fac, "dm": dm, "fbk": fbk, "fac": fac}
