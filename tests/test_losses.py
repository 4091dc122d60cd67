"""Eq. 10 loss terms against hand computations, the FBK gate, the AU pairs and CFG dropout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reactdiff.conditions import Conditions
from reactdiff.losses import (
    LossConfig,
    dm_loss,
    drop_speaker_rows,
    edm_weight,
    fac_loss,
    fbk_loss,
    load_au_pairs,
    training_loss,
)
from reactdiff.noise import karras_sigmas, sample_training_sigmas
from reactdiff.render.faces import coefficient_name


def make_cond(batch: int, w: int = 4, seed: int = 0) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    return Conditions.create(
        torch.randn(batch, w, 58, generator=g),
        torch.randn(batch, w, 3, generator=g),
        torch.randn(batch, w, 58, generator=g),
        torch.full((batch,), 20),
    )


class Recorder:
    """Stand-in denoiser ``D(x) = a * x`` that records its inputs."""

    def __init__(self, a: float = 0.9) -> None:
        self.a = a
        self.calls: list[tuple[torch.Tensor, torch.Tensor, Conditions]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditions) -> torch.Tensor:
        self.calls.append((x, sigma, cond))
        return self.a * x


def lam(s: float) -> float:
    return (s * s + 0.25) / (s * s * 0.25)


# --------------------------------------------------------------------------------------------------
# Hand computations on tiny tensors (batch, frames = 2, dims)
# --------------------------------------------------------------------------------------------------


def test_edm_weight_values() -> None:
    # (sigma^2 + 0.25) / (0.25 sigma^2): sigma = 0.5 -> 0.5 / 0.0625 = 8; sigma = 1 -> 1.25 / 0.25 = 5
    torch.testing.assert_close(edm_weight(torch.tensor([0.5, 1.0])), torch.tensor([8.0, 5.0]))


def test_dm_loss_by_hand() -> None:
    x0 = torch.tensor([[[1.0], [2.0]], [[0.0], [0.0]]])  # [2, 2, 1]
    x0_hat = torch.tensor([[[2.0], [2.0]], [[1.0], [-1.0]]])
    sigma = torch.tensor([0.5, 1.0])
    # sample 0: errors (1, 0) -> mean 0.5, weight 8 -> 4; sample 1: errors (1, 1) -> 1, weight 5 -> 5
    assert dm_loss(x0_hat, x0, sigma).item() == pytest.approx((4.0 + 5.0) / 2)


def test_fbk_loss_by_hand() -> None:
    past = torch.tensor([[[0.0], [1.0]]])  # previous window, last frame 1
    x0 = torch.tensor([[[2.0], [4.0]]])
    x0_hat = torch.tensor([[[1.0], [4.0]]])
    sigma = torch.tensor([0.02])
    # frame velocities real: 2-1=1, 4-2=2; estimate: 1-1=0, 4-1=3 -> errors (-1, 1) -> mean square 1
    # window velocities (x_i - x_{i-2}) / 2: real (2-0)/2=1, (4-1)/2=1.5; est (1-0)/2=0.5, (4-1)/2=1.5
    #   -> errors (-0.5, 0) -> mean square 0.125
    unweighted = fbk_loss(x0_hat, x0, past, sigma, threshold=0.05, weighted=False)
    assert unweighted.item() == pytest.approx(1.125)
    weighted = fbk_loss(x0_hat, x0, past, sigma, threshold=0.05)
    assert weighted.item() == pytest.approx(1.125 * lam(0.02), rel=1e-6)
    # A separate previous window for the estimate (as when sampling from a generated past).
    past_hat = torch.tensor([[[0.0], [0.0]]])
    # frame: est (1, 3) vs real (1, 2) -> errors (0, 1) -> 0.5
    # window: est ((1-0)/2, (4-0)/2) = (0.5, 2) vs real (1, 1.5) -> errors (-0.5, 0.5) -> 0.25
    assert fbk_loss(x0_hat, x0, past, sigma, 0.05, past_hat=past_hat, weighted=False).item() == pytest.approx(
        0.5 + 0.25
    )


def test_fac_loss_by_hand() -> None:
    x0 = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # [1, 2 frames, 3 coefficients]
    x0_hat = torch.tensor([[[1.0, 1.0, 3.0], [1.0, 0.0, 0.0]]])
    pairs = np.array([[0, 1], [1, 2]])
    # frame 0: d01 real -1, est 0 -> 1; d12 real -1, est -2 -> 1
    # frame 1: d01 real 0, est 1 -> 1; d12 real 0, est 0 -> 0      => mean over 4 = 0.75
    assert fac_loss(x0_hat, x0, pairs).item() == pytest.approx(0.75)
    assert fac_loss(x0_hat, x0, pairs, sigma=torch.tensor([1.0])).item() == pytest.approx(0.75 * 5)
    # FaceVerse units: a per-dimension scale multiplies both; the means cancel in the differences.
    scale = torch.tensor([2.0, 1.0, 3.0])
    mean = torch.tensor([5.0, -1.0, 0.3])
    direct = fac_loss(x0_hat * scale + mean, x0 * scale + mean, pairs)
    torch.testing.assert_close(fac_loss(x0_hat, x0, pairs, scale=scale), direct)
    # scaled+shifted x0 frames (7, 1, 9.3), (5, -1, 0.3); estimate (7, 0, 9.3), (7, -1, 0.3):
    # frame 0: d01 6 vs 7 -> 1, d12 -8.3 vs -9.3 -> 1; frame 1: d01 6 vs 8 -> 4, d12 equal -> 0
    assert direct.item() == pytest.approx((1 + 1 + 4 + 0) / 4)


def test_terms_vanish_when_prediction_equals_target() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 16, 58, generator=g)
    past = torch.randn(6, 16, 58, generator=g)
    sigma = torch.full((6,), 0.011)
    pairs = load_au_pairs()["all"]
    assert dm_loss(x0.clone(), x0, sigma).item() == 0.0
    assert fbk_loss(x0.clone(), x0, past, sigma, threshold=1.0).item() == 0.0
    assert fac_loss(x0.clone(), x0, pairs, sigma=sigma).item() == 0.0


# --------------------------------------------------------------------------------------------------
# FBK gate
# --------------------------------------------------------------------------------------------------


def test_fbk_threshold_is_fifth_from_last_karras_sigma() -> None:
    cfg = LossConfig()
    # Karras et al. eq. 5 with i = 45 of N = 50, written out independently of reactdiff.noise.
    lo, hi, rho = 0.01 ** (1 / 7), 80.0 ** (1 / 7), 7.0
    by_hand = (hi + 45 / 49 * (lo - hi)) ** rho
    assert cfg.fbk_threshold == pytest.approx(by_hand, rel=1e-6)
    assert cfg.fbk_threshold == pytest.approx(float(karras_sigmas(50)[-6]), rel=1e-6)
    # The last five steps of the schedule (before the final 0) are exactly those at or below it.
    steps = karras_sigmas(50)[:-1]
    assert int((steps <= cfg.fbk_threshold).sum()) == 5


def test_fbk_gate_off_at_high_noise_on_at_low_noise() -> None:
    g = torch.Generator().manual_seed(1)
    x0, past = torch.randn(4, 8, 58, generator=g), torch.randn(4, 8, 58, generator=g)
    x0_hat = (x0 + 0.1 * torch.randn(4, 8, 58, generator=g)).requires_grad_(True)
    thr = LossConfig().fbk_threshold
    high = fbk_loss(x0_hat, x0, past, torch.full((4,), 5.0), thr)
    assert high.item() == 0.0
    high.backward()
    assert torch.count_nonzero(x0_hat.grad) == 0  # exactly no contribution, gradient included
    low = fbk_loss(x0_hat, x0, past, torch.full((4,), thr), thr)
    assert low.item() > 0
    # Mixed batch: the gated-in rows' terms summed over the whole batch size.
    sigma = torch.tensor([thr, 0.5, 0.02, 80.0])
    mixed = fbk_loss(x0_hat, x0, past, sigma, thr)
    rows = [
        fbk_loss(x0_hat[i : i + 1], x0[i : i + 1], past[i : i + 1], sigma[i : i + 1], thr) for i in (0, 2)
    ]
    assert mixed.item() == pytest.approx(sum(r.item() for r in rows) / 4, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# AU pairs and FAC
# --------------------------------------------------------------------------------------------------


def test_au_pairs_shipped_with_the_package() -> None:
    pairs = load_au_pairs()
    sizes = {k: len(v) for k, v in pairs.items()}
    assert sizes == {"symmetric": 20, "co_occurring": 30, "mutually_exclusive": 58, "all": 108}
    assert pairs["all"].dtype == np.int64 and pairs["all"].min() >= 0 and pairs["all"].max() < 52
    # Table 17 lists mouthFrownLeft/Right (29, 30) as symmetric and as mutually exclusive; eq. 9 sums
    # over the three sets, so the pair counts twice and the other 106 once.
    distinct = {tuple(sorted(p)) for p in pairs["all"].tolist()}
    assert len(distinct) == 107
    assert [29, 30] in pairs["symmetric"].tolist() and [29, 30] in pairs["mutually_exclusive"].tolist()
    named = {
        group: {(coefficient_name(a), coefficient_name(b)) for a, b in pairs[group].tolist()}
        for group in sizes
    }
    # Every symmetric pair is a left/right twin; spot checks of Table 17's other two columns, by name.
    for left, right in named["symmetric"]:
        assert left.endswith("Left") and right == left[: -len("Left")] + "Right"
    assert {("jawLeft", "jawRight"), ("noseSneerLeft", "noseSneerRight")} <= named["symmetric"]
    assert {("cheekSquintLeft", "mouthSmileLeft"), ("browOuterUpRight", "eyeLookUpRight")} <= named[
        "co_occurring"
    ]
    assert {("jawOpen", "mouthClose"), ("mouthClose", "tongueOut")} <= named["mutually_exclusive"]


def test_fac_covers_all_108_pairs() -> None:
    pairs = load_au_pairs()["all"]
    g = torch.Generator().manual_seed(2)
    x0, x0_hat = torch.randn(3, 5, 58, generator=g), torch.randn(3, 5, 58, generator=g)
    loop = np.mean(
        [
            ((x0_hat[..., i] - x0_hat[..., j]) - (x0[..., i] - x0[..., j])).pow(2).mean().item()
            for i, j in pairs.tolist()
        ]
    )
    assert fac_loss(x0_hat, x0, pairs).item() == pytest.approx(loop, rel=1e-5)
    # Each coefficient counts once per pair it belongs to: a unit offset on coefficient k alone costs
    # (number of pairs containing k) / 108; coefficients outside every pair (and the pose) cost nothing.
    counts = np.bincount(pairs.ravel(), minlength=58)
    for k in (0, 2, 26, 31, 51, 54):
        bumped = x0.clone()
        bumped[..., k] += 1.0
        assert fac_loss(bumped, x0, pairs).item() == pytest.approx(counts[k] / 108, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# training_loss
# --------------------------------------------------------------------------------------------------


def test_training_loss_draws_and_feeds_the_estimate() -> None:
    x0 = torch.randn(5, 4, 58, generator=torch.Generator().manual_seed(3))
    cond = make_cond(5)
    rec = Recorder()
    out = training_loss(
        rec, x0, cond, LossConfig(cfg_drop_prob=0.0), generator=torch.Generator().manual_seed(9)
    )
    # The documented draw order: sigma from the cosine density, then eps, from the same generator.
    g = torch.Generator().manual_seed(9)
    sigma = sample_training_sigmas(5, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x, sig, seen = rec.calls[0]
    torch.testing.assert_close(sig, sigma)
    torch.testing.assert_close(x, x0 + sigma[:, None, None] * eps)
    assert torch.equal(seen.past, cond.past) and seen.speaker_mask.tolist() == [1.0] * 5
    # Every term is computed on the denoised estimate.
    est = rec.a * x
    thr = LossConfig().fbk_threshold
    torch.testing.assert_close(out["dm"], dm_loss(est, x0, sigma))
    torch.testing.assert_close(out["fbk"], fbk_loss(est, x0, cond.past, sigma, thr))
    torch.testing.assert_close(out["fac"], fac_loss(est, x0, load_au_pairs()["all"], sigma=sigma))
    torch.testing.assert_close(out["loss"], out["dm"] + out["fbk"] + 1e-4 * out["fac"])


def test_lambda_scales_only_fac() -> None:
    # float64 so that the 1e-4 * fac difference is resolved exactly enough.
    x0 = torch.randn(4, 4, 58, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = {}
    for lam_ in (0.0, 1e-4, 1.0):
        cfg = LossConfig(fac_weight=lam_, cfg_drop_prob=0.0)
        results[lam_] = training_loss(
            Recorder(), x0, make_cond(4), cfg, generator=torch.Generator().manual_seed(0)
        )
    for key in ("dm", "fbk", "fac"):
        assert results[0.0][key].item() == results[1.0][key].item() == results[1e-4][key].item()
    fac = results[1.0]["fac"].item()
    assert fac > 0
    assert results[1.0]["loss"].item() - results[0.0]["loss"].item() == pytest.approx(fac, rel=1e-5)
    assert results[1e-4]["loss"].item() - results[0.0]["loss"].item() == pytest.approx(1e-4 * fac, rel=1e-6)


def test_disabled_priors_report_zero() -> None:
    x0 = torch.randn(64, 4, 58, generator=torch.Generator().manual_seed(5))
    cond = make_cond(64)
    full = training_loss(Recorder(), x0, cond, LossConfig(), generator=torch.Generator().manual_seed(6))
    assert full["fbk"].item() > 0 and full["fac"].item() > 0  # 64 draws: some land below the gate
    for use_fbk, use_fac in [(False, True), (True, False), (False, False)]:
        cfg = LossConfig(use_fbk=use_fbk, use_fac=use_fac)
        out = training_loss(Recorder(), x0, cond, cfg, generator=torch.Generator().manual_seed(6))
        assert out["dm"].item() == full["dm"].item()
        assert (out["fbk"].item() == 0.0) != use_fbk
        assert (out["fac"].item() == 0.0) != use_fac
        expected = out["dm"] + (full["fbk"] if use_fbk else 0) + (1e-4 * full["fac"] if use_fac else 0)
        torch.testing.assert_close(out["loss"], expected)


def test_cfg_drop_probability() -> None:
    n = 2000
    dropped = drop_speaker_rows(make_cond(n, w=2), 0.1, torch.Generator().manual_seed(7)).speaker_mask
    frac = 1 - dropped.mean().item()
    assert abs(frac - 0.1) < 0.03
    # Through training_loss: what the denoiser is given.
    rec = Recorder()
    training_loss(
        rec, torch.zeros(n, 2, 58), make_cond(n, w=2), LossConfig(), torch.Generator().manual_seed(8)
    )
    frac = 1 - rec.calls[0][2].speaker_mask.mean().item()
    assert abs(frac - 0.1) < 0.03
    # Rows that came in dropped stay dropped; p = 0 and p = 1 are exact.
    cond = make_cond(10).with_speaker_mask(torch.tensor([0.0] * 5 + [1.0] * 5))
    assert drop_speaker_rows(cond, 0.0).speaker_mask.tolist() == [0.0] * 5 + [1.0] * 5
    assert drop_speaker_rows(cond, 1.0).speaker_mask.sum().item() == 0


def test_fbk_gate_fraction_under_the_training_density() -> None:
    # With the cosine density, P(sigma <= threshold) = (t(threshold) - t_min) / (t_max - t_min),
    # t(s) = 2/pi atan(s / 0.5): the share of training samples the FBK prior sees.
    thr = LossConfig().fbk_threshold
    t = lambda s: 2 / math.pi * math.atan(s / 0.5)  # noqa: E731
    expected = (t(thr) - t(0.01)) / (t(80.0) - t(0.01))
    sigma = sample_training_sigmas(200_000, generator=torch.Generator().manual_seed(0))
    assert (sigma <= thr).float().mean().item() == pytest.approx(expected, abs=0.002)
