"""ReactDiff network and EDM denoiser: shapes, preconditioning, speaker causality, conditioning, training."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reactdiff.losses import LossConfig, dm_loss, training_loss
from reactdiff.model import (
    PRESETS,
    Conditions,
    Denoiser,
    NetworkConfig,
    _TimeConv,
    build_denoiser,
    channel_major_convolutions,
    count_parameters,
    network_config,
)
from reactdiff.noise import karras_sigmas
from reactdiff.prior import WindowPrior
from reactdiff.samplers import sample
from reactdiff.training.checkpointing import load_denoiser, load_optimizer_state
from reactdiff.training.distributed import DistInfo
from reactdiff.training.loop import _resume_state

AUDIO = 12
W = 16


def make_cond(
    batch: int, seed: int = 0, audio_dim: int = AUDIO, frame_index: int = 40, history: int = 0
) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    return Conditions.create(
        speaker_face=torch.randn(batch, history + W, 58, generator=g),
        speaker_audio=torch.randn(batch, history + W, audio_dim, generator=g),
        past=torch.randn(batch, W, 58, generator=g),
        frame_index=torch.full((batch,), frame_index, dtype=torch.long),
    )


def scramble(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, including the zero-initialised output layers.

    A fresh network outputs exactly 0 (zero-initialised head, attention outputs and second convs), which
    would make every dependence test vacuous; after this every input path carries signal.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def demo(**overrides: object) -> Denoiser:
    torch.manual_seed(0)
    return scramble(build_denoiser("demo", AUDIO, **overrides)).eval()


def with_speaker(cond: Conditions, face: torch.Tensor, audio: torch.Tensor) -> Conditions:
    return Conditions(face, audio, cond.past, cond.frame_index, cond.speaker_mask)


# --------------------------------------------------------------------------------------------------
# Shapes, presets, configuration
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3, 200])
def test_demo_shapes(batch: int) -> None:
    d = demo()
    x = torch.randn(batch, W, 58)
    with torch.no_grad():
        out = d(x, torch.full((batch,), 1.3), make_cond(batch))
        raw = d.network(x, torch.zeros(batch), make_cond(batch))
    assert out.shape == (batch, W, 58) and raw.shape == (batch, W, 58)
    assert torch.isfinite(out).all()


def test_demo_parameter_count() -> None:
    n = count_parameters(build_denoiser("demo", AUDIO))
    print(f"demo preset: {n:,} parameters (audio_dim={AUDIO})")
    assert 50_000 < n < 1_000_000


def test_paper_preset_size_and_forward() -> None:
    torch.manual_seed(0)
    d = build_denoiser("paper", 768)
    n = count_parameters(d)
    print(f"paper preset: {n / 1e6:.2f}M parameters (paper Table 16: 83.95M)")
    assert 80e6 <= n <= 88e6
    with torch.no_grad():
        out = d(torch.randn(2, W, 58), torch.tensor([0.3, 20.0]), make_cond(2, audio_dim=768))
    assert out.shape == (2, W, 58) and torch.isfinite(out).all()


def test_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*\\(levels-1\\)"):
        NetworkConfig(frames=18, channel_mults=(1, 2, 4))
    with pytest.raises(ValueError, match="unknown NetworkConfig field"):
        network_config("demo", chanels=8)
    with pytest.raises(ValueError, match="unknown network preset"):
        network_config("huge")
    with pytest.raises(ValueError, match="attn_levels"):
        NetworkConfig(channel_mults=(1, 2), attn_levels=(2,))
    with pytest.raises(ValueError, match="speaker_delays"):
        NetworkConfig(speaker_delays=-1)
    cfg = network_config("demo", audio_dim=AUDIO, use_frame_index=False)
    assert NetworkConfig(**cfg.to_dict()) == cfg  # lists from YAML/JSON come back as tuples
    assert set(PRESETS) >= {"demo", "paper"}


def test_wrong_condition_shape_is_a_clear_error() -> None:
    d = demo()
    cond = make_cond(2)
    bad = Conditions(
        cond.speaker_face, cond.speaker_audio[:, :, :5], cond.past, cond.frame_index, cond.speaker_mask
    )
    with pytest.raises(ValueError, match="speaker_audio has shape"):
        d(torch.randn(2, W, 58), torch.ones(2), bad)


def test_conditions_helpers() -> None:
    a, b = make_cond(2, seed=1), make_cond(3, seed=2)
    both = a.cat(b.drop_speaker())
    assert both.batch_size == 5
    assert both.speaker_mask.tolist() == [1, 1, 0, 0, 0]
    assert torch.equal(both.index(slice(2, 5)).past, b.past)
    rep = a.repeat_interleave(3)
    assert rep.batch_size == 6 and torch.equal(rep.speaker_face[3], a.speaker_face[1])
    assert torch.equal(a.index(1).frame_index, a.frame_index[1:2])
    assert a.to("cpu").speaker_face.device.type == "cpu"
    mixed = a.cat(b.with_speaker_mask(torch.zeros(3, dtype=torch.bool)))
    assert mixed.speaker_mask.dtype == torch.float32 and mixed.speaker_mask.tolist() == [1, 1, 0, 0, 0]
    # No history given: the past window's mean stands for it, and stays None through the helpers.
    torch.testing.assert_close(a.listener_history, a.past.mean(dim=1))
    assert a.history is None and a.index(1).history is None and both.history is None
    given = dataclasses.replace(b, history=torch.randn(3, 58))
    joined = a.cat(given)
    torch.testing.assert_close(joined.history, torch.cat([a.past.mean(dim=1), given.history]))
    assert torch.equal(given.repeat_interleave(2).history[1], given.history[0])


# --------------------------------------------------------------------------------------------------
# EDM preconditioning
# --------------------------------------------------------------------------------------------------


class _Probe(nn.Module):
    """Stand-in network ``F(x_in, c_noise) = 3 x_in + c_noise`` that records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.config = NetworkConfig()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, cond: object) -> torch.Tensor:
        self.seen.append((x_in, c_noise))
        return 3 * x_in + c_noise[:, None, None]


