"""The live listener service: the protocol, equality with the generator, batching across conversations,
and clients that misbehave (each gets a clear answer and the others are not disturbed)."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service import real_service
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from reactdiff.audio import LogMelProsodyEncoder
from reactdiff.config import SampleParams
from reactdiff.features import NormStats
from reactdiff.layout import MODEL_SAMPLE_RATE, N_COEFFS
from reactdiff.online import OnlineReactionGenerator
from reactdiff.samplers import CountingDenoiser
from reactdiff.serve import BatchingDenoiser, ServeConfig, check_bind, create_app

W, A = 16, 86
HOP = MODEL_SAMPLE_RATE // 25
START = {"type": "start", "samples": 2, "seed": 5, "steps": 3, "guidance": 1.5}


@pytest.fixture(scope="module")
def stats(demo_stats) -> NormStats:
    return demo_stats


@pytest.fixture(scope="module")
def denoiser(demo_denoiser):
    return demo_denoiser


def _speaker(windows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    face = rng.uniform(0.0, 0.5, size=(windows * W, N_COEFFS)).astype(np.float32)
    audio = (0.1 * rng.normal(size=windows * W * HOP)).astype(np.float32)
    return face, audio


def _f32(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def _window(face: np.ndarray, audio: np.ndarray, i: int) -> dict:
    return {
        "type": "window",
        "face": _f32(face[i * W : (i + 1) * W]),
        "audio": _f32(audio[i * W * HOP : (i + 1) * W * HOP]),
    }


def _reactions(reply: dict) -> np.ndarray:
    assert reply["type"] == "reactions", reply
    return np.frombuffer(base64.b64decode(reply["reactions"]), "<f4").reshape(reply["shape"])


def _client(denoiser, stats, **config) -> TestClient:
    return TestClient(create_app(denoiser, stats, LogMelProsodyEncoder(), ServeConfig(**config)))


def _generator(denoiser, stats, seed: int) -> OnlineReactionGenerator:
    """The generator a START conversation gets: 2 samples, 3 steps, guidance 1.5, and otherwise the
    recipe the sample stage runs (solver, guidance interval, clamping) as params.yaml ships it."""
    recipe = SampleParams()
    return OnlineReactionGenerator(
        denoiser,
        stats,
        samples=2,
        steps=3,
        solver=recipe.solver,
        eta=recipe.eta,
        guidance_scale=1.5,
        guidance_interval=recipe.guidance_interval,
        clip_expression=recipe.clip_expression,
        seed=seed,
        device="cpu",
        encoder=LogMelProsodyEncoder(),
    )


def _alone(denoiser, stats, face, audio, windows, seed=5) -> list[np.ndarray]:
    gen = _generator(denoiser, stats, seed)
    return [
        gen.step(face[i * W : (i + 1) * W], audio[i * W * HOP : (i + 1) * W * HOP]) for i in range(windows)
    ]


def test_a_conversation_gets_what_the_generator_gives(denoiser, stats):
    face, audio = _speaker(3)
    with _client(denoiser, stats) as client, client.websocket_connect("/listen") as ws:
        ws.send_json(START)
        ready = ws.receive_json()
        assert ready["window"] == W and ready["audio_rate"] == 16000 and len(ready["coefficients"]) == 58
        replies = []
        for i in range(3):
            ws.send_json(_window(face, audio, i))
            replies.append(ws.receive_json())
    assert [r["frame"] for r in replies] == [15, 31, 47] and all(r["latency_ms"] > 0 for r in replies)
    for got, want in zip(replies, _alone(denoiser, stats, face, audio, 3), strict=True):
        np.testing.assert_allclose(_reactions(got), want, atol=1e-5)


def test_a_student_conversation_runs_the_students_recipe_unless_the_start_message_says_otherwise(
    denoiser, stats
):
    # The service of a distilled student: 4 consistency steps and no guidance pass by default.
    counting = CountingDenoiser(denoiser)
    counting.config = denoiser.config
    face, audio = _speaker(1)
    student = ServeConfig(recipe=SampleParams(model="student"))
    with _client(counting, stats, recipe=student.recipe) as client, client.websocket_connect("/listen") as ws:
        ws.send_json({"type": "start", "samples": 2, "seed": 5})
        ws.receive_json()
        ws.send_json(_window(face, audio, 0))
        got = _reactions(ws.receive_json())
    assert (counting.calls, counting.rows) == (4, 4 * 2)  # one row per sample per step: unguided
    want = OnlineReactionGenerator(
        denoiser,
        stats,
        samples=2,
        seed=5,
        device="cpu",
        encoder=LogMelProsodyEncoder(),
        **SampleParams(model="student").recipe(),
    ).step(face[:W], audio[: W * HOP])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_concurrent_conversations_share_denoiser_calls_and_keep_their_reactions(denoiser, stats):
    counting = CountingDenoiser(denoiser)
    counting.config = denoiser.config
    batching = BatchingDenoiser(counting, max_wait_s=5.0)  # never reached: every caller calls
    together = threading.Barrier(3)
    speakers = [_speaker(2, seed=s) for s in range(3)]
    results: dict[int, list[np.ndarray]] = {}

    def converse(k: int) -> None:
        face, audio = speakers[k]
        gen = _generator(batching, stats, seed=k)
        results[k] = []
        for i in range(2):
            batching.enter()  # what the service does around each window ...
            together.wait()  # ... and here the three windows arrive at the same time
            try:
                results[k].append(gen.step(face[i * W : (i + 1) * W], audio[i * W * HOP : (i + 1) * W * HOP]))
            finally:
                batching.leave()

    threads = [threading.Thread(target=converse, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, (face, audio) in enumerate(speakers):
        for got, want in zip(results[k], _alone(denoiser, stats, face, audio, 2, seed=k), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)
    alone_calls = 3 * 2 * 3  # conversations x windows x solver steps (guided rows go in the same call)
    # One network call per solver step of a window for all three conversations together.
    assert counting.calls == batching.batches == alone_calls // 3


def test_a_bad_window_is_rejected_and_the_conversation_goes_on(denoiser, stats):
    face, audio = _speaker(2)
    clean = _alone(denoiser, stats, face, audio, 2)
    with _client(denoiser, stats) as client, client.websocket_connect("/listen") as ws:
        ws.send_json(START)
        ws.receive_json()
        ws.send_json(_window(face, audio, 0))
        first = _reactions(ws.receive_json())
        bad_face = face.copy()
        bad_face[W + 3, 7] = np.nan
        for message, expected in (
            (_window(bad_face, audio, 1), "is nan, not finite"),
            (
                {**_window(face, audio, 1), "audio": _f32(audio[:100])},
                "audio holds 100 values, expected 10240",
            ),
            ({**_window(face, audio, 1), "face": "not base64!"}, "face is not valid base64"),
        ):
            ws.send_json(message)
            reply = ws.receive_json()
            assert reply["type"] == "rejected" and expected in reply["message"], reply
        ws.send_json(_window(face, audio, 1))
        second = _reactions(ws.receive_json())
    np.testing.assert_allclose(first, clean[0], atol=1e-5)
    np.testing.assert_allclose(second, clean[1], atol=1e-5)  # as if the bad windows were never sent


@pytest.mark.parametrize(
    "first, expected",
    [
        ("not json", "bad start message"),
        (json.dumps({"type": "window"}), 'the first message must be {"type": "start"'),
        (json.dumps({**START, "samples": 1000}), "samples must be an integer in [1, 32], got 1000"),
        (json.dumps({**START, "guidance": "nan"}), "guidance must be a number in [0, 10]"),
        (json.dumps({**START, "listener_start": [0.0] * 3}), "listener_start must be null or a list of 58"),
    ],
)
def test_a_bad_start_gets_an_error_and_the_connection_closes(denoiser, stats, first, expected):
    with _client(denoiser, stats) as client, client.websocket_connect("/listen") as ws:
        ws.send_text(first)
        reply = ws.receive_json()
        assert reply["type"] == "error" and expected in reply["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_tokens_connection_caps_and_message_sizes_are_enforced(denoiser, stats):
    with _client(denoiser, stats, token="s3cret") as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/listen") as ws:
            ws.receive_json()
        assert refused.value.code == 1008
        with (
            pytest.raises(WebSocketDisconnect) as wrong,
            client.websocket_connect("/listen?token=wrong") as ws,
        ):
            ws.receive_json()
        assert wrong.value.code == 1008 and wrong.value.reason == "missing or wrong token"
        with client.websocket_connect("/listen", headers={"Authorization": "Bearer s3cret"}) as ws:
            ws.send_json(START)
            assert ws.receive_json()["type"] == "ready"
    with _client(denoiser, stats, max_connections=1) as client, client.websocket_connect("/listen") as first:
        first.send_json(START)
        first.receive_json()
        with pytest.raises(WebSocketDisconnect) as full, client.websocket_connect("/listen") as second:
            second.receive_json()
        assert full.value.code == 1013
    with (
        _client(denoiser, stats, max_message_bytes=1000) as client,
        client.websocket_connect("/listen") as ws,
    ):
        ws.send_json(START)
        ws.receive_json()
        face, audio = _speaker(1)
        ws.send_json(_window(face, audio, 0))  # about 46 kB
        reply = ws.receive_json()
        assert reply["type"] == "error" and "the limit is 1000" in reply["message"]


def test_a_public_bind_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "s3cret")
    with pytest.raises(
        SystemExit, match="--host 0.0.0.0 exposes the service beyond this machine: give --token"
    ):
        check_bind("0.0.0.0", None)


def test_the_service_runs_for_real_on_loopback_and_stops_by_pid(tmp_path, denoiser, stats):
    import psutil
    from websockets.sync.client import connect

    with real_service(tmp_path, denoiser, stats, "--workers", "2") as (proc, port):
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)  # loopback only
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, [c.cmdline() for c in children]  # the two worker processes
        face, audio = _speaker(1)
        with connect(f"ws://127.0.0.1:{port}/listen") as ws:
            ws.send(json.dumps(START))
            assert json.loads(ws.recv())["type"] == "ready"
            ws.send(json.dumps(_window(face, audio, 0)))
            reply = json.loads(ws.recv())
        np.testing.assert_allclose(_reactions(reply), _alone(denoiser, stats, face, audio, 1)[0], atol=1e-5)
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, [c.cmdline() for c in alive]  # no worker process outlives the service


def test_a_client_that_stops_reading_is_dropped_and_the_others_stream_on(tmp_path, denoiser, stats):
    import socket

    import httpx
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    windows = 60
    face, audio = _speaker(windows)
    with real_service(tmp_path, denoiser, stats, "--send-timeout", "1") as (proc, port):
        url = f"ws://127.0.0.1:{port}/listen"
        # The mute client sends its windows at the pace of the other client, never faster, asks for big
        # replies (32 samples of 16 x 58 floats: 160 kB each) and reads none: with a 4 kB receive buffer
        # and a queue of one message, its side of the socket fills at once, then the server's.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port))
        mute = connect(url, sock=raw, max_queue=1)
        mute.send(json.dumps({**START, "samples": 32, "steps": 1, "guidance": 1.0}))
        with connect(url) as other:
            other.send(json.dumps(START))
            assert json.loads(other.recv())["type"] == "ready"
            replies, dropped_at = [], None
            for i in range(windows):
                if dropped_at is None:
                    try:
                        mute.send(json.dumps(_window(face, audio, i)))
                    except ConnectionClosed:
                        pass
                other.send(json.dumps(_window(face, audio, i)))
                replies.append(json.loads(other.recv()))
                connections = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["connections"]
                if connections == 1 and dropped_at is None:
                    dropped_at = i
        raw.close()
        assert proc.poll() is None  # the server stays up
    assert dropped_at is not None, "the mute client was never dropped"
    assert [r["type"] for r in replies] == ["reactions"] * windows  # no missed window for the other
    assert [r["frame"] for r in replies] == [W * (i + 1) - 1 for i in range(windows)]


def test_a_dead_worker_ends_its_conversations_with_an_error_and_the_service_goes_on(
    tmp_path, denoiser, stats
):
    import psutil
    from websockets.sync.client import connect

    face, audio = _speaker(3)
    with real_service(tmp_path, denoiser, stats, "--workers", "2") as (proc, port):
        url = f"ws://127.0.0.1:{port}/listen"
        with connect(url) as first, connect(url) as second:  # one conversation on each worker
            for ws in (first, second):
                ws.send(json.dumps(START))
                assert json.loads(ws.recv())["type"] == "ready"
                ws.send(json.dumps(_window(face, audio, 0)))
                assert json.loads(ws.recv())["type"] == "reactions"
            workers = [
                c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())
            ]
            assert len(workers) == 2
            victim = workers[0]
            victim.kill()  # it stays a zombie until the service reaps it: wait for that, not for its end
            deadline = time.monotonic() + 10
            while victim.is_running() and victim.status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            replies = []
            for ws in (first, second):
                ws.send(json.dumps(_window(face, audio, 1)))
                replies.append(json.loads(ws.recv()))
            kinds = sorted(r["type"] for r in replies)
            assert kinds == ["error", "reactions"], replies  # one conversation lost, the other streams on
            error = next(r for r in replies if r["type"] == "error")
            assert "the worker process died" in error["message"]
        with connect(url) as third:  # a new conversation goes to the worker that is alive
            third.send(json.dumps(START))
            assert json.loads(third.recv())["type"] == "ready"
            third.send(json.dumps(_window(face, audio, 0)))
            assert json.loads(third.recv())["type"] == "reactions"
        assert proc.poll() is None


def test_a_client_faster_than_real_time_is_told_and_disconnected(denoiser, stats):
    face, audio = _speaker(6)
    with _client(denoiser, stats, max_queued_windows=1) as client, client.websocket_connect("/listen") as ws:
        ws.send_json({**START, "steps": 20})
        ws.receive_json()
        for i in range(6):  # all at once: six windows in far less than their 3.84 s
            ws.send_json(_window(face, audio, i))
        replies = []
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                replies.append(ws.receive_json())
        assert closed.value.code == 1009
        assert replies[-1]["type"] == "error" and "send at most real time" in replies[-1]["message"]
        assert all(r["type"] == "reactions" for r in replies[:-1])


def test_a_client_that_leaves_mid_window_disturbs_nobody(denoiser, stats):
    face, audio = _speaker(2)
    with _client(denoiser, stats) as client:
        with client.websocket_connect("/listen") as ws:
            ws.send_json(START)
            ws.receive_json()
            ws.send_json(_window(face, audio, 0))  # and gone before the reactions come back
        with client.websocket_connect("/listen") as other:  # the next conversation is served as usual
            other.send_json(START)
            other.receive_json()
            other.send_json(_window(face, audio, 0))
            got = _reactions(other.receive_json())
        np.testing.assert_allclose(got, _alone(denoiser, stats, face, audio, 1)[0], atol=1e-5)
        deadline = time.monotonic() + 10
        while client.get("/health").json()["connections"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["connections"] == 0  # both conversations were let go


def test_the_model_can_be_named_by_the_mlflow_run_it_was_trained_in(tmp_path, monkeypatch):
    import mlflow

    from reactdiff.serve import resolve_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    checkpoint = tmp_path / "reactdiff.pt"
    checkpoint.write_bytes(b"weights")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("reactdiff")
    logged = client.create_run(experiment, run_name="train · seed 0").info.run_id
    client.log_artifact(logged, str(checkpoint), artifact_path="model")
    big = client.create_run(experiment, tags={"checkpoint_path": "/models/paper.pt"}).info.run_id
    bare = client.create_run(experiment).info.run_id

    assert resolve_model("models/reactdiff.pt") == Path("models/reactdiff.pt")
    assert resolve_model(f"runs:/{logged}").read_bytes() == b"weights"  # downloaded from the run
    assert resolve_model(f"runs:/{logged}/model/reactdiff.pt").read_bytes() == b"weights"
    assert resolve_model(f"runs:/{big}") == Path("/models/paper.pt")  # too big to log: its recorded path
    with pytest.raises(SystemExit, match="logged no model/reactdiff.pt and records no checkpoint_path"):
        resolve_model(f"runs:/{bare}")
    with pytest.raises(SystemExit, match="--model runs:/0123456789abcdef: .*tracking URI sqlite"):
        resolve_model("runs:/0123456789abcdef")
