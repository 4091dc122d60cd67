"""Sessions simulated from the specification, and the corpus written in the REACT2024 layout."""

from __future__ import annotations

import datetime
import functools
import io
import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from reactdiff import layout
from reactdiff.atomic import atomic_path, write_json
from reactdiff.synthetic.actions import STYLE_NAMES, STYLES
from reactdiff.synthetic.emotion import emotion_from_coefficients
from reactdiff.synthetic.faces import _face, _script_drive
from reactdiff.synthetic.script import _family_script, _realise, _Script, _voice
from reactdiff.synthetic.spec import _CLIP_NAME, _FIRST_DAY, _SITES, META_FILE, SyntheticSpec

# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


@dataclass
class SimulatedSession:
    """One dyad in memory. Person 0 is A (the csv row's first clip), person 1 is B.

    ``coefficients[p]`` float32 ``[frames + 1, 58]``; ``audio[p]`` float32 ``[(frames + 1) * rate / 25]``;
    ``turns``: ``(person, start, end)`` speaking turns in frames (end exclusive); ``utterances[p]``:
    ``(start, end)`` voiced phrases of person ``p`` in frames.
    """

    split: str
    family: int
    session: int  # index within the family
    styles: tuple[str, str]
    delays: tuple[int, int]
    coefficients: tuple[np.ndarray, np.ndarray]
    audio: tuple[np.ndarray, np.ndarray]
    turns: list[tuple[int, int, int]]
    utterances: tuple[list[tuple[int, int]], list[tuple[int, int]]]


_SCRIPT_STREAM, _SESSION_STREAM, _SITE_STREAM = 0, 1, 2


def _rng(seed: int, split: str, family: int, *stream: int) -> np.random.Generator:
    """Independent generator per (seed, split, family, stream...): no draw depends on generation order."""
    return np.random.default_rng([seed, layout.SPLITS.index(split), family, *stream])


@functools.lru_cache(maxsize=8)
def _cached_script(seed: int, split: str, family: int, n: int) -> _Script:
    # Sessions of a family are simulated one after the other, so the script is built once.
    return _family_script(_rng(seed, split, family, _SCRIPT_STREAM), n)


def simulate_session(
    spec: SyntheticSpec,
    split: str,
    family: int,
    session: int,
    styles: tuple[int, int] | None = None,
) -> SimulatedSession:
    """Simulate session ``session`` (0-based, within the family) of family ``family`` of ``split``.

    ``styles`` forces the two persons' style indices (into :data:`STYLES`) instead of the drawn ones;
    every other draw stays the same, so a forced session differs from the drawn one only by style.
    """
    if split not in layout.SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {layout.SPLITS}")
    if not 0 <= session < spec.sessions_per_family:
        raise ValueError(f"session must be in [0, {spec.sessions_per_family}), got {session}")
    n = spec.frames + 1
    script = _cached_script(spec.seed, split, family, n)
    rng = _rng(spec.seed, split, family, _SESSION_STREAM, session)
    drawn = tuple(int(s) for s in rng.integers(spec.n_styles, size=2))
    chosen = drawn if styles is None else tuple(styles)
    delays = tuple(int(d) for d in rng.integers(6, 12, size=2))  # 0.24-0.44 s plus ~0.1 s of easing
    real = _realise(script, rng)

    audio, drives = [], []
    for p in range(2):
        turns = [t for t in real.turns if t.person == p]
        syllables = [y for t in turns for ph in t.phrases for y in ph.syllables]
        wav, open_env, round_env = _voice(syllables, n, spec.sample_rate, rng)
        audio.append(wav)
        drives.append(_script_drive(turns, n, open_env, round_env))
    faces = tuple(
        _face(rng, n, drives[p], drives[1 - p], STYLES[chosen[p]], delays[p], real.expressivity[p])
        for p in range(2)
    )

    def clamp(v: float) -> int:
        return int(np.clip(round(v), 0, n))

    def utterances_of(p: int) -> list[tuple[int, int]]:
        return [(clamp(ph.start), clamp(ph.end)) for t in real.turns if t.person == p for ph in t.phrases]

    return SimulatedSession(
        split=split,
        family=family,
        session=session,
        styles=(STYLES[chosen[0]].name, STYLES[chosen[1]].name),
        delays=(delays[0], delays[1]),
        coefficients=(faces[0], faces[1]),
        audio=(audio[0], audio[1]),
        turns=[(t.person, clamp(t.start), clamp(t.end)) for t in real.turns],
        utterances=(utterances_of(0), utterances_of(1)),
    )


# --------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """Where one session goes: its split, family, index in family, csv row and clip ids."""

    split: str
    family: int
    session: int
    row: int
    clips: tuple[str, str]


def _site_of(spec: SyntheticSpec, split: str, family: int) -> tuple[str, str]:
    rng = _rng(spec.seed, split, family, _SITE_STREAM)
    site = "NoXI" if rng.random() < 0.6 else "RECOLA"
    cities = _SITES[site][1]
    return site, cities[int(rng.integers(len(cities)))]