@pytest.mark.parametrize(
    "sigma, c_skip, c_out, c_in, c_noise",
    [
        # sigma^2 + 0.25 = 0.5: c_skip = 0.25/0.5, c_out = 0.25/sqrt(0.5), c_in = 1/sqrt(0.5), ln(0.5)/4
        (0.5, 0.5, 0.3535533906, 1.4142135624, -0.1732867951),
        # sigma^2 + 0.25 = 4.25
        (2.0, 0.0588235294, 0.4850712501, 0.4850712501, 0.1732867951),
        (0.01, 0.9996001599, 0.0099980006, 1.9996001200, -1.1512925465),
    ],
)
def test_edm_coefficients(sigma: float, c_skip: float, c_out: float, c_in: float, c_noise: float) -> None:
    d = Denoiser(_Probe())
    got = d.precondition(torch.tensor([sigma], dtype=torch.float64))
    for value, want in zip(got, (c_skip, c_out, c_in, c_noise), strict=True):
        assert value.item() == pytest.approx(want, rel=1e-8)


def test_denoiser_composes_preconditioning() -> None:
    probe = _Probe()
    d = Denoiser(probe)
    x = torch.randn(2, W, 58, dtype=torch.float64)
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = d(x, sigma, None)
    c_skip, c_out, c_in, c_noise = (c[:, None, None] for c in d.precondition(sigma))
    torch.testing.assert_close(probe.seen[0][0], c_in * x)
    torch.testing.assert_close(probe.seen[0][1], torch.log(sigma) / 4)
    torch.testing.assert_close(out, c_skip * x + c_out * (3 * c_in * x + c_noise))
    # A scalar sigma applies to every row; sigma = 0 returns x itself (c_skip = 1, c_out = 0).
    torch.testing.assert_close(d(x, 0.5, None)[0], out[0])
    assert torch.equal(d(x, 0.0, None), x)


