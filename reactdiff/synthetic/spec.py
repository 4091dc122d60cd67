"""What to generate: the corpus specification, its presets, and the recording sites and names."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from reactdiff import layout
from reactdiff.synthetic.actions import STYLES

META_FILE = "synthetic_meta.json"

_SITES = {
    "NoXI": (("Expert_video", "Novice_video"), ("Paris", "Nottingham", "Augsburg")),
    "RECOLA": (("P1", "P2"), ("Fribourg",)),
}
_CLIP_NAME = "1"
_FIRST_DAY = datetime.date(2016, 3, 1)
# Activity level (blendshape units) above which an action counts as present: the exclusivity of
# mutually exclusive pairs is enforced at this level, and the tests measure it there.
ACTIVE_LEVEL = 0.3


# --------------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------------


def _default_families() -> dict[str, int]:
    return {"train": 6, "val": 2, "test": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``families[split] * sessions_per_family`` dyads (csv rows) per split.

    ``frames`` is the number of frames used per clip; files carry ``frames + 1`` rows like the real
    corpus (751 for 750). ``n_styles`` listener styles (1 to ``len(STYLES)``) are drawn from.
    """

    seed: int = 0
    frames: int = layout.CLIP_FRAMES
    sample_rate: int = layout.CORPUS_SAMPLE_RATE
    families: dict[str, int] = field(default_factory=_default_families)
    sessions_per_family: int = 4
    n_styles: int = 4

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot be generated."""
        if self.seed < 0:
            raise ValueError(
                f"seed must be >= 0 (numpy seed sequences take non-negative ints), got {self.seed}"
            )
        if self.frames < 50:
            raise ValueError(f"frames must be >= 50 (2 s, room for one turn each), got {self.frames}")
        if self.sample_rate < 8000 or self.sample_rate % layout.FPS:
            raise ValueError(
                f"sample_rate must be >= 8000 Hz and a multiple of {layout.FPS} (whole samples per frame), "
                f"got {self.sample_rate}"
            )
        unknown = sorted(set(self.families) - set(layout.SPLITS))
        if unknown:
            raise ValueError(f"families has unknown split(s) {unknown}; use {list(layout.SPLITS)}")
        bad = {s: n for s, n in self.families.items() if n < 0}
        if bad:
            raise ValueError(f"families must be >= 0 per split, got {bad}")
        if self.sessions_per_family < 1:
            raise ValueError(f"sessions_per_family must be >= 1, got {self.sessions_per_family}")
        if not 1 <= self.n_styles <= len(STYLES):
            raise ValueError(f"n_styles must be in [1, {len(STYLES)}], got {self.n_styles}")


def preset(name: str) -> SyntheticSpec:
    """``"sample"``: 40 dyads of 30 s (10 families of 4), quick to generate and to featurise.

    ``"paper"``: REACT2024-sized, 1596 / 564 / 808 dyads in train / val / test (the real corpus has
    1594 / 562 / 806), as families of 4 sessions.
    """
    if name == "sample":
        return SyntheticSpec()
    if name == "paper":
        return SyntheticSpec(families={"train": 399, "val": 141, "test": 202}, sessions_per_family=4)
    raise ValueError(f"unknown synthetic preset {name!r}; use 'sample' or 'paper'")