def corpus_slots(spec: SyntheticSpec) -> dict[str, list[_Slot]]:
    """Every session's place in the corpus, per split, in csv row order (family-major)."""
    slots: dict[str, list[_Slot]] = {}
    number = 0
    for split in layout.SPLITS:
        rows: list[_Slot] = []
        for family in range(spec.families.get(split, 0)):
            site, city = _site_of(spec, split, family)
            persons = _SITES[site][0]
            for session in range(spec.sessions_per_family):
                number += 1
                day = _FIRST_DAY + datetime.timedelta(days=number)
                folder = f"{number:03d}_{day.isoformat()}_{city}"
                clips = tuple(f"{site}/{folder}/{person}/{_CLIP_NAME}" for person in persons)
                rows.append(_Slot(split, family, session, len(rows), (clips[0], clips[1])))
        if rows:
            slots[split] = rows
    return slots


def neighbour_matrix(slots: Sequence[_Slot]) -> np.ndarray:
    """Bool ``[2 * rows, 2 * rows]``: same family and same role (A->B examples vs B->A examples)."""
    rows = len(slots)
    family = np.array([s.family for s in slots] * 2)
    role = np.repeat([0, 1], rows)
    return (family[:, None] == family[None, :]) & (role[:, None] == role[None, :])


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _emotion_csv_bytes(face: np.ndarray) -> bytes:
    """The emotion csv of a clip: header, then AU occurrences as 0/1 and the rest with 6 decimals."""
    table = emotion_from_coefficients(face).to_numpy()
    buf = io.StringIO()
    fmt = ["%d"] * len(layout.AU_COLUMNS) + ["%.6f"] * (len(layout.EMOTION_COLUMNS) - len(layout.AU_COLUMNS))
    np.savetxt(buf, table, fmt=fmt, delimiter=",", header=",".join(layout.EMOTION_COLUMNS), comments="")
    return buf.getvalue().encode()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_session(root: Path, spec: SyntheticSpec, slot: _Slot) -> dict:
    sim = simulate_session(spec, slot.split, slot.family, slot.session)
    for p, clip in enumerate(slot.clips):
        face = sim.coefficients[p]
        _write_bytes(layout.clip_path(root, slot.split, "face", clip), _npy_bytes(face))
        _write_bytes(
            layout.clip_path(root, slot.split, "audio", clip), _wav_bytes(sim.audio[p], spec.sample_rate)
        )
        _write_bytes(layout.clip_path(root, slot.split, "emotion", clip), _emotion_csv_bytes(face))
    return {
        "row": slot.row,
        "family": slot.family,
        "session_in_family": slot.session,
        "clips": list(slot.clips),
        "styles": list(sim.styles),
        "delays": list(sim.delays),
        "turns": [list(t) for t in sim.turns],
        "utterances": [[list(u) for u in us] for us in sim.utterances],
    }


def _write_session_job(args: tuple[Path, SyntheticSpec, _Slot]) -> dict:
    return _write_session(*args)


def generate_corpus(root: Path, spec: SyntheticSpec, *, workers: int = 1, progress: bool = False) -> dict:
    """Write the synthetic corpus for ``spec`` under ``root`` in the REACT2024 layout.

    Writes per split ``<split>.csv``, ``neighbour_emotion_<split>.npy`` and the clip files, plus
    ``synthetic_meta.json`` (ground truth). Every file is written atomically; files already under
    ``root`` at other paths (from a differently sized spec) are left alone, so generate into a fresh
    folder (a DVC stage output is removed before its stage runs). ``workers > 1`` simulates
    sessions in that many processes; the bytes written do not depend on it. Returns a summary:
    ``{"root": str, "splits": {split: {"families", "dyads", "examples", "clips"}}}``.
    """
    spec.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    slots = corpus_slots(spec)
    jobs = [(root, spec, slot) for split_slots in slots.values() for slot in split_slots]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthetic sessions", unit="session")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = []
            for record in pool.map(_write_session_job, jobs, chunksize=4):
                records.append(record)
                if bar is not None:
                    bar.update()
    else:
        records = []
        for job in jobs:
            records.append(_write_session_job(job))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()

    meta_splits: dict[str, list[dict]] = {}
    summary: dict[str, dict[str, int]] = {}
    it = iter(records)
    for split, split_slots in slots.items():
        lines = ["id,speaker_path,listener_path"] + [
            f"{s.row},{s.clips[0]},{s.clips[1]}" for s in split_slots
        ]
        _write_bytes(layout.split_list_path(root, split), ("\n".join(lines) + "\n").encode())
        _write_bytes(layout.neighbour_path(root, split), _npy_bytes(neighbour_matrix(split_slots)))
        meta_splits[split] = [next(it) for _ in split_slots]
        summary[split] = {
            "families": spec.families[split],
            "dyads": len(split_slots),
            "examples": 2 * len(split_slots),
            "clips": 2 * len(split_slots),
        }
    meta = {
        "generator": "reactdiff.synthetic",
        "spec": asdict(spec),
        "styles": list(STYLE_NAMES[: spec.n_styles]),
        "fps": layout.FPS,
        "file_frames": spec.frames + 1,
        "splits": meta_splits,
    }
    write_json(meta, root / META_FILE)
    return {"root": str(root), "splits": summary}


def load_meta(root: Path) -> dict:
    """The ground truth written next to a synthetic corpus (``<root>/synthetic_meta.json``)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a synthetic corpus (no {META_FILE}); generate one with generate_corpus"
        )
    return json.loads(path.read_text())