# --------------------------------------------------------------------------------------------------
# Speaker conditioning: causality and dropping
# --------------------------------------------------------------------------------------------------

THREE_LEVELS = dict(channel_mults=(1, 2, 2), res_blocks=2, attn_levels=(0, 1, 2))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        THREE_LEVELS,
        dict(speaker_history=8),
        dict(THREE_LEVELS, speaker_history=5),
        dict(speaker_history=8, speaker_delays=9),
    ],
    ids=["demo", "three-levels", "history", "three-levels-history", "history-delays"],
)
def test_speaker_causality_is_exact(overrides: dict) -> None:
    d = demo(**overrides)
    history = overrides.get("speaker_history", 0)
    cond = make_cond(3, history=history)
    x, sigma = torch.randn(3, W, 58), torch.tensor([0.1, 1.0, 10.0])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        base = d(x, sigma, cond)
        for t in (0, 3, 7, 8, 12, 14):
            s = history + t  # speaker position of window frame t
            face, audio = cond.speaker_face.clone(), cond.speaker_audio.clone()
            face[:, s + 1 :] += 5 * torch.randn(face[:, s + 1 :].shape, generator=g)
            audio[:, s + 1 :] += 5 * torch.randn(audio[:, s + 1 :].shape, generator=g)
            out = d(x, sigma, with_speaker(cond, face, audio))
            past_frames = (out - base)[:, : t + 1].abs().max().item()
            future_frames = (out - base)[:, t + 1 :].abs().max().item()
            assert past_frames <= 1e-6, f"speaker frames > {t} changed output frames <= {t}"
            assert future_frames > 1e-3, "the perturbation should reach the later frames"
            # Non-vacuous: the speaker at frame t itself does move the output at frame t.
            face_t = cond.speaker_face.clone()
            face_t[:, s] += 3.0
            moved = (d(x, sigma, with_speaker(cond, face_t, cond.speaker_audio)) - base)[:, t]
            assert moved.abs().max().item() > 1e-3
    if history:
        # The history is seen: the speaker before the window moves the window's first frame.
        face_h = cond.speaker_face.clone()
        face_h[:, 0] += 3.0
        with torch.no_grad():
            moved = (d(x, sigma, with_speaker(cond, face_h, cond.speaker_audio)) - base)[:, 0]
        assert moved.abs().max().item() > 1e-3
        with pytest.raises(ValueError, match="speaker frames before the window"):
            d(x, sigma, make_cond(3))


def test_speaker_delay_line_starts_as_the_plain_tokens() -> None:
    # Zero-initialised, the delay line adds nothing: training starts from the paper's network.
    plain = demo(speaker_history=4)
    delayed = build_denoiser("demo", AUDIO, speaker_history=4, speaker_delays=5).eval()
    missing, unexpected = delayed.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["network.tokens.delays.bias", "network.tokens.delays.weight"]
    assert unexpected == []
    cond = make_cond(3, history=4)
    x, sigma = torch.randn(3, W, 58), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.equal(delayed(x, sigma, cond), plain(x, sigma, cond))
        delayed.network.tokens.delays.weight.fill_(0.1)
        assert not torch.allclose(delayed(x, sigma, cond), plain(x, sigma, cond))


def test_dropped_speaker_output_ignores_speaker_inputs() -> None:
    d = demo()
    cond = make_cond(4)
    x, sigma = torch.randn(4, W, 58), torch.full((4,), 0.8)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    cond = cond.with_speaker_mask(mask)
    other = with_speaker(cond, torch.randn(4, W, 58) * 7, torch.full((4, W, AUDIO), float("nan")))
    other_keep = with_speaker(cond, torch.randn(4, W, 58) * 7, torch.randn(4, W, AUDIO) * 7)
    with torch.no_grad():
        base = d(x, sigma, cond)
        out = d(x, sigma, other)
        out_keep = d(x, sigma, other_keep)
        all_dropped = d(x, sigma, cond.drop_speaker())
        all_dropped_other = d(x, sigma, other.drop_speaker())
    # Dropped rows are bit-identical even when the speaker inputs are NaN; kept rows do change.
    assert torch.equal(out[1::2], base[1::2])
    assert torch.isfinite(out[1::2]).all()
    assert (out_keep[0::2] - base[0::2]).abs().max() > 1e-3
    assert torch.equal(all_dropped, all_dropped_other)
    assert torch.equal(all_dropped[1::2], base[1::2])


