"""The ReactDiff denoising network and its EDM denoiser wrapper (paper sec. 4.1, appendix A.1, Fig. 7).

Contract. :class:`Denoiser` is the one object samplers and losses use::

    denoiser(x [batch, w, 58], sigma [batch], cond: Conditions) -> x0 estimate [batch, w, 58]

It owns the preconditioning around the raw network :class:`ReactionUNet`, whose output ``F`` is never
used directly by anything else: EDM's (Karras et al. 2022) with the scalar ``c_skip`` and ``c_out``
replaced by the Wiener filter of the train listener windows and the factor of its error covariance
(:mod:`reactdiff.prior`), so that the network corrects a linear denoiser instead of being one.

Network (``ReactionUNet``), following appendix A.1:

- a one-layer LSTM on the (scaled, noised) input frames, whose initial ``(h, c)`` is a linear map of the
  previous listener window (its last frame and its mean) and the listener's mean since the conversation
  began (see :class:`_PastState`);
- a temporal 1D U-Net over the ``w`` frames (channels-last: see *Speed*), residual blocks with adaptive
  group normalisation driven by ``MLP(Fourier(c_noise)) + MLP(sinusoid(h))`` (diffusion step and the
  global frame index ``h`` of the window's last frame);
- cross-attention blocks in which listener frames (queries) attend to speaker face + audio tokens
  (keys/values) under a causal mask, plus a learned null token that is always visible;
- a one-layer LSTM on the output frames, initial state again from the past window, then a per-frame
  linear head to the 58 coefficients.

Speaker causality is exact: the output at frame ``t`` never depends on speaker frames ``> t``. The noised
window ``x`` is generated jointly, so it may (and should) be seen in both directions; the speaker must not
leak from the future. The network therefore has two regimes:

- before the first cross-attention block (the encoder half and the start of the middle block) features
  depend on ``x``, the noise level, ``h`` and the past window only, so convolutions are symmetric and see
  neighbouring frames on both sides;
- from the first cross-attention block on (the decoder half) every temporal operation is causal: convs
  are left-padded, normalisation is per frame (a plain GroupNorm would average over all frames, future
  ones included), and upsampling is nearest-neighbour. A frame ``j`` at level ``l`` (time factor
  ``2**l``) covers full-resolution frames ``[j * 2**l, (j + 1) * 2**l - 1]``; its cross-attention only sees
  speaker frames ``<= j * 2**l`` (the *start* of its span). Nearest upsampling hands coarse frame ``j``
  to the fine frames of its span, all of which start at or after ``j * 2**l``, and causal convs only look
  back, so the invariant "a frame depends on speaker frames up to its start" survives to the output.
  With ``speaker_history = H > 0`` the speaker inputs also hold the ``H`` frames before the window
  (``[batch, H + w, ...]``, window frame ``t`` at position ``H + t``) and the same rule applies to
  positions: a query sees positions ``<= H + j * 2**l``, never a speaker frame after its own.
  The decoder still sees ``x`` bidirectionally through the encoder's skip connections.

Speed. Activations are channels-last (``[batch, frames, channels]``), so every convolution, projection
and norm is one kernel over ``batch * frames`` rows (a kernel-3 convolution is one matrix product of
the frames' windows, :class:`_TimeConv`); at 16 frames this is what the CPU runs fastest (one call of
20 rows, 2 threads of a Xeon, prepared conditions: demo preset 7.3 -> 3.8 ms, paper preset 111 -> 83 ms
in fp32, 40 ms in bf16). What a window's conditions give every noise level (speaker keys and values,
the LSTMs' initial states, the frame index's embedding, the prior's prediction) is computed once per
window by :meth:`Denoiser.prepare`, which :func:`reactdiff.samplers.sample` calls before its first step;
what a noise level gives every row of the window (the blocks' AdaGN modulations, the prior's operator)
is computed once per level, the modulations for the whole schedule in one product
(:class:`LevelModulations`, :meth:`reactdiff.prior.WindowPrior.step_operator`). Measured on 2 threads
of an AMD EPYC (Zen 4), one call of 20 rows, interleaved in one process: the per-level modulations took
the paper preset in bf16 from 92.9 to 83.4 ms, the tap-major windows of :class:`_TimeConv` 5-7 % more.
Guidance's conditional and unconditional rows share ``x``, the level and the past, and differ only from
the first cross-attention on: the speaker-free trunk runs on the conditional rows alone
(``trunk_rows``; paper preset in bf16, 10 + 10 rows: 77.3 -> 67.9 ms per call).
:meth:`Denoiser.compute_in` casts the network to bf16 or fp16 for sampling (the prior stays float64).
``torch.compile`` was measured and is not used: on a CPU it compiled for 20-40 s and gave nothing
(paper preset in bf16 44 ms against 40 ms per call eager, demo 3.8 against 3.5 ms).

Classifier-free guidance: a row with ``speaker_mask == 0`` (or a model built with both speaker switches
off) has every speaker token masked out of attention and its speaker inputs replaced by zeros before
projection, so only the learned null token is attended to and the output does not depend on the speaker
inputs at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reactdiff.conditions import Conditions
from reactdiff.layout import N_COEFFS
from reactdiff.noise import SIGMA_DATA
from reactdiff.prior import WindowPrior

__all__ = [
    "SKIP_PATHS",
    "channel_major_convolutions",
    "PreparedConditions",
    "WindowContext",
    "NetworkConfig",
    "PRESETS",
    "network_config",
    "ReactionUNet",
    "Denoiser",
    "build_denoiser",
    "count_parameters",
]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class NetworkConfig:
    """Hyperparameters of :class:`ReactionUNet`.

    ``channel_mults`` gives one U-Net level per entry (level ``l`` runs at ``frames / 2**l`` frames and
    ``channels * channel_mults[l]`` channels); ``attn_levels`` are the decoder levels with cross-attention
    (the coarsest level's attention sits in the middle block). The ``use_*`` switches are the ablations.
    ``speaker_history``: speaker frames before the window that the cross-attention may also see (0 is
    the paper's eq.: the speaker of the window only). ``speaker_delays``: taps of a causal per-channel
    filter over the speaker tokens (0: none), see :class:`_SpeakerTokens`.
    """

    frames: int = 16
    coeff_dim: int = N_COEFFS
    audio_dim: int = 768
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    res_blocks: int = 1
    attn_levels: tuple[int, ...] = (0, 1)
    attn_heads: int = 2
    emb_dim: int = 64
    lstm_hidden: int = 32
    dropout: float = 0.0
    norm_groups: int = 8
    use_frame_index: bool = True
    use_speaker_face: bool = True
    use_speaker_audio: bool = True
    speaker_history: int = 0
    speaker_delays: int = 0
    fourier_scale: float = 1.0

    def __post_init__(self) -> None:
        # Configs round-trip through YAML/JSON, which turn tuples into lists.
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attn_levels = tuple(sorted({int(a) for a in self.attn_levels}))
        levels = len(self.channel_mults)
        if levels < 1:
            raise ValueError("channel_mults needs at least one level")
        factor = 2 ** (levels - 1)
        if self.frames % factor:
            raise ValueError(
                f"frames={self.frames} is not divisible by 2**(levels-1)={factor}: each of the "
                f"{levels - 1} downsampling steps halves the window; use fewer channel_mults or another w"
            )
        bad = [a for a in self.attn_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attn_levels {bad} outside the {levels} levels 0..{levels - 1}")
        for mult in self.channel_mults:
            width = self.channels * mult
            if width % self.norm_groups:
                raise ValueError(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")
            if width % self.attn_heads:
                raise ValueError(f"channel width {width} is not divisible by attn_heads={self.attn_heads}")
        if self.speaker_history < 0:
            raise ValueError(f"speaker_history must be >= 0, got {self.speaker_history}")
        if self.speaker_delays < 0:
            raise ValueError(f"speaker_delays must be >= 0, got {self.speaker_delays}")
        if self.emb_dim % 2 or self.channels % 2:
            raise ValueError("emb_dim and channels must be even (sinusoidal/Fourier features come in pairs)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        d["attn_levels"] = list(self.attn_levels)
        return d

    @property
    def uses_speaker(self) -> bool:
        return self.use_speaker_face or self.use_speaker_audio


PRESETS: dict[str, dict[str, Any]] = {
    # ~0.28M parameters; a batch-20 forward takes a few milliseconds on 2 CPU cores, so M=10 samples of
    # one window at 50 steps fit the online budget, and it learns something useful in minutes.
    "demo": dict(
        channels=32,
        channel_mults=(1, 2),
        res_blocks=1,
        attn_levels=(0, 1),
        attn_heads=2,
        emb_dim=64,
        lstm_hidden=32,
        dropout=0.0,
        norm_groups=8,
    ),
    # 85.4M parameters with 768-dim wav2vec2 audio features (paper Table 16: 83.95M).
    "paper": dict(
        channels=256,
        channel_mults=(1, 2, 4),
        res_blocks=2,
        attn_levels=(0, 1, 2),
        attn_heads=8,
        emb_dim=1024,
        lstm_hidden=256,
        dropout=0.1,
        norm_groups=32,
    ),
}


def network_config(preset: str, **overrides: Any) -> NetworkConfig:
    """The named preset with ``overrides`` applied (unknown keys are an error)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown network preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in fields(NetworkConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown NetworkConfig field(s) {unknown}; known: {sorted(known)}")
    return NetworkConfig(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _sinusoidal(values: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sinusoidal features of ``values`` ``[batch]`` -> ``[batch, dim]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    args = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero_init(layer: nn.Conv1d | nn.Linear) -> None:
    """Zero weight and bias: the layer adds nothing at first (a residual branch starts as the identity)."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class _FourierFeatures(nn.Module):
    """Random Fourier features of ``c_noise``: ``[batch] -> [batch, dim]`` (EDM / EDM2 noise embedding).

    ``c_noise = log(sigma) / 4`` spans about [-1.2, 1.1] over the sampler's range. Frequencies are
    Gaussian with std ``scale`` (cycles per unit of ``c_noise``): the default 1 (EDM2's bandwidth) keeps
    the embedding smooth in ``sigma``, so what is learnt at one noise level carries to its neighbours;
    EDM's NCSN++ used 16, which a small model trained briefly generalises poorly across. The frequencies
    are a fixed buffer drawn from a private generator, so building a model leaves the global RNG alone.
    """

    freqs: Tensor

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        args = (2 * math.pi) * c_noise.float()[:, None] * self.freqs.float()[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1)

    def _apply(self, fn: Any, recurse: bool = True) -> _FourierFeatures:
        # The frequencies stay float32 when the network is cast to a lower precision: rounded to bf16
        # they would move by up to 0.4 %, a phase error of 0.1 rad at the highest noise levels.
        freqs = self.freqs
        super()._apply(fn, recurse)
        self.freqs = freqs.to(self.freqs.device)
        return self


def _frame_group_norm(x: Tensor, groups: int, eps: float = 1e-5) -> Tensor:
    """Group normalisation of channels-last ``[batch, frames, channels]`` with statistics per frame.

    Each frame's channel groups are normalised on their own, so no frame's output depends on another
    frame: the normalisation is causal (a standard GroupNorm pools statistics over all frames). Each
    (frame, group) being a contiguous row, it is a layer norm over ``batch * frames * groups`` rows,
    which runs about twice as fast as ``group_norm`` on the same ``[batch * frames, channels]``.
    """
    b, t, c = x.shape
    size = c // groups
    return F.layer_norm(x.reshape(b * t * groups, size), (size,), eps=eps).view(b, t, c)


class _FrameNorm(nn.Module):
    """Per-frame group norm with a learned affine: ``[batch, frames, channels]``."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        # [channels, 1]: the shape of the channels-first network's, so its checkpoints load.
        self.weight = nn.Parameter(torch.ones(channels, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[2]
        return torch.addcmul(self.bias.view(c), _frame_group_norm(x, self.groups), self.weight.view(c))


class _TimeConv(nn.Linear):
    """Convolution over the frames of channels-last ``[batch, frames, cin]``: symmetric (``same`` padding)
    or causal (left padding only), with a stride; kernel 1 is a per-frame linear map.

    Why a linear layer: at these sizes (16 frames or fewer, tens to a thousand channels) a oneDNN
    convolution spends more on its set-up than on its arithmetic, while the same product written as one
    matrix multiplication of every output frame's input window ``[batch * frames_out, kernel * cin]``
    with ``weight [cout, kernel * cin]`` is a single GEMM. The window's columns are tap-major (tap ``i``'s
    ``cin`` channels, then tap ``i + 1``'s): it is the concatenation of ``kernel`` shifted views of the
    frames, copied in runs of ``cin`` contiguous values, where ``nn.Conv1d``'s (channel, tap) order needs
    a gather with a stride of ``kernel`` that cost a quarter of the product itself (paper preset in bf16,
    level 0). The weight starts from ``nn.Conv1d``'s values for the same seed, its columns reordered.

    Checkpoints in the earlier layouts load unchanged: ``nn.Conv1d``'s 3-D ``[cout, cin, kernel]`` (the
    channels-first network) and the (channel, tap) columns of this class's version 1, which its state
    dict's metadata records (:func:`channel_major_convolutions`; a state rebuilt without its metadata
    is taken to be of this version).
    """

    _version = 2

    def __init__(self, cin: int, cout: int, causal: bool, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(cin * kernel, cout)
        self.kernel, self.stride, self.causal = kernel, stride, causal
        self.pad = (kernel - 1, 0) if causal else ((kernel - 1) // 2, kernel // 2)
        with torch.no_grad():
            self.weight.copy_(self.tap_major(self.weight))

    def tap_major(self, weight: Tensor) -> Tensor:
        """``[cout, kernel * cin]`` tap-major columns of ``nn.Conv1d``'s ``[cout, cin, kernel]`` weight or
        of its flattening ``[cout, cin * kernel]`` (or of anything kept per element of them)."""
        cout = weight.shape[0]
        return weight.reshape(cout, -1, self.kernel).transpose(1, 2).reshape(cout, -1)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel == 1 and self.stride == 1:
            return super().forward(x)
        padded = F.pad(x, (0, 0, *self.pad))
        frames = (padded.shape[1] - self.kernel) // self.stride + 1
        span = (frames - 1) * self.stride + 1
        # windows[b, j, i * cin + ch] = padded[b, j * stride + i, ch]
        taps = [padded[:, i : i + span : self.stride] for i in range(self.kernel)]
        return super().forward(torch.cat(taps, dim=2))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        weight = state_dict.get(prefix + "weight")
        # A state dict without metadata (one rebuilt as a plain dict) is taken to be of this version.
        if weight is not None and (weight.ndim == 3 or local_metadata.get("version", self._version) < 2):
            state_dict[prefix + "weight"] = self.tap_major(weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def channel_major_convolutions(module: nn.Module, state: Any) -> list[_TimeConv]:
    """The temporal convolutions of ``module`` (a network or a denoiser) whose weights ``state``, a state
    dict of it, holds with ``nn.Conv1d``'s (channel, tap) columns: saved before :class:`_TimeConv`'s
    version 2. Loading reorders their weights; what an optimizer kept per element of them (Adam's
    moments) is reordered by :func:`reactdiff.training.checkpointing.load_optimizer_state`."""
    metadata = getattr(state, "_metadata", None) or {}
    return [
        layer
        for name, layer in module.named_modules()
        if isinstance(layer, _TimeConv) and layer.kernel > 1 and metadata.get(name, {}).get("version", 2) < 2
    ]


class _ResBlock(nn.Module):
    """Residual block with adaptive group normalisation (appendix A.1, Fig. 7a).

    ``out = skip(x) + conv2(dropout(silu(AdaGN(conv1(silu(norm(x))), emb))))`` where
    ``AdaGN(h, emb) = norm(h) * (1 + scale(emb)) + shift(emb)``. ``x``: ``[batch, frames, cin]``.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.groups = groups
        self.norm1 = _FrameNorm(cin, groups)
        self.conv1 = _TimeConv(cin, cout, causal)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _TimeConv(cout, cout, causal)
        _zero_init(self.conv2)
        self.skip = _TimeConv(cin, cout, causal=False, kernel=1) if cin != cout else nn.Identity()

    def modulation(self, emb: Tensor) -> Tensor:
        """AdaGN's ``[scale; shift]`` ``[n, 1, 2 * cout]`` of the block conditioning ``emb``."""
        return self.emb(emb)[:, None]

    def forward(self, x: Tensor, modulation: Tensor) -> Tensor:
        """``modulation``: :meth:`modulation` of the rows' conditioning (one row: the same for all rows)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = modulation.chunk(2, dim=2)
        h = torch.addcmul(shift, _frame_group_norm(h, self.groups), 1 + scale)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class _Attend(NamedTuple):
    """What one cross-attention block reads of the speaker: keys and values ``[batch, heads, 1 + H + w,
    head_dim]`` and the mask ``[batch, 1, frames_l, 1 + H + w]`` (``None``: the null token only)."""

    keys: Tensor
    values: Tensor
    mask: Tensor | None


class _CrossAttention(nn.Module):
    """Listener frames (queries) attend to speaker tokens (keys/values) with a causal mask (Fig. 7b).

    At level ``l`` query frame ``j`` may see the null token and speaker positions ``s <= H + j * 2**l``
    (``H`` = ``history``, the speaker frames before the window); rows whose speaker is dropped see the
    null token only. ``h``: ``[batch, frames_l, channels]``; ``tokens``: ``[batch, 1 + H + w, token_dim]``
    with the null token first.
    """

    causal: Tensor

    def __init__(
        self, channels: int, token_dim: int, heads: int, groups: int, frames: int, level: int, history: int
    ) -> None:
        super().__init__()
        self.heads = heads
        self.groups = groups
        self.frames_l = frames >> level
        self.query_pos = nn.Parameter(torch.zeros(channels, self.frames_l))
        self.norm = _FrameNorm(channels, groups)
        self.q = _TimeConv(channels, channels, causal=False, kernel=1)
        self.kv = nn.Linear(token_dim, 2 * channels)
        self.out = _TimeConv(channels, channels, causal=False, kernel=1)
        _zero_init(self.out)
        starts = history + torch.arange(self.frames_l)[:, None] * (1 << level)
        causal = torch.arange(history + frames)[None, :] <= starts  # [frames_l, H + w]
        self.register_buffer("causal", causal, persistent=False)

    def speaker(self, tokens: Tensor, keep: Tensor) -> _Attend:
        """Keys, values and mask of ``tokens`` for rows ``keep``: the same at every noise level."""
        b = tokens.shape[0]
        heads, dh = self.heads, self.q.out_features // self.heads
        keys, values = self.kv(tokens).view(b, -1, 2, heads, dh).permute(2, 0, 3, 1, 4)  # [b, H, 1+w, dh]
        mask = None  # without speaker tokens only the always-visible null token is left
        if tokens.shape[1] > 1:
            speaker = self.causal[None] & keep[:, None, None]  # [b, t, w]
            null = torch.ones(b, self.frames_l, 1, dtype=torch.bool, device=tokens.device)
            mask = torch.cat([null, speaker], dim=2)[:, None]  # [b, 1, t, 1+w]
        return _Attend(keys, values, mask)

    def forward(self, h: Tensor, attend: _Attend) -> Tensor:
        b, t, c = h.shape
        q = (
            self.q(self.norm(h) + self.query_pos.T).view(b, t, self.heads, -1).transpose(1, 2)
        )  # [b, H, t, dh]
        out = F.scaled_dot_product_attention(q, attend.keys, attend.values, attn_mask=attend.mask)
        return h + self.out(out.transpose(1, 2).reshape(b, t, c))


class _SpeakerTokens(nn.Module):
    """Speaker face + audio -> keys/values tokens ``[batch, 1 + w, dim]``, the learned null token first.

    Per-frame projections of face and audio are summed with a learned position embedding, then one
    causal temporal conv (left padding) lets a token carry the speaker's recent motion; token ``s``
    depends on speaker frames ``<= s`` only, which the attention mask relies on.

    ``speaker_delays = K > 0`` adds a delay line before that conv: a causal depthwise filter of ``K``
    taps, zero at initialisation (the network starts as without it). Why: a listener reacts 0.3-0.6 s
    after the speaker, so what window frame ``t`` should show depends on the speaker near ``t - 10``;
    attention alone must find that frame by position, while a token that carries its own delayed
    copies hands it over at ``t``. Measured on the sample corpus (``speaker_history`` 16, ``K`` 17):
    the peak of the smile cross-correlation with the speaker moved from 16-20 frames to 12, but
    FD_learned and FRDist got worse and varied more across sampling seeds, so it is not the default.
    """

    def __init__(self, cfg: NetworkConfig, dim: int) -> None:
        super().__init__()
        self.use_face, self.use_audio = cfg.use_speaker_face, cfg.use_speaker_audio
        self.face = nn.Linear(cfg.coeff_dim, dim) if self.use_face else None
        self.audio = nn.Linear(cfg.audio_dim, dim) if self.use_audio else None
        self.null = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        if cfg.uses_speaker:  # no unused parameters in the speaker-free ablation (DDP would complain)
            self.pos = nn.Parameter(torch.randn(dim, cfg.speaker_history + cfg.frames) * 0.02)
            self.mix = _TimeConv(dim, dim, causal=True)
            self.norm = nn.LayerNorm(dim)
            self.delays = None
            if cfg.speaker_delays > 0:
                self.delays = nn.Conv1d(dim, dim, cfg.speaker_delays, groups=dim)
                _zero_init(self.delays)

    def forward(self, cond: Conditions, keep: Tensor) -> Tensor:
        b = cond.batch_size
        null = self.null.expand(b, 1, -1)
        if self.face is None and self.audio is None:
            return null
        # Dropped rows get exact zeros (torch.where, not a product, so even non-finite padding cannot
        # leak); their tokens are also masked out of attention, so the null token is all they see.
        row = keep[:, None, None]
        tok = self.pos.T[None].expand(b, -1, -1)
        if self.face is not None:
            face = torch.where(row, cond.speaker_face, torch.zeros((), device=row.device))
            tok = tok + self.face(face)
        if self.audio is not None:
            audio = torch.where(row, cond.speaker_audio, torch.zeros((), device=row.device))
            tok = tok + self.audio(audio)
        h = F.silu(tok)  # [b, H + w, dim]
        if self.delays is not None:
            lagged = F.pad(h.transpose(1, 2), (self.delays.kernel_size[0] - 1, 0))
            h = h + self.delays(lagged).transpose(1, 2)
        tok = tok + self.mix(h)
        return torch.cat([null, self.norm(tok)], dim=1)


class _PastState(nn.Module):
    """Initial LSTM state ``(h0, c0)`` ``[1, batch, hidden]`` from the listener's past.

    The paper initialises the LSTMs' hidden state with the past listener frame (A.1). The map reads the
    past window's last frame (the anchor of the frame-to-frame step into the current window), its
    mean (the level against which the window-level velocity ``(x_i - x_{i-w}) / w`` is measured: its
    average over ``i`` is ``(mean(current) - mean(past)) / w``) and the listener's mean since the
    conversation began (``Conditions.history``: the level the listener returns to).
    """

    def __init__(self, coeff_dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * coeff_dim, 2 * hidden)

    def forward(self, past: Tensor, history: Tensor) -> tuple[Tensor, Tensor]:
        summary = torch.cat([past[:, -1], past.mean(dim=1), history], dim=1)
        h0, c0 = self.proj(summary).chunk(2, dim=1)
        # An LSTM's hidden state is o * tanh(c), so it lives in (-1, 1); the cell state is unbounded.
        return torch.tanh(h0)[None].contiguous(), c0[None].contiguous()


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------


class LevelModulations:
    """The residual blocks' AdaGN modulations of one window at each noise level it is evaluated at.

    A block's scale and shift depend on the noise level and the frame index only, and a sampler's steps
    evaluate every row of a window at the same level: where the rows also share the frame index (one
    conversation's M samples, its guidance rows), they are one row per level, not one per row and step.
    :meth:`fill` computes all the levels of a schedule in one product per block (the paper preset's
    block projections hold 18.9M of its 85.4M weights; read once per window, not once per step).
    ``key``: the frame index the rows share (``None`` without the frame-index conditioning); windows of
    equal keys of one network share one cache (their batch concatenation does).
    """

    def __init__(self, network: ReactionUNet, frame: Tensor | None, key: int | None) -> None:
        self.network, self.frame, self.key = network, frame, key
        self.levels: dict[float, list[Tensor]] = {}

    def fill(self, sigmas: Tensor) -> None:
        """Compute the levels of ``sigmas`` (in the dtype the solver passes them) not met yet; the 0
        that ends a schedule is never evaluated."""
        wanted = {float(s) for s in sigmas.reshape(-1).tolist() if s > 0}
        new = sorted(wanted - self.levels.keys())
        if not new:
            return
        sigma = torch.tensor(new, dtype=sigmas.dtype, device=self.network.head.weight.device)
        frame = None if self.frame is None else self.frame.expand(len(new), -1)
        modulations = self.network.modulations(self.network.embedding(_noise_conditioning(sigma), frame))
        for i, level in enumerate(new):
            self.levels[level] = [m[i : i + 1] for m in modulations]

    def at(self, level: Tensor) -> list[Tensor]:
        """The modulations of noise level ``level`` (one element), for every row."""
        self.fill(level)
        return self.levels[float(level)]

    def shared_with(self, other: LevelModulations | None) -> LevelModulations | None:
        """This cache for the batch concatenation with rows of ``other``'s, when theirs is the same."""
        same = other is not None and other.network is self.network and other.key == self.key
        return self if same else None


class WindowContext(NamedTuple):
    """What :class:`ReactionUNet` derives from a window's :class:`Conditions`, the same at every noise
    level: computed once per window when sampling (:meth:`Denoiser.prepare`), per batch in training.

    ``keep`` ``[B]`` bool (rows whose speaker is seen), ``frame`` ``[B, emb_dim]`` the frame-index part of
    the block conditioning (``None`` without it), ``attend`` one :class:`_Attend` per cross-attention
    block in the order the network runs them, ``in_state`` / ``out_state`` the LSTMs' initial states,
    ``levels`` the per-level block modulations when every row has the same frame index (else ``None``).
    """

    keep: Tensor
    frame: Tensor | None
    attend: tuple[_Attend, ...]
    in_state: tuple[Tensor, Tensor]
    out_state: tuple[Tensor, Tensor]
    levels: LevelModulations | None = None

    def cat(self, other: WindowContext) -> WindowContext:
        """Batch concatenation ``[self; other]`` (the LSTM states have the batch second)."""

        def rows(a: Tensor | None, b: Tensor | None, dim: int = 0) -> Any:
            return None if a is None or b is None else torch.cat([a, b], dim=dim)

        attend = tuple(
            _Attend(*(rows(a, b) for a, b in zip(mine, theirs, strict=True)))
            for mine, theirs in zip(self.attend, other.attend, strict=True)
        )
        in_state = (
            rows(self.in_state[0], other.in_state[0], 1),
            rows(self.in_state[1], other.in_state[1], 1),
        )
        out_state = (
            rows(self.out_state[0], other.out_state[0], 1),
            rows(self.out_state[1], other.out_state[1], 1),
        )
        levels = None if self.levels is None else self.levels.shared_with(other.levels)
        return WindowContext(
            rows(self.keep, other.keep), rows(self.frame, other.frame), attend, in_state, out_state, levels
        )


class ReactionUNet(nn.Module):
    """Raw ReactDiff network ``F``: ``forward(x_in [B, w, 58], c_noise [B], cond) -> [B, w, 58]``.

    ``x_in`` is the preconditioned input ``c_in * x``; see the module docstring for the structure and the
    speaker-causality argument.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.config = cfg
        ch, emb_dim, groups = cfg.channels, cfg.emb_dim, cfg.norm_groups
        widths = [ch * m for m in cfg.channel_mults]
        levels = len(widths)

        self.noise_fourier = _FourierFeatures(ch, cfg.fourier_scale)
        self.noise_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.frame_mlp = (
            nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.use_frame_index
            else None
        )

        self.in_state = _PastState(cfg.coeff_dim, cfg.lstm_hidden)
        self.in_lstm = nn.LSTM(cfg.coeff_dim, cfg.lstm_hidden, batch_first=True)
        self.conv_in = _TimeConv(cfg.coeff_dim + cfg.lstm_hidden, widths[0], causal=False)
        # Without any cross-attention level nothing would read the speaker tokens.
        self.tokens = _SpeakerTokens(cfg, ch) if cfg.attn_levels else None

        def block(cin: int, cout: int, causal: bool) -> _ResBlock:
            return _ResBlock(cin, cout, emb_dim, groups, cfg.dropout, causal)

        def attention(level: int) -> _CrossAttention:
            return _CrossAttention(
                widths[level], ch, cfg.attn_heads, groups, cfg.frames, level, cfg.speaker_history
            )

        # Encoder: speaker-free, symmetric in time.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cur = widths[0]
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.res_blocks):
                blocks.append(block(cur, width, causal=False))
                cur = width
            self.down.append(blocks)
            if level < levels - 1:
                self.downsample.append(_TimeConv(cur, cur, causal=False, stride=2))

        # Middle and decoder: everything after the first cross-attention is causal in time.
        self.mid1 = block(cur, cur, causal=False)
        self.mid_attn = attention(levels - 1) if levels - 1 in cfg.attn_levels else None
        speaker_in = self.mid_attn is not None
        self.mid2 = block(cur, cur, causal=speaker_in)

        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(levels)):
            width = widths[level]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            cin = cur + width  # the level's skip connection is concatenated first
            for _ in range(cfg.res_blocks):
                blocks.append(block(cin, width, causal=speaker_in))
                cin = width
                # The coarsest level's attention lives in the middle block already.
                if level in cfg.attn_levels and level != levels - 1:
                    attns.append(attention(level))
                    speaker_in = True
                else:
                    attns.append(nn.Identity())
            cur = width
            self.up.append(blocks)
            self.up_attn.append(attns)
            if level > 0:
                self.upsample.append(_TimeConv(cur, cur, causal=speaker_in))

        self.out_norm = _FrameNorm(cur, groups)
        self.out_state = _PastState(cfg.coeff_dim, cfg.lstm_hidden)
        self.out_lstm = nn.LSTM(cur, cfg.lstm_hidden, batch_first=True)
        self.head = nn.Linear(cur + cfg.lstm_hidden, cfg.coeff_dim)
        _zero_init(self.head)

    @property
    def dtype(self) -> torch.dtype:
        """The precision the network computes in (its weights'); inputs are cast to it."""
        return self.head.weight.dtype

    def _res_blocks(self) -> list[_ResBlock]:
        """The residual blocks in the order :meth:`forward` runs them."""
        blocks = [cast(_ResBlock, b) for level in self.down for b in cast(nn.ModuleList, level)]
        blocks += [self.mid1, self.mid2]
        return blocks + [cast(_ResBlock, b) for level in self.up for b in cast(nn.ModuleList, level)]

    def embedding(self, c_noise: Tensor, frame: Tensor | None) -> Tensor:
        """The block conditioning ``silu(MLP(Fourier(c_noise)) + MLP(sinusoid(h)))`` ``[n, emb_dim]`` of
        ``c_noise`` ``[n]`` and the frame-index part ``frame`` (:class:`WindowContext`)."""
        emb = self.noise_mlp(self.noise_fourier(c_noise).to(self.dtype))
        return F.silu(emb if frame is None else emb + frame)

    def modulations(self, emb: Tensor) -> list[Tensor]:
        """Every residual block's AdaGN modulation of ``emb``, in the order :meth:`forward` runs them."""
        return [block.modulation(emb) for block in self._res_blocks()]

    def _attentions(self) -> list[_CrossAttention]:
        """The cross-attention blocks in the order :meth:`forward` runs them."""
        blocks = [self.mid_attn] if self.mid_attn is not None else []
        for attns in self.up_attn:
            blocks += [a for a in cast(nn.ModuleList, attns) if isinstance(a, _CrossAttention)]
        return blocks

    def context(self, cond: Conditions, per_level: bool = False) -> WindowContext:
        """What ``cond`` gives every evaluation of the window (see :class:`WindowContext`); ``per_level``:
        with a cache of the block modulations per noise level where the rows share the frame index."""
        cfg = self.config
        cond.validate(cfg.frames, cfg.coeff_dim, cfg.audio_dim, cfg.speaker_history)
        keep = cond.speaker_mask.to(torch.bool)
        if not cfg.uses_speaker:
            keep = torch.zeros_like(keep)
        cond = cond.astype(self.dtype)
        frame = None
        if self.frame_mlp is not None:
            frame = self.frame_mlp(_sinusoidal(cond.frame_index, cfg.channels).to(self.dtype))
        attend: tuple[_Attend, ...] = ()
        if self.tokens is not None:
            tokens = self.tokens(cond, keep)
            attend = tuple(block.speaker(tokens, keep) for block in self._attentions())
        history = cond.listener_history
        levels = None
        if per_level:
            index = cond.frame_index
            if frame is None:
                levels = LevelModulations(self, None, None)
            elif bool((index == index[0]).all()):
                levels = LevelModulations(self, frame[:1], int(index[0]))
        return WindowContext(
            keep, frame, attend, self.in_state(cond.past, history), self.out_state(cond.past, history), levels
        )

    def forward(
        self,
        x_in: Tensor,
        c_noise: Tensor,
        cond: Conditions,
        context: WindowContext | None = None,
        modulations: list[Tensor] | None = None,
        trunk_rows: int | None = None,
    ) -> Tensor:
        """``context``: :meth:`context` of ``cond``, when the caller has it already (a sampler's steps);
        ``modulations``: the blocks' modulations of ``c_noise`` when the caller has them
        (:class:`LevelModulations`). ``trunk_rows = n``: the rows are blocks of ``n`` that differ in
        their speaker only (guidance's conditional and unconditional rows: the same ``x``, level, frame
        index and past), so the speaker-free trunk (encoder and first middle block) runs on the first
        ``n`` rows and its features stand for every block."""
        cfg = self.config
        if x_in.ndim != 3 or x_in.shape[1:] != (cfg.frames, cfg.coeff_dim):
            raise ValueError(f"x must be [batch, {cfg.frames}, {cfg.coeff_dim}], got {tuple(x_in.shape)}")
        b = x_in.shape[0]
        if cond.batch_size != b:
            raise ValueError(f"conditions have batch {cond.batch_size}, x has {b}")
        if context is None:
            context = self.context(cond)
        c_noise = c_noise.reshape(-1).expand(b) if c_noise.numel() == 1 else c_noise.reshape(b)

        rows = b if trunk_rows is None else trunk_rows
        if not 0 < rows <= b or b % rows:
            raise ValueError(f"trunk_rows={trunk_rows} does not split a batch of {b} rows into equal blocks")

        x_in = x_in.to(self.dtype)
        if modulations is None:
            modulations = self.modulations(self.embedding(c_noise, context.frame))
        block = iter(modulations)
        attend = iter(context.attend)

        def trunk(modulation: Tensor) -> Tensor:  # one row per level, or one per row of the batch
            return modulation if len(modulation) == 1 else modulation[:rows]

        # Channels-last throughout ([b, frames, channels]): every layer is a product with frames as rows.
        x_trunk = x_in[:rows]
        in_state = (context.in_state[0][:, :rows], context.in_state[1][:, :rows])
        seq, _ = self.in_lstm(x_trunk, in_state)  # [rows, w, hidden]
        h = self.conv_in(torch.cat([x_trunk, seq], dim=2))  # [rows, w, C]

        skips = []
        for level, blocks in enumerate(self.down):
            for blk in cast(nn.ModuleList, blocks):
                h = blk(h, trunk(next(block)))
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)

        h = self.mid1(h, trunk(next(block)))
        if rows < b:
            h = h.repeat(b // rows, 1, 1)
            skips = [skip.repeat(b // rows, 1, 1) for skip in skips]
        if self.mid_attn is not None:
            h = self.mid_attn(h, next(attend))
        h = self.mid2(h, next(block))

        for i, (blocks, attns) in enumerate(zip(self.up, self.up_attn, strict=True)):
            h = torch.cat([h, skips.pop()], dim=2)
            for blk, attn in zip(cast(nn.ModuleList, blocks), cast(nn.ModuleList, attns), strict=True):
                h = blk(h, next(block))
                if isinstance(attn, _CrossAttention):
                    h = attn(h, next(attend))
            if i < len(self.upsample):
                # Nearest upsampling hands a coarse frame to the fine frames of its own span only.
                h = self.upsample[i](h.repeat_interleave(2, dim=1))

        h = F.silu(self.out_norm(h))  # [b, w, C]
        seq, _ = self.out_lstm(h, context.out_state)
        return self.head(torch.cat([h, seq], dim=2))


# --------------------------------------------------------------------------------------------------
# Preconditioned denoiser
# --------------------------------------------------------------------------------------------------

SKIP_PATHS = ("wiener", "flow")


class Denoiser(nn.Module):
    """Preconditioned denoiser ``D(x, sigma, cond) = skip(x, sigma) + L(sigma) F(c_in x, c_noise, cond)``.

    ``skip`` and ``L`` come from a :class:`reactdiff.prior.WindowPrior` of the listener windows: the
    Wiener filter of the windows and the Cholesky factor of its error covariance, so the network only
    corrects the linear filter, in the directions and by the amounts where the filter can be wrong (the
    prior's docstring has the why). Without a fitted prior the prior is isotropic with variance
    ``sigma_data^2`` and ``D`` is exactly EDM's ``c_skip x + c_out F`` (Karras et al. 2022, Table 1).
    ``c_in = 1 / sqrt(sigma^2 + v)`` with ``v`` the prior's mean variance, ``c_noise = log(sigma) / 4``.

    ``skip="flow"`` replaces the Wiener filter by the end of the prior's probability-flow ODE trajectory
    through ``x`` (:meth:`WindowPrior.flow`): the skip path of a consistency model, a distilled student,
    whose output is a sample rather than a posterior mean.
    """

    def __init__(
        self,
        network: ReactionUNet,
        sigma_data: float = SIGMA_DATA,
        prior: WindowPrior | None = None,
        skip: str = "wiener",
    ) -> None:
        super().__init__()
        if skip not in SKIP_PATHS:
            raise ValueError(f"skip must be one of {SKIP_PATHS}, got {skip!r}")
        self.network = network
        self.sigma_data = float(sigma_data)
        self.skip = skip
        cfg = network.config
        if prior is None:
            prior = WindowPrior.isotropic(cfg.frames, cfg.coeff_dim, self.sigma_data)
        if (prior.frames, prior.dims) != (cfg.frames, cfg.coeff_dim):
            raise ValueError(
                f"the prior models [{prior.frames}, {prior.dims}] windows, the network "
                f"[{cfg.frames}, {cfg.coeff_dim}]"
            )
        self.prior = prior

    @property
    def config(self) -> NetworkConfig:
        return self.network.config

    def precondition(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """EDM's scalar ``(c_skip, c_out, c_in, c_noise)`` for ``sigma_data``, each shaped like ``sigma``.

        These are what the isotropic prior applies; a fitted prior replaces ``c_skip`` and ``c_out`` by
        matrices (:meth:`forward`).
        """
        sd2 = self.sigma_data**2
        total = sigma**2 + sd2
        c_skip = sd2 / total
        c_out = sigma * self.sigma_data * torch.rsqrt(total)
        c_in = torch.rsqrt(total)
        c_noise = _noise_conditioning(sigma)
        return c_skip, c_out, c_in, c_noise

    def compute_in(self, dtype: torch.dtype) -> Denoiser:
        """Cast the network (in place; returns ``self``) to ``dtype`` for sampling.

        The prior stays float64: its skip path must keep the noised input's precision at the lowest
        noise levels, which a bf16 product would round away. Weights cast once, not at every call as
        autocast does, whose per-call casts cost as much as the paper preset's arithmetic on a CPU.
        """
        self.network.to(dtype)
        return self

    def prepare(
        self, cond: Conditions | PreparedConditions, levels: Tensor | None = None
    ) -> PreparedConditions:
        """``cond`` with what every evaluation of its window shares: the network's :class:`WindowContext`
        and the prior's prediction from the past. A sampler prepares once per window (``sample`` does)
        instead of at each of its steps; valid for as long as these weights do not change. ``levels``:
        the noise levels the sampler will evaluate, whose block modulations are computed now, together
        (:class:`LevelModulations`; others are computed when met)."""
        if isinstance(cond, PreparedConditions):
            # Another network's context would run silently through this one (a teacher's, a student's).
            if cond.owner is not self:
                return self.prepare(cond.conditions, levels)
        else:
            cond = self._prepared(cond, per_level=True)
        if levels is not None and cond.context is not None and cond.context.levels is not None:
            cond.context.levels.fill(levels)
        return cond

    def _prepared(self, cond: Conditions, per_level: bool) -> PreparedConditions:
        # A stand-in network (tests) has no context to prepare; it is called with the conditions alone.
        context = self.network.context(cond, per_level) if isinstance(self.network, ReactionUNet) else None
        with torch.autocast(cond.past.device.type, enabled=False):  # see forward: the prior stays precise
            prediction = self.prior.predict(cond.past, cond.listener_history)
        return PreparedConditions(cond, context, prediction, self)

    def forward(
        self, x: Tensor, sigma: Tensor | float, cond: Conditions | PreparedConditions | None
    ) -> Tensor:
        """x0 estimate ``[batch, w, 58]`` of noised ``x`` ``[batch, w, 58]`` at noise level ``sigma``.

        ``sigma`` is ``[batch]`` or a scalar (same level for every row); ``cond``: the window's
        conditions, or what :meth:`prepare` made of them.
        """
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        c_in = torch.rsqrt(sigma**2 + self.prior.variance)[:, None, None]
        prepared, level = None, None
        if cond is None:  # a stand-in network that takes no conditions
            out = self.network(x * c_in, _noise_conditioning(sigma), None)
        else:
            # Conditions met once (training's batches: a level per row) keep nothing per level.
            if isinstance(cond, PreparedConditions):
                prepared = self.prepare(cond)
                # A sampler's step: one level for every row (0, where D = x, is never one).
                if bool((sigma == sigma[0]).all()) and float(sigma[0]) > 0:
                    level = sigma[:1]
            else:
                prepared = self._prepared(cond, per_level=False)
            context, modulations = prepared.context, None
            if context is not None and context.levels is not None and level is not None:
                modulations = context.levels.at(level)
            extra: tuple[Any, ...] = ()
            if context is not None:
                extra = (context, modulations, prepared.trunk_rows(x, sigma))
            out = self.network(x * c_in, _noise_conditioning(sigma), prepared.conditions, *extra)
        # The prior's products are precise linear algebra (a Wiener filter, a Cholesky factor): under
        # mixed precision they would round the skip path by more than the lowest noise levels.
        with torch.autocast(x.device.type, enabled=False):
            prediction = None if prepared is None else prepared.prediction.to(x.dtype)
            if prepared is not None and level is not None:
                operators, key = prepared.operators, (float(level), x.dtype)
                if key not in operators:
                    power = 0.5 if self.skip == "flow" else 1.0
                    operators[key] = self.prior.step_operator(key[0], power).to(x.dtype)
                return self.prior.estimate(x, out.float(), operators[key], cast(Tensor, prediction))
            skip = self.prior.flow if self.skip == "flow" else self.prior.skip
            estimate = skip(x, sigma, prediction=prediction)
            return estimate + self.prior.scale_output(out.float(), sigma).to(x.dtype)


class PreparedConditions:
    """A window's :class:`Conditions` with what the denoiser that prepared them derives once
    (:meth:`Denoiser.prepare`): the network's :class:`WindowContext`, the prior's prediction from the
    past, and the prior's step operators of the noise levels met so far. Guidance can drop the speaker
    and batch them like plain conditions."""

    def __init__(
        self, conditions: Conditions, context: WindowContext | None, prediction: Tensor, owner: Denoiser
    ) -> None:
        self.conditions, self.context, self.prediction, self.owner = conditions, context, prediction, owner
        self.speaker_dropped_from: PreparedConditions | None = None  # what drop_speaker() made this of
        self.pairs: int | None = None  # rows [n, 2n) are rows [0, n) with the speaker dropped
        # WindowPrior.step_operator per noise level (and dtype), filled as a sampler meets them; it
        # depends on the owner's prior alone, so the conditions derived from these share it
        self.operators: dict[tuple[float, torch.dtype], Tensor] = {}

    @property
    def batch_size(self) -> int:
        return self.conditions.batch_size

    def drop_speaker(self) -> PreparedConditions:
        dropped = self.owner.prepare(self.conditions.drop_speaker())
        dropped.speaker_dropped_from, dropped.operators = self, self.operators
        if self.context is not None and dropped.context is not None:  # the same frame index and levels
            dropped.context = dropped.context._replace(levels=self.context.levels)
        return dropped

    def cat(self, other: PreparedConditions) -> PreparedConditions:
        batched = PreparedConditions(
            self.conditions.cat(other.conditions),
            None if self.context is None or other.context is None else self.context.cat(other.context),
            torch.cat([self.prediction, other.prediction]),
            self.owner,
        )
        batched.operators = self.operators
        if other.speaker_dropped_from is self:  # guidance's [cond; uncond]
            batched.pairs = self.batch_size
        return batched

    def trunk_rows(self, x: Tensor, sigma: Tensor) -> int | None:
        """``n`` when these are guidance's ``[cond; uncond]`` of ``n`` rows each and ``x`` and ``sigma``
        repeat their first ``n`` rows (then the network's speaker-free trunk runs on ``n`` rows only)."""
        n = self.pairs
        if n is None or x.shape[0] != 2 * n:
            return None
        same = torch.equal(x[:n], x[n:]) and torch.equal(sigma[:n], sigma[n:])
        return n if same else None


def _noise_conditioning(sigma: Tensor) -> Tensor:
    # sigma = 0 (the end of a sampling schedule) has a zero output scale and D = x; clamping keeps F
    # finite there so that 0 * F does not become NaN.
    return torch.log(sigma.clamp_min(1e-20)) / 4


def build_denoiser(
    preset: str, audio_dim: int, prior: WindowPrior | None = None, **overrides: Any
) -> Denoiser:
    """A fresh :class:`Denoiser` around a :class:`ReactionUNet` of the named preset.

    ``prior``: the :class:`reactdiff.prior.WindowPrior` fitted to the train windows (``None``: EDM's
    isotropic preconditioning).
    """
    return Denoiser(ReactionUNet(network_config(preset, audio_dim=audio_dim, **overrides)), prior=prior)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
