"""What the denoiser conditions on besides the noised window and the noise level (:class:`Conditions`).

One batch of speaker face, speaker audio, the previous listener window, the global frame index, the
classifier-free guidance mask and the listener's running mean; the network (:mod:`reactdiff.model`),
the losses, the samplers' guidance and the online generator all pass it around unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["Conditions"]


@dataclass
class Conditions:
    """Everything the denoiser conditions on besides ``x`` and ``sigma``; all coefficient tensors normalised.

    - ``speaker_face``: ``[batch, H + w, 58]`` speaker 3DMM coefficients of the current window, after the
      ``H`` frames before it (``NetworkConfig.speaker_history``; 0 in the paper's formulation).
    - ``speaker_audio``: ``[batch, H + w, audio_dim]`` speaker audio features aligned to the same frames.
    - ``past``: ``[batch, w, 58]`` the previous listener window (the real one in training, the generated
      one when sampling).
    - ``frame_index``: ``[batch]`` long, global index ``h`` of the window's last frame in the conversation.
    - ``speaker_mask``: ``[batch]`` bool or float; 1 = speaker conditions present, 0 = dropped
      (classifier-free guidance's unconditional input).
    - ``history``: ``[batch, 58]`` the mean of the listener's frames from the conversation's start to the
      window's start; ``None`` stands for the past window's mean (:attr:`listener_history`). One
      previous window does not tell the listener's own level: a chain of windows conditioned on the
      previous one only drifts across the levels of all listeners (:mod:`reactdiff.prior`).
    """

    speaker_face: Tensor
    speaker_audio: Tensor
    past: Tensor
    frame_index: Tensor
    speaker_mask: Tensor
    history: Tensor | None = None

    @classmethod
    def create(
        cls,
        speaker_face: Tensor,
        speaker_audio: Tensor,
        past: Tensor,
        frame_index: Tensor | int,
        speaker_mask: Tensor | None = None,
        history: Tensor | None = None,
    ) -> Conditions:
        """Build conditions with ``speaker_mask`` all ones and ``frame_index`` broadcast to ``[batch]``."""
        batch, device = speaker_face.shape[0], speaker_face.device
        index = torch.as_tensor(frame_index, dtype=torch.long, device=device)
        if index.ndim == 0:
            index = index.expand(batch).clone()
        if speaker_mask is None:
            speaker_mask = torch.ones(batch, device=device)
        return cls(speaker_face, speaker_audio, past, index, speaker_mask, history)

    @property
    def batch_size(self) -> int:
        return self.speaker_face.shape[0]

    @property
    def listener_history(self) -> Tensor:
        """``[batch, 58]``: ``history``, or the past window's mean when it is not given."""
        return self.past.mean(dim=1) if self.history is None else self.history

    def _map(self, fn: Any) -> Conditions:
        mapped: dict[str, Any] = {
            f.name: None if (v := getattr(self, f.name)) is None else fn(v) for f in fields(self)
        }
        return Conditions(**mapped)

    def drop_speaker(self) -> Conditions:
        """The same batch with every row's speaker conditions dropped (``speaker_mask = 0``)."""
        return replace(self, speaker_mask=torch.zeros_like(self.speaker_mask))

    def with_speaker_mask(self, mask: Tensor) -> Conditions:
        """The same batch with ``speaker_mask`` replaced by ``mask`` ``[batch]``."""
        if mask.shape != (self.batch_size,):
            raise ValueError(f"speaker_mask must have shape [{self.batch_size}], got {tuple(mask.shape)}")
        return replace(self, speaker_mask=mask.to(self.speaker_mask.device))

    def cat(self, other: Conditions) -> Conditions:
        """Batch concatenation ``[self; other]``. Masks of different dtypes are concatenated as float."""
        out: dict[str, Any] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "history":
                if a is None and b is None:
                    out[f.name] = None
                    continue
                a, b = self.listener_history, other.listener_history
            if f.name == "speaker_mask" and a.dtype != b.dtype:
                a, b = a.float(), b.float()
            out[f.name] = torch.cat([a, b], dim=0)
        return Conditions(**out)

    def to(self, device: torch.device | str) -> Conditions:
        return self._map(lambda t: t.to(device))

    def astype(self, dtype: torch.dtype) -> Conditions:
        """The floating-point coefficient tensors cast to ``dtype`` (the frame index and mask unchanged)."""
        if self.speaker_face.dtype == dtype:
            return self
        return replace(
            self,
            speaker_face=self.speaker_face.to(dtype),
            speaker_audio=self.speaker_audio.to(dtype),
            past=self.past.to(dtype),
            history=None if self.history is None else self.history.to(dtype),
        )

    def index(self, idx: Tensor | slice | int | list[int]) -> Conditions:
        """Rows ``idx`` of every tensor (an int keeps the batch dimension)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self._map(lambda t: t[idx])

    def repeat_interleave(self, repeats: int) -> Conditions:
        """Each row repeated ``repeats`` times in place: rows ``[a, a, ..., b, b, ...]`` (for M samples)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def validate(self, frames: int, coeff_dim: int, audio_dim: int, speaker_history: int = 0) -> None:
        """Raise ``ValueError`` naming the field whose shape does not fit the network."""
        b = self.batch_size
        speaker_frames = speaker_history + frames
        expected = {
            "speaker_face": (b, speaker_frames, coeff_dim),
            "speaker_audio": (b, speaker_frames, audio_dim),
            "past": (b, frames, coeff_dim),
            "frame_index": (b,),
            "speaker_mask": (b,),
            "listener_history": (b, coeff_dim),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                hint = ""
                if name.startswith("speaker") and got[:1] == (b,) and len(got) == 3:
                    hint = (
                        f" (the network sees {speaker_history} speaker frames before the window: build the "
                        f"windows with the same speaker_history)"
                    )
                raise ValueError(f"Conditions.{name} has shape {got}, expected {shape}{hint}")
