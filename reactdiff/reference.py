"""Reference facts shipped inside the package (copied from the project's shared reference folder).

- ``au_pairs.json``: the 52 FaceVerse expression names (ARKit order) and the paper's 108 facial action
  unit pairs (Table 17): 20 symmetric, 30 co-occurring, 58 mutually exclusive, as expression indices.
- ``faceverse_coefficient_stats.json``: per-dimension mean and std of the 58 coefficients of real
  REACT faces, as published with the ReactDiff code.
- ``paper_tables.json``: the paper's reported numbers, for side-by-side reports.

They are package data so that an installed ``reactdiff`` works outside this repository.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

PAIR_KINDS = ("symmetric", "co_occurring", "mutually_exclusive")


@cache
def _load(name: str) -> dict:
    return json.loads(resources.files("reactdiff.resources").joinpath(name).read_text())


POSE_NAMES = ("pitch", "yaw", "roll", "tx", "ty", "tz")
"""The six head-pose coefficients after the 52 expression weights: rotation (radians), translation."""


def expression_names() -> list[str]:
    return list(_load("au_pairs.json")["expression_names"])


def coefficient_names() -> list[str]:
    """Names of the 58 coefficients: the 52 ARKit expression weights, then :data:`POSE_NAMES`."""
    return [*expression_names(), *POSE_NAMES]


def au_pairs() -> dict[str, np.ndarray]:
    """``{kind: int64 [pairs, 2]}`` for the three pair kinds, indices into the 52 expression coefficients."""
    raw = _load("au_pairs.json")
    return {kind: np.asarray(raw[kind], dtype=np.int64).reshape(-1, 2) for kind in PAIR_KINDS}


def coefficient_stats() -> tuple[np.ndarray, np.ndarray]:
    """Real per-dimension ``(mean [58], std [58])`` of FaceVerse coefficients."""
    raw = _load("faceverse_coefficient_stats.json")
    return np.asarray(raw["mean"], np.float64), np.asarray(raw["std"], np.float64)


def paper_tables() -> dict:
    return _load("paper_tables.json")
