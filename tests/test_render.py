"""The weight-free face renderer, the renderer seam, grid composition, video files and plots.

Face regions are boxes in interocular units (the distance between the eye centres, measured on the neutral
rendering) around the eyes' midpoint, the usual normalisation of frontal face landmarks. Each blendshape
set to 1 (all others 0, the mean head pose) must change its regions clearly and leave every other region
pixel-identical to the neutral face.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from reactdiff import render
from reactdiff.reference import coefficient_stats, expression_names
from reactdiff.render import (
    PITCH_DIM,
    ROLL_DIM,
    TX_DIM,
    TY_DIM,
    TZ_DIM,
    YAW_DIM,
    CartoonRenderer,
    FaceRenderer,
    build_renderer,
    coefficient_index,
    compose_grid,
    grid_layout,
    neutral_coefficients,
    plot_coefficients,
    plot_metric_bars,
    probe_video,
    write_reaction_video,
    write_video,
)

SIZE = 192
MUST = 5.0  # a region "changes" when its summed |difference| is worth at least 5 fully changed pixels
FAR = 3  # a region is "unchanged" when no channel of any pixel moves by more than this

# (x0, x1, y0, y1) in interocular units from the eyes' midpoint, x to the image right, y up. "left" is the
# subject's left (ARKit), i.e. the image right.
REGIONS = {
    "brow_left": (0.03, 0.9, 0.18, 0.9),
    "brow_right": (-0.9, -0.03, 0.18, 0.9),
    "eye_left": (0.2, 0.85, -0.23, 0.18),
    "eye_right": (-0.85, -0.2, -0.23, 0.18),
    "nose": (-0.21, 0.21, -0.7, -0.14),
    "cheek_left": (0.52, 1.04, -0.73, -0.27),
    "cheek_right": (-1.04, -0.52, -0.73, -0.27),
    "mouth": (-0.55, 0.55, -1.35, -0.79),
    "chin": (-0.65, 0.65, -1.96, -1.38),
}


def _expected() -> dict[str, tuple[set[str], set[str]]]:
    """Blendshape -> (regions that must change, regions that may change); all others must not."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    for side in ("Left", "Right"):
        s = side.lower()
        out[f"browDown{side}"] = ({f"brow_{s}"}, {f"eye_{s}"})  # a lowered brow reaches over the lid
        out[f"browOuterUp{side}"] = ({f"brow_{s}"}, set())
        out[f"cheekSquint{side}"] = ({f"cheek_{s}", f"eye_{s}"}, set())
        for name in ("eyeBlink", "eyeLookDown", "eyeLookIn", "eyeLookOut", "eyeLookUp", "eyeSquint"):
            out[f"{name}{side}"] = ({f"eye_{s}"}, set())
        out[f"eyeWide{side}"] = ({f"eye_{s}"}, {f"brow_{s}"})  # the lid crease rises towards the brow
        for name in (
            "mouthDimple",
            "mouthFrown",
            "mouthLowerDown",
            "mouthPress",
            "mouthStretch",
            "mouthUpperUp",
        ):
            out[f"{name}{side}"] = ({"mouth"}, {"chin"})
        out[f"mouthSmile{side}"] = ({"mouth", f"cheek_{s}"}, {"chin"})
        out[f"noseSneer{side}"] = ({"nose"}, {f"cheek_{s}", "mouth"})
    out["browInnerUp"] = ({"brow_left", "brow_right"}, set())
    out["cheekPuff"] = ({"cheek_left", "cheek_right", "mouth"}, {"chin", "nose"})
    jaw_may = {"nose", "cheek_left", "cheek_right"}  # the jaw's silhouette and shading reach the cheeks
    for name in ("jawForward", "jawLeft", "jawRight", "jawOpen"):
        out[name] = ({"mouth", "chin"}, jaw_may)
    for name in ("mouthClose", "mouthFunnel", "mouthLeft", "mouthRight", "mouthPucker", "mouthRollLower"):
        out[name] = ({"mouth"}, {"chin"})
    for name in ("mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "tongueOut"):
        out[name] = ({"mouth"}, {"chin"})
    return out


EXPECTED = _expected()


@pytest.fixture(scope="module")
def renderer() -> CartoonRenderer:
    return CartoonRenderer(SIZE)


@pytest.fixture(scope="module")
def neutral(renderer: CartoonRenderer) -> np.ndarray:
    return renderer.render(neutral_coefficients())[0].astype(np.int32)


@pytest.fixture(scope="module")
def boxes(renderer: CartoonRenderer) -> dict[str, tuple[slice, slice]]:
    lm = renderer.landmarks(neutral_coefficients())
    d = lm["eye_left"][0] - lm["eye_right"][0]
    mx, my = (lm["eye_left"] + lm["eye_right"]) / 2
    return {
        k: (slice(round(my - y1 * d), round(my - y0 * d)), slice(round(mx + x0 * d), round(mx + x1 * d)))
        for k, (x0, x1, y0, y1) in REGIONS.items()
    }


@pytest.fixture(scope="module")
def single(renderer: CartoonRenderer) -> dict[str, np.ndarray]:
    """Each blendshape alone at 1 (plus combinations used below), rendered in one batch."""
    n = neutral_coefficients()
    names = expression_names() + ["jawOpen+tongueOut", "jawOpen+mouthClose"]
    coeffs = []
    for name in names:
        c = n.copy()
        for part in name.split("+"):
            c[coefficient_index(part)] = 1.0
        coeffs.append(c)
    return dict(zip(names, renderer.render(np.array(coeffs)).astype(np.int32), strict=True))


def _pose(**deltas: float) -> np.ndarray:
    c = neutral_coefficients()
    dims = {"pitch": PITCH_DIM, "yaw": YAW_DIM, "roll": ROLL_DIM, "tx": TX_DIM, "ty": TY_DIM, "tz": TZ_DIM}
    for k, v in deltas.items():
        c[dims[k]] += v
    return c


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    assert len(xs) > 0, "nothing to take the centroid of"
    return np.array([xs.mean(), ys.mean()])


# --- the face ----------------------------------------------------------------------------------------------
def test_regions_frame_the_neutral_features(neutral: np.ndarray, boxes: dict) -> None:
    img = neutral
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    dark = img.max(-1) < 110
    white = img.min(-1) > 238
    lips = (r - g > 70) & (r > 150)
    for side in ("left", "right"):
        assert dark[boxes[f"brow_{side}"]].sum() > 30  # the brow
        assert white[boxes[f"eye_{side}"]].sum() > 8  # the eyeball
        assert (b - r > 35)[boxes[f"eye_{side}"]].sum() > 10  # the iris
        assert not dark[boxes[f"cheek_{side}"]].any() and not lips[boxes[f"cheek_{side}"]].any()
    assert dark[boxes["nose"]].sum() > 5  # nostrils
    assert lips[boxes["mouth"]].sum() > 60
    assert not lips[boxes["chin"]].any() and not dark[boxes["chin"]].any()


@pytest.mark.parametrize("name", expression_names())
def test_each_blendshape_changes_its_region_and_nothing_far(
    name: str, single: dict, neutral: np.ndarray, boxes: dict
) -> None:
    must, may = EXPECTED[name]
    diff = np.abs(single[name] - neutral)
    for region, sl in boxes.items():
        mass = diff[sl].sum() / 255.0
        if region in must:
            assert mass >= MUST, f"{name} barely changes {region} ({mass:.1f} pixel-equivalents)"
        elif region not in may:
            assert diff[sl].max() <= FAR, f"{name} changes {region}, which it should not touch"


def test_every_blendshape_has_an_expectation() -> None:
    assert set(EXPECTED) == set(expression_names())


# jawLeft/mouthLeft name a direction, not a side of the face: test_jaw_and_mouth_move_sideways covers them
SIDED = sorted({n[: -len("Left")] for n in expression_names() if n.endswith("Left")} - {"jaw", "mouth"})


@pytest.mark.parametrize("stem", SIDED)
def test_left_coefficients_act_on_the_subjects_left(stem: str, single: dict, neutral: np.ndarray) -> None:
    mid = SIZE // 2
    for side, own_is_image_right in (("Left", True), ("Right", False)):
        diff = np.abs(single[stem + side] - neutral)
        image_right, image_left = diff[:, mid:].sum(), diff[:, :mid].sum()
        own, other = (image_right, image_left) if own_is_image_right else (image_left, image_right)
        assert own > 3 * other, f"{stem}{side}: own side {own}, other side {other}"


def test_jaw_and_mouth_move_sideways(single: dict, neutral: np.ndarray, boxes: dict) -> None:
    def lip_x(img: np.ndarray) -> float:
        r, g = img[..., 0], img[..., 1]
        return _centroid(((r - g > 70) & (r > 150))[boxes["mouth"]])[0]

    base = lip_x(neutral)
    for name, sign in (("jawLeft", 1), ("jawRight", -1), ("mouthLeft", 1), ("mouthRight", -1)):
        shift = lip_x(single[name]) - base
        assert sign * shift > 1.5, f"{name} moved the lips by {shift:.2f} px"


@pytest.mark.parametrize("side", ["Left", "Right"])
def test_gaze_follows_the_look_coefficients(
    side: str, single: dict, neutral: np.ndarray, boxes: dict
) -> None:
    box = boxes[f"eye_{side.lower()}"]

    def iris(img: np.ndarray) -> np.ndarray:  # the pupil: the lids can hide part of the iris
        return _centroid((img.max(-1) < 45)[box])

    base = iris(neutral)
    towards_nose = -1 if side == "Left" else 1  # the subject's left eye is on the image right
    dx_in = iris(single[f"eyeLookIn{side}"])[0] - base[0]
    dx_out = iris(single[f"eyeLookOut{side}"])[0] - base[0]
    dy_up = iris(single[f"eyeLookUp{side}"])[1] - base[1]
    dy_down = iris(single[f"eyeLookDown{side}"])[1] - base[1]
    assert towards_nose * dx_in > 1.0 and -towards_nose * dx_out > 1.0
    assert dy_up < -0.5 and dy_down > 0.5


def test_open_jaw_shows_the_mouth_and_tongue(single: dict, neutral: np.ndarray, boxes: dict) -> None:
    def inside(img: np.ndarray) -> int:  # the dark mouth cavity
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        return int(((r < 110) & (r > g + 40) & (b < 60))[boxes["mouth"]].sum())

    def tongue(img: np.ndarray) -> int:
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        pink = (r > 190) & (b - g > 15) & (g < 140)
        return int(pink[boxes["mouth"]].sum() + pink[boxes["chin"]].sum())

    assert inside(neutral) == 0
    assert inside(single["jawOpen"]) > 50
    assert inside(single["jawOpen+mouthClose"]) < inside(single["jawOpen"]) / 5  # lips closed over it
    assert tongue(single["tongueOut"]) > 20 and tongue(single["jawOpen+tongueOut"]) > tongue(
        single["jawOpen"]
    )


def test_head_pose_turns_and_moves_the_face(renderer: CartoonRenderer) -> None:
    frames = renderer.render(
        np.array(
            [_pose(), _pose(yaw=0.4), _pose(yaw=-0.4), _pose(pitch=0.3), _pose(roll=0.3), _pose(tz=0.6)]
            + [_pose(tx=0.08), _pose(ty=0.06)]
        )
    ).astype(np.int32)
    eye_white = frames.min(-1) > 238
    background = (np.abs(frames - np.array(render.cartoon._BACKGROUND)).max(-1) <= 2)[:, : int(0.75 * SIZE)]
    base = _centroid(eye_white[0])
    # yaw: the eyes slide towards the way the face turns, far more than the head's outline moves
    assert _centroid(eye_white[1])[0] - base[0] > 0.05 * SIZE
    assert _centroid(eye_white[2])[0] - base[0] < -0.05 * SIZE
    # positive pitch nods the face down
    assert _centroid(eye_white[3])[1] - base[1] > 0.03 * SIZE
    # positive roll turns the face counter-clockwise in the image: the image-right eye rises
    right_eye, left_eye = eye_white[4][:, SIZE // 2 :], eye_white[4][:, : SIZE // 2]
    assert _centroid(right_eye)[1] < _centroid(left_eye)[1] - 0.03 * SIZE
    # a larger tz brings the head closer: bigger; tx / ty shift it right / up
    assert (~background[5]).sum() > 1.1 * (~background[0]).sum()
    head = [_centroid(~b) for b in background]
    assert head[6][0] - head[0][0] > 0.03 * SIZE
    assert head[7][1] - head[0][1] < -0.02 * SIZE


def test_rendering_is_deterministic_and_batch_independent(renderer: CartoonRenderer) -> None:
    mean, std = coefficient_stats()
    coeffs = mean + std * np.random.default_rng(7).standard_normal((9, 58))
    a = renderer.render(coeffs)
    assert a.dtype == np.uint8 and a.shape == (9, SIZE, SIZE, 3)
    assert a.tobytes() == renderer.render(coeffs).tobytes()
    assert a.tobytes() == CartoonRenderer(SIZE, batch=2).render(coeffs).tobytes()
    assert a[4].tobytes() == renderer.render(coeffs[4])[0].tobytes()


def test_out_of_range_inputs_are_clipped_or_wrapped(renderer: CartoonRenderer) -> None:
    n = neutral_coefficients()
    over = n.copy()
    over[coefficient_index("jawOpen")] = 1.7
    one = n.copy()
    one[coefficient_index("jawOpen")] = 1.0
    wrapped = n.copy()
    wrapped[YAW_DIM] += 2 * math.pi  # the same angle
    out = renderer.render(np.array([over, one, wrapped, n]))
    assert np.array_equal(out[0], out[1])
    assert np.abs(out[2].astype(int) - out[3]).max() <= 1


def test_bad_inputs_are_refused(renderer: CartoonRenderer) -> None:
    with pytest.raises(ValueError, match="58"):
        renderer.render(np.zeros((3, 57)))
    bad = np.tile(neutral_coefficients(), (2, 1))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(bad)
    with pytest.raises(ValueError, match="unknown coefficient"):
        coefficient_index("smile")


# --- the seam -----------------------------------------------------------------------------------------------
class _FlatRenderer:
    """A stand-in for a neural renderer: colour from the first expression coefficient."""

    def __init__(self, size: int = 64) -> None:
        self.size = size

    def render(self, coeffs: np.ndarray) -> np.ndarray:
        level = (np.clip(np.asarray(coeffs)[:, 0], 0, 1) * 255).astype(np.uint8)
        return np.broadcast_to(level[:, None, None, None], (len(level), self.size, self.size, 3)).copy()


def test_build_renderer_and_plugging_in_another(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cartoon = build_renderer("cartoon", size=64)
    assert isinstance(cartoon, FaceRenderer) and cartoon.size == 64
    with pytest.raises(ValueError, match="unknown renderer"):
        build_renderer("pirender")
    monkeypatch.setitem(render.faces._RENDERERS, "flat", _FlatRenderer)
    assert isinstance(build_renderer("flat", size=32), _FlatRenderer)
    frames = 5
    coeffs = np.tile(neutral_coefficients(), (frames, 1))
    generated = np.stack([coeffs, coeffs])
    generated[1, :, 0] = 1.0
    path = tmp_path / "flat.mp4"
    layout = write_reaction_video(path, coeffs, None, generated, renderer="flat", tile=32, labels=False)
    info = probe_video(path)
    assert (info["frames"], info["width"], info["height"]) == (frames, layout.width, layout.height)
    assert not info["has_audio"]


# --- grid, video, plots -------------------------------------------------------------------------------------
def test_grid_layout_and_compose() -> None:
    layout = grid_layout(11, 64)
    assert (layout.rows, layout.cols) == (3, 4) and len(layout.tiles) == 11
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    rng = np.random.default_rng(0)
    frames, tile = 3, 64
    speaker = rng.integers(0, 256, (frames, layout.panel, layout.panel, 3), dtype=np.uint8)
    real = rng.integers(0, 256, (frames, tile, tile, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (10, frames, tile, tile, 3), dtype=np.uint8)
    out = compose_grid(speaker, real, generated, labels=True)
    assert out.shape == (frames, layout.height, layout.width, 3) and out.dtype == np.uint8
    g = layout.gap
    # away from the labels (top-left corners), every stream lands unchanged where the layout says
    half = tile // 2
    assert np.array_equal(out[:, g + half : g + layout.panel, g : g + layout.panel], speaker[:, half:])
    for (x, y), stream in zip(layout.tiles, [real, *generated], strict=True):
        assert np.array_equal(out[:, y + half : y + tile, x : x + tile], stream[:, half:])
    # labels darken the top-left corner of each tile
    x, y = layout.tiles[0]
    assert not np.array_equal(out[:, y : y + 8, x : x + 30], real[:, :8, :30])
    plain = compose_grid(speaker, None, generated[:2], labels=False)
    assert plain.shape[1:] == (grid_layout(2, tile).height, grid_layout(2, tile).width, 3)
    with pytest.raises(ValueError, match="frames"):
        compose_grid(speaker, real[:2], generated)


def test_write_video_frames_size_fps_audio_and_colours(tmp_path: Path) -> None:
    frames = np.zeros((30, 48, 64, 3), np.uint8)
    frames[:, :, :32] = (200, 40, 40)
    frames[:, :, 32:] = (40, 40, 200)
    frames[:, :4] = np.arange(30, dtype=np.uint8)[:, None, None, None] * 8  # changing content
    audio = 0.2 * np.sin(2 * np.pi * 440 * np.arange(16000 * 2) / 16000)  # longer than the video: trimmed
    path = tmp_path / "sub" / "clip.mp4"
    write_video(path, frames, fps=25, audio=audio, audio_rate=16000)
    info = probe_video(path)
    assert info["frames"] == 30
    assert (info["width"], info["height"]) == (64, 48)
    assert info["fps"] == 25.0 and info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["has_audio"] and info["audio_codec"] == "aac" and info["audio_rate"] == 16000
    assert info["duration_s"] == pytest.approx(1.2, abs=0.1)
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temporary left behind
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    first = np.frombuffer(next(reader), np.uint8).reshape(meta["size"][1], meta["size"][0], 3)
    reader.close()
    assert np.abs(first[10:, 4:28].astype(int) - (200, 40, 40)).mean() < 12  # RGB order survives
    assert np.abs(first[10:, 36:60].astype(int) - (40, 40, 200)).mean() < 12


def test_write_video_streams_chunks_and_pads_odd_sizes(tmp_path: Path) -> None:
    chunks = (np.full((4, 45, 63, 3), 10 * k, np.uint8) for k in range(3))
    path = tmp_path / "odd.mp4"
    write_video(path, chunks)
    info = probe_video(path)
    assert (info["frames"], info["width"], info["height"], info["has_audio"]) == (12, 64, 46, False)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", np.zeros((0, 8, 8, 3), np.uint8))
    assert not (tmp_path / "empty.mp4").exists()


def test_reaction_video_is_synchronised_with_audio(tmp_path: Path) -> None:
    mean, std = coefficient_stats()
    rng = np.random.default_rng(1)
    frames, m = 12, 3
    speaker = mean + 0.5 * std * rng.standard_normal((frames, 58))
    real = mean + 0.5 * std * rng.standard_normal((frames, 58))
    generated = mean + 0.5 * std * rng.standard_normal((m, frames, 58))
    audio = rng.uniform(-0.1, 0.1, 16000 // 2)  # shorter than the video: padded
    path = tmp_path / "session.mp4"
    layout = write_reaction_video(path, speaker, real, generated, audio=audio, tile=48, chunk=5)
    info = probe_video(path)
    assert (info["frames"], info["width"], info["height"]) == (frames, layout.width, layout.height)
    assert info["fps"] == 25.0 and info["has_audio"]
    assert info["duration_s"] == pytest.approx(frames / 25, abs=0.08)
    with pytest.raises(ValueError, match="in sync"):
        write_reaction_video(tmp_path / "bad.mp4", speaker, real[:5], generated)


def test_plots_are_written(tmp_path: Path) -> None:
    mean, std = coefficient_stats()
    rng = np.random.default_rng(2)
    speaker = mean + std * rng.standard_normal((50, 58))
    generated = mean + std * rng.standard_normal((4, 50, 58))
    path = tmp_path / "plots" / "coeffs.png"
    plot_coefficients(path, speaker, speaker[::-1], generated, dims=["jawOpen", "yaw", 2, "tz"])
    bars = tmp_path / "bars.png"
    table = {"reactdiff": {"FRCorr": 0.4, "FVD": 120.0}, "no_h": {"FRCorr": 0.3, "FVD": float("nan")}}
    plot_metric_bars(bars, table, ["FRCorr", "FVD"], lower_is_better=["FVD"])
    for p in (path, bars):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(q.name for q in tmp_path.rglob("*")) == ["bars.png", "coeffs.png", "plots"]
    with pytest.raises(ValueError, match="unknown coefficient"):
        plot_coefficients(path, speaker, None, generated, dims=["notAShape"])