@pytest.mark.parametrize(
    "switches, face_matters, audio_matters",
    [
        (dict(use_speaker_face=False), False, True),
        (dict(use_speaker_audio=False), True, False),
        (dict(use_speaker_face=False, use_speaker_audio=False), False, False),
    ],
)
def test_speaker_ablation_switches(switches: dict, face_matters: bool, audio_matters: bool) -> None:
    d = demo(**switches)
    cond = make_cond(2)
    x, sigma = torch.randn(2, W, 58), torch.ones(2)
    with torch.no_grad():
        base = d(x, sigma, cond)
        face = d(x, sigma, with_speaker(cond, cond.speaker_face + 3, cond.speaker_audio))
        audio = d(x, sigma, with_speaker(cond, cond.speaker_face, cond.speaker_audio + 3))
    assert (not torch.equal(face, base)) == face_matters
    assert (not torch.equal(audio, base)) == audio_matters


# --------------------------------------------------------------------------------------------------
# Other conditions
# --------------------------------------------------------------------------------------------------


def test_frame_index_switch() -> None:
    x, sigma = torch.randn(2, W, 58), torch.ones(2)
    for use, depends in [(False, False), (True, True)]:
        d = demo(use_frame_index=use)
        with torch.no_grad():
            a = d(x, sigma, make_cond(2, frame_index=15))
            b = d(x, sigma, make_cond(2, frame_index=500))
        assert (not torch.equal(a, b)) == depends
        if depends:
            assert (a - b).abs().max() > 1e-3


def test_past_window_changes_output() -> None:
    d = demo()
    cond = make_cond(2)
    x, sigma = torch.randn(2, W, 58), torch.ones(2)
    other = Conditions(
        cond.speaker_face, cond.speaker_audio, cond.past + 1, cond.frame_index, cond.speaker_mask
    )
    with torch.no_grad():
        assert (d(x, sigma, cond) - d(x, sigma, other)).abs().max() > 1e-3


def test_listener_history_changes_output() -> None:
    d = demo()
    cond = make_cond(2)
    x, sigma = torch.randn(2, W, 58), torch.ones(2)
    other = dataclasses.replace(cond, history=cond.past.mean(dim=1) + 1)
    with torch.no_grad():
        torch.testing.assert_close(
            d(x, sigma, cond), d(x, sigma, dataclasses.replace(cond, history=cond.past.mean(dim=1)))
        )
        assert (d(x, sigma, cond) - d(x, sigma, other)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="listener_history has shape"):
        d(x, sigma, dataclasses.replace(cond, history=torch.zeros(2, 5)))


def test_rows_are_independent_and_deterministic() -> None:
    d = demo()
    cond = make_cond(5)
    x, sigma = torch.randn(5, W, 58), torch.linspace(0.05, 30, 5)
    with torch.no_grad():
        full = d(x, sigma, cond)
        single = torch.cat([d(x[i : i + 1], sigma[i : i + 1], cond.index(i)) for i in range(5)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)
    # The same seed builds the same model, which gives the same output.
    torch.manual_seed(3)
    a = build_denoiser("demo", AUDIO)
    torch.manual_seed(3)
    b = build_denoiser("demo", AUDIO)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    scramble(a, 1), scramble(b, 1)
    with torch.no_grad():
        assert torch.equal(a.eval()(x, sigma, cond), b.eval()(x, sigma, cond))


def test_fresh_network_starts_at_the_skip_path() -> None:
    # Zero-initialised head: F = 0, so D = c_skip x before training (the EDM starting point).
    d = build_denoiser("demo", AUDIO)
    x, sigma = torch.randn(2, W, 58), torch.tensor([0.5, 2.0])
    c_skip = d.precondition(sigma)[0][:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(d(x, sigma, make_cond(2)), c_skip * x)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(use_frame_index=False),
        dict(use_speaker_face=False, use_speaker_audio=False),
        dict(attn_levels=()),
        dict(speaker_delays=5),
    ],
    ids=["demo", "no-frame-index", "no-speaker", "no-attention", "delays"],
)
def test_every_parameter_is_used(overrides: dict) -> None:
    # Distributed data parallel training fails on parameters that never receive a gradient.
    d = demo(**overrides).train()
    out = d(torch.randn(3, W, 58), torch.tensor([0.1, 1.0, 10.0]), make_cond(3))
    out.square().mean().backward()
    unused = [name for name, p in d.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_backward() -> None:
    d = demo().cuda().train()
    cond = make_cond(64).to("cuda")
    out = training_loss(d, torch.randn(64, W, 58, device="cuda"), cond, LossConfig())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in d.parameters())


