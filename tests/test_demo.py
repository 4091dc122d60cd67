"""The browser demo of the live listener service: the session it plays, the pictures the service draws,
and the page itself in a real headless Chromium against the real service."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from chromium import HeadlessChromium, chromium_path
from PIL import Image
from service import real_service
from starlette.testclient import TestClient

from reactdiff.audio import LogMelProsodyEncoder
from reactdiff.corpus import read_clip, read_split
from reactdiff.demo import WindowPainter, load_demo_session, render_options
from reactdiff.features import NormStats
from reactdiff.layout import MODEL_SAMPLE_RATE, N_COEFFS
from reactdiff.render import build_renderer, grid_layout
from reactdiff.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
W, HOP = 16, MODEL_SAMPLE_RATE // 25


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from reactdiff.synthetic import SyntheticSpec, generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    spec = SyntheticSpec(
        seed=4, frames=200, families={"train": 2, "val": 1, "test": 1}, sessions_per_family=2
    )
    generate_corpus(root, spec)
    return root


@pytest.fixture(scope="module")
def stats(demo_stats) -> NormStats:
    return demo_stats


def _floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


def _jpeg(text: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


def test_the_session_is_the_examples_speaker_with_its_voice(corpus):
    session = load_demo_session(corpus, "test", example=1)
    example = read_split(corpus, "test").examples[1]
    speaker = read_clip(corpus, "test", example.speaker, audio_rate=MODEL_SAMPLE_RATE)
    listener = read_clip(corpus, "test", example.listener, audio_rate=MODEL_SAMPLE_RATE)
    frames = min(speaker.n_frames, listener.n_frames)
    np.testing.assert_array_equal(session.face, speaker.face[:frames])
    np.testing.assert_array_equal(session.audio, speaker.audio[: frames * HOP])
    np.testing.assert_array_equal(session.listener_start, listener.face[0])
    sent = session.as_json()  # what /demo/session carries, in the protocol's encoding
    np.testing.assert_array_equal(_floats(sent["face"]).reshape(-1, N_COEFFS), session.face)
    np.testing.assert_array_equal(_floats(sent["audio"]), session.audio)
    assert sent["frames"] == frames and sent["audio_rate"] == MODEL_SAMPLE_RATE
    with pytest.raises(ValueError, match="the test split has 4 examples, not 5"):
        load_demo_session(corpus, "test", example=4)


def test_a_painted_window_is_the_renderers_faces_in_the_grid():
    rng = np.random.default_rng(0)
    face = rng.uniform(0, 0.6, size=(W, N_COEFFS)).astype(np.float32)
    reactions = rng.uniform(0, 0.6, size=(3, W, N_COEFFS)).astype(np.float32)
    face[:, 52:], reactions[..., 52:] = 0.0, 0.0  # pose at rest
    images = [_jpeg(i) for i in WindowPainter(samples=3, tile=64, every=4, quality=95).paint(face, reactions)]
    grid = grid_layout(3, 64)
    assert len(images) == 4 and all(i.shape == (grid.height, grid.width, 3) for i in images)
    # the second picture is frame 7: its third tile is the renderer's drawing of listener 2 at frame 7
    x, y = grid.tiles[2]
    drawn = build_renderer("cartoon", size=64).render(reactions[2, 6:9])[:, 20:].astype(float)
    got = images[1][y + 20 : y + 64, x : x + 64].astype(float)  # below the label
    errors = np.abs(got - drawn).mean(axis=(1, 2, 3))  # against frames 6, 7 and 8
    assert errors[1] < 3 and errors[1] < 0.8 * min(errors[0], errors[2])  # JPEG's loss only, and no other


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("big", "render must be null or"),
        ({"tile": 8}, r"render.tile must be an integer in \[32, 256\], got 8"),
        ({"every": 17}, r"render.every must be an integer in \[1, 16\], got 17"),
        ({"tile": 64, "fps": 25}, "render must be null or"),
    ],
)
def test_bad_render_options_are_refused(value, message):
    assert render_options(None, W) is None and render_options({}, W) == (96, 4)
    with pytest.raises(ValueError, match=message):
        render_options(value, W)


def test_the_service_serves_the_page_the_session_and_the_pictures(demo_denoiser, stats, corpus):
    session = load_demo_session(corpus)
    app = create_app(demo_denoiser, stats, LogMelProsodyEncoder(), ServeConfig(), demo=session)
    with TestClient(app) as client:
        assert "new WebSocket" in client.get("/").text  # / leads to the page
        sent = client.get("/demo/session").json()
        assert sent["name"] == session.name and sent["frames"] == len(session.face)
        with client.websocket_connect("/listen") as ws:
            ws.send_json({"type": "start", "samples": 2, "steps": 3, "render": {"tile": 48, "every": 8}})
            assert ws.receive_json()["type"] == "ready"
            face = base64.b64encode(session.face[:W].tobytes()).decode()
            audio = base64.b64encode(session.audio[: W * HOP].tobytes()).decode()
            ws.send_json({"type": "window", "face": face, "audio": audio})
            assert ws.receive_json()["type"] == "reactions"
            pictures = ws.receive_json()
    assert pictures["type"] == "frames" and pictures["frames"] == [7, 15]
    assert [_jpeg(i).shape for i in pictures["images"]] == [
        (grid_layout(2, 48).height, grid_layout(2, 48).width, 3)
    ] * 2


def test_with_a_token_the_demo_needs_it_too(demo_denoiser, stats, corpus):
    app = create_app(
        demo_denoiser,
        stats,
        LogMelProsodyEncoder(),
        ServeConfig(token="s3cret"),
        demo=load_demo_session(corpus),
    )
    with TestClient(app) as client:
        assert client.get("/demo").status_code == 401 and client.get("/demo/session").status_code == 401
        assert client.get("/demo/session?token=s3cret").status_code == 200


@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_in_a_real_browser_streams_and_draws_the_listeners(tmp_path, demo_denoiser, stats, corpus):
    import psutil

    with real_service(tmp_path, demo_denoiser, stats, "--demo", str(corpus)) as (server, port):
        with HeadlessChromium(size=(800, 460)) as browser:
            browser.open(f"http://127.0.0.1:{port}/demo?autostart=1")
            browser.wait_for("window.demo && window.demo.framesShown >= 6", timeout=120)
            state = browser.evaluate("window.demo")
            shown = browser.evaluate(
                "[document.getElementById('view').naturalWidth, document.body.innerText]"
            )
            png = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    assert state["errors"] == [] and state["reactions"] >= 2 and state["windowsSent"] >= state["reactions"]
    assert shown[0] == grid_layout(4, 96).width  # the page's defaults: 4 listeners, tiles of 96 pixels
    assert "4 listeners, latency" in shown[1]
    pixels = np.asarray(png).reshape(-1, 3).astype(int)
    skin = (np.abs(pixels - np.array([236, 196, 164])) < 40).all(axis=1)  # the cartoon faces' skin tone
    assert skin.sum() > 5 * 400  # five faces of at least 400 skin pixels each are on the screen
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