# --------------------------------------------------------------------------------------------------
# Inference: checkpoints of the channels-first network, prepared conditions, lower precision
# --------------------------------------------------------------------------------------------------

CHANNELS_FIRST = Path(__file__).parent / "data" / "channels_first_denoiser.pt"


def _fixture_denoiser(case: dict) -> Denoiser:
    d = build_denoiser("demo", AUDIO, **case["overrides"])
    d.prior = WindowPrior(W, 58)  # replaced by the fitted one the state holds
    d.load_state_dict(case["state"])
    return d.eval()


@pytest.mark.parametrize("case", ["demo", "three_levels"])
def test_checkpoints_of_the_channels_first_network_give_their_outputs(case: str) -> None:
    """The fixture holds the state and the outputs of the network as it was before it went channels-last
    (``nn.Conv1d`` weights, per-frame norms over ``[batch, channels, frames]``): a fitted prior, scrambled
    weights, speaker history and delay taps in ``three_levels``, rows with the speaker dropped, noise levels
    from 0.002 to 80. Its checkpoints load, and give the same estimates up to float rounding."""
    data = torch.load(CHANNELS_FIRST, weights_only=True)[case]
    assert data["state"]["network.conv_in.weight"].ndim == 3  # really the old layout
    d = _fixture_denoiser(data)
    cond = Conditions(**data["cond"])
    with torch.no_grad():
        out = d(data["x"], data["sigma"], cond)
    torch.testing.assert_close(out, data["output"], atol=1e-5, rtol=1e-5)
    assert (
        data["output"] - d.prior.skip(data["x"], data["sigma"], cond.past, cond.history)
    ).abs().max() > 0.1


@pytest.mark.parametrize("causal, stride", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_a_temporal_conv_is_conv1d_with_its_weights_in_tap_major_columns(causal: bool, stride: int) -> None:
    """``_TimeConv`` of channels-last frames equals ``F.conv1d`` of the channels-first ones, padded on
    both sides or on the left only, with the same seed's ``nn.Conv1d`` weights reordered tap-major."""
    torch.manual_seed(3)
    conv = _TimeConv(5, 7, causal=causal, stride=stride)
    torch.manual_seed(3)
    reference = nn.Conv1d(5, 7, 3, stride=stride)
    weight = reference.weight.detach()  # [cout, cin, tap]
    torch.testing.assert_close(conv.weight.detach(), weight.transpose(1, 2).reshape(7, 15), rtol=0, atol=0)
    x = torch.randn(2, 8, 5)
    padded = F.pad(x.transpose(1, 2), (2, 0) if causal else (1, 1))
    expected = F.conv1d(padded, weight, reference.bias.detach(), stride=stride).transpose(1, 2)
    torch.testing.assert_close(conv(x), expected)


CHANNEL_MAJOR = Path(__file__).parent / "data" / "channel_major_checkpoint.pt"


def test_a_checkpoint_from_before_the_tap_major_layout_samples_and_resumes_as_it_did() -> None:
    """The fixture is a training checkpoint that the network wrote while its convolution weights had
    ``nn.Conv1d``'s (channel, tap) columns (``_TimeConv`` version 1, commit dbc0f06), with inputs and the
    outputs it gave. Its weights and EMA weights load into the tap-major layout and give those outputs,
    and Adam's moments follow them: the resumed step is the old layout's step, reordered."""
    payload = torch.load(CHANNEL_MAJOR, weights_only=True)
    data = payload["fixture"]
    cond = Conditions(**data["cond"])
    for use_ema in (True, False):
        d = load_denoiser(CHANNEL_MAJOR, device="cpu", use_ema=use_ema)
        with torch.no_grad():
            torch.testing.assert_close(
                d(data["x"], data["sigma"], cond), data["output"], atol=1e-5, rtol=1e-5
            )
    old_layout = channel_major_convolutions(d, payload["model"])
    assert d.network.conv_in in old_layout and len(old_layout) == sum(
        isinstance(m, _TimeConv) and m.kernel > 1 for m in d.modules()
    )
    assert channel_major_convolutions(d, d.state_dict()) == []
    assert channel_major_convolutions(d, dict(d.state_dict())) == []  # no metadata: today's layout
    fingerprint = payload["config_fingerprint"]
    assert _resume_state(CHANNEL_MAJOR, fingerprint, 10, True, DistInfo()) is not None

    optimizer = torch.optim.Adam(d.parameters(), lr=1e-3)
    load_optimizer_state(optimizer, payload["optimizer"], d, payload["model"])
    # The old layout's step, on conv_in alone: its stored weight, moments and a gradient.
    index = [name for name, _ in d.named_parameters()].index("network.conv_in.weight")
    old_weight = nn.Parameter(payload["model"]["network.conv_in.weight"].clone())
    old = torch.optim.Adam([old_weight], lr=1e-3)
    old.load_state_dict(
        {
            "state": {0: copy.deepcopy(payload["optimizer"]["state"][index])},
            "param_groups": [{**payload["optimizer"]["param_groups"][0], "params": [0]}],
        }
    )
    conv = d.network.conv_in
    gradient = torch.randn_like(old_weight)
    old_weight.grad = gradient
    old.step()
    for p in d.parameters():
        p.grad = torch.zeros_like(p)
    conv.weight.grad = conv.tap_major(gradient)
    optimizer.step()
    torch.testing.assert_close(conv.weight.detach(), conv.tap_major(old_weight.detach()))


def test_prepared_conditions_give_the_same_estimates_and_batch_like_conditions() -> None:
    d = demo(speaker_history=4)
    cond = make_cond(3, history=4)
    cond = dataclasses.replace(cond, speaker_mask=torch.tensor([1.0, 0.0, 1.0]), history=torch.randn(3, 58))
    x, sigma = torch.randn(3, W, 58), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        prepared = d.prepare(cond)
        assert d.prepare(prepared) is prepared
        assert torch.equal(d(x, sigma, prepared), d(x, sigma, cond))
        assert torch.equal(d(x, sigma, prepared.drop_speaker()), d(x, sigma, cond.drop_speaker()))
        both = prepared.cat(prepared.drop_speaker())
        x2, sigma2 = torch.cat([x, x]), torch.cat([sigma, sigma])
        torch.testing.assert_close(d(x2, sigma2, both), d(x2, sigma2, cond.cat(cond.drop_speaker())))
        # The prior's operator of a noise level met by every row is kept, and gives the estimate of the
        # skip path and output scale computed afresh.
        level = torch.full((3,), 0.7)
        first = d(x, level, prepared)
        assert list(prepared.operators) == [(pytest.approx(0.7), torch.float32)]
        assert torch.equal(d(x, level, prepared), first)
        torch.testing.assert_close(first, d(x, level, cond))
        # Conditions another network prepared are prepared afresh: its context never runs through this one.
        other = demo(speaker_history=4)
        theirs = other.prepare(cond)
        mine = d.prepare(theirs)
        assert mine is not theirs and mine.owner is d and mine.conditions is cond
        assert torch.equal(d(x, sigma, theirs), d(x, sigma, cond))


def test_a_window_computes_its_block_modulations_once_for_every_level_of_its_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows of one window share the frame index, and a solver's step gives them one noise level: the
    blocks' AdaGN modulations are then one row per level, computed for the whole schedule in one product
    when ``sample`` prepares the window, shared by guidance's unconditional rows, and equal to the
    per-row ones the network computes without them."""
    d = demo()
    products: list[int] = []
    modulations = d.network.modulations
    monkeypatch.setattr(d.network, "modulations", lambda emb: products.append(len(emb)) or modulations(emb))
    cond = make_cond(3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sample(d, (3, W, 58), cond, steps=6, guidance_scale=2.0, generator=generator, device="cpu")
        assert products == [6]  # six positive levels in one product, none at the steps

        levels = karras_sigmas(6)
        prepared = d.prepare(cond, levels)
        cache = prepared.context.levels
        assert sorted(cache.levels) == sorted(float(s) for s in levels[:-1])
        dropped = prepared.drop_speaker()  # guidance's unconditional rows: the same levels and operators
        assert dropped.context.levels is cache and dropped.operators is prepared.operators
        assert prepared.cat(dropped).context.levels is cache
        x = torch.randn(3, W, 58, generator=generator)
        for sigma in levels[:-1]:
            cached = d(x, sigma, prepared)
            assert products == [6, 6]
            # Conditions used once (a training batch) get the modulations of every row.
            torch.testing.assert_close(cached, d(x, sigma, cond), atol=1e-5, rtol=1e-5)
            assert products == [6, 6, 3]
            del products[2:]
        # A level not in the schedule is computed when met, once; rows at different levels go per row.
        d(x, 0.3, prepared)
        d(x, 0.3, prepared)
        assert products == [6, 6, 1]
        d(x, torch.tensor([0.3, 0.5, 0.7]), prepared)
        assert products == [6, 6, 1, 3]
        # At sigma = 0 the estimate is x itself, which no level is needed for.
        assert torch.equal(d(x, torch.zeros(3), prepared), x) and products == [6, 6, 1, 3, 3]

    # Rows of different frame indices (a server's batch of conversations) keep per-row modulations.
    mixed = dataclasses.replace(cond, frame_index=torch.tensor([40, 41, 40]))
    assert d.prepare(mixed, levels).context.levels is None
    assert (
        d.prepare(cond).context.levels.shared_with(d.prepare(make_cond(3, frame_index=41)).context.levels)
        is None
    )


def test_guidance_runs_the_speaker_free_trunk_once_for_its_conditional_and_unconditional_rows() -> None:
    """Guidance evaluates ``[cond; uncond]`` rows with the same ``x``, level, frame index and past: the
    encoder and the first middle block, which never see the speaker, run on the conditional rows alone
    and their features serve both halves; the estimates are those of the whole batch run row by row."""
    d = demo(speaker_history=4)
    rows_in_trunk: list[int] = []
    d.network.in_lstm.register_forward_hook(lambda module, args, out: rows_in_trunk.append(len(args[0])))
    cond = make_cond(3, history=4)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, W, 58, generator=generator)
    with torch.no_grad():
        prepared = d.prepare(cond)
        both = prepared.cat(prepared.drop_speaker())
        sigma = torch.full((6,), 0.8)
        shared = d(torch.cat([x, x]), sigma, both)
        assert rows_in_trunk == [3]
        whole = d(torch.cat([x, x]), sigma, cond.cat(cond.drop_speaker()))  # plain conditions: every row
        assert rows_in_trunk == [3, 6]
        torch.testing.assert_close(shared, whole, atol=1e-5, rtol=1e-5)
        assert (shared[:3] - shared[3:]).abs().max() > 1e-2  # the halves do differ by their speaker
        # Halves that differ in x or in level run the trunk on every row.
        d(torch.cat([x, x + 1]), sigma, both)
        d(torch.cat([x, x]), torch.cat([sigma[:3], sigma[3:] * 2]), both)
        assert rows_in_trunk == [3, 6, 6, 6]
        # A guided sampler's every step shares the trunk.
        rows_in_trunk.clear()
        sample(d, (3, W, 58), cond, steps=4, guidance_scale=2.0, generator=generator, device="cpu")
        assert rows_in_trunk == [3, 3, 3, 3]


def test_bf16_network_stays_close_to_fp32_and_keeps_the_precise_parts() -> None:
    data = torch.load(CHANNELS_FIRST, weights_only=True)["three_levels"]
    d = _fixture_denoiser(data)
    cond = Conditions(**data["cond"])
    freqs = d.network.noise_fourier.freqs.clone()
    with torch.no_grad():
        reference = d(data["x"], data["sigma"], cond)
        d.compute_in(torch.bfloat16)
        out = d(data["x"], data["sigma"], cond)
    assert d.network.dtype == torch.bfloat16 and d.network.conv_in.weight.dtype == torch.bfloat16
    assert out.dtype == torch.float32
    # The skip path and the noise embedding's frequencies are not rounded.
    assert d.prior.eigvecs.dtype == torch.float64
    assert d.network.noise_fourier.freqs.dtype == torch.float32 and torch.equal(
        d.network.noise_fourier.freqs, freqs
    )
    # At sigma = 0.002 the estimate is x itself plus a correction scaled by sigma: bf16 cannot move it.
    torch.testing.assert_close(out[0], reference[0], atol=1e-4, rtol=0)
    # Elsewhere the network's share is rounded to bf16's 8 bits: within 1.5 % of the estimates' spread
    # (measured: 0.7 %).
    assert (out - reference).abs().max() < 0.015 * reference.std()
    assert not torch.equal(out, reference)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_overfits_a_tiny_set() -> None:
    """Eight windows, 200 Adam steps of the full eq.-10 loss.

    At high noise ``x`` says almost nothing about ``x0``, so the fresh model's error there is the full
    signal energy and the only way down is to recognise each window from its conditions (past window,
    frame index, speaker) and memorise it: that error must fall more than 5x. At low noise EDM's
    weighting makes the untrained ``D = x`` already score about 1 (error ~ sigma^2), and learning to beat
    it takes thousands of steps, so the total training loss falls less; it must still fall clearly.
    """
    torch.manual_seed(0)
    n = 8
    t = torch.arange(W, dtype=torch.float32) / W
    freq = torch.rand(n, 1, 58) * 2 + 0.25
    phase = torch.rand(n, 1, 58) * 2 * math.pi
    x0 = 0.5 * torch.sin(2 * math.pi * freq * t[None, :, None] + phase)
    past = 0.5 * torch.sin(2 * math.pi * freq * (t[None, :, None] - 1) + phase)
    cond = Conditions.create(torch.randn(n, W, 58), torch.randn(n, W, AUDIO), past, torch.arange(n) * 16 + 31)
    d = build_denoiser("demo", AUDIO)
    cfg = LossConfig()

    def high_noise_error() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(7)
            errs = []
            for s in (10.0, 50.0):
                sigma = torch.full((n,), s)
                errs.append(dm_loss(d(x0 + s * torch.randn(x0.shape, generator=g), sigma, cond), x0, sigma))
            return float(torch.stack(errs).mean())

    def eval_loss() -> float:
        reps = torch.arange(n).repeat(16)
        with torch.no_grad():
            return float(
                training_loss(d, x0[reps], cond.index(reps), cfg, torch.Generator().manual_seed(11))["loss"]
            )

    d.eval()
    before_high, before = high_noise_error(), eval_loss()
    d.train()
    opt = torch.optim.Adam(d.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        loss = training_loss(d, x0, cond, cfg, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    d.eval()
    after_high, after = high_noise_error(), eval_loss()
    print(
        f"high-noise error {before_high:.3f} -> {after_high:.3f}; training loss {before:.3f} -> {after:.3f}"
    )
    assert after_high < before_high / 5
    assert after < 0.85 * before
