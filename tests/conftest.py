from __future__ import annotations

import pytest

import reactdiff  # noqa: F401  (offline / telemetry defaults before any library import)


@pytest.fixture(scope="session")
def prefect_backend():
    """An isolated temporary Prefect backend shared by every test that runs a flow (start-up ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_denoiser():
    """A demo network with 86-dim audio whose every parameter is perturbed (eval mode, seeded).

    The demo network zero-initialises its output head and residual/attention outputs (the identity at
    init): perturbing every parameter makes the speaker, the past and h all reach the output, so tests
    of the generator and the service can see each input's effect.
    """
    import torch

    from reactdiff.model import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("demo", audio_dim=86)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="session")
def demo_stats():
    """Normalisation statistics that fit ``demo_denoiser`` (86-dim audio), seeded."""
    import numpy as np

    from reactdiff.features import NormStats
    from reactdiff.layout import N_COEFFS

    rng = np.random.default_rng(1)
    return NormStats(
        face_mean=rng.uniform(0.1, 0.3, size=N_COEFFS).astype(np.float32),
        face_std=rng.uniform(0.05, 0.2, size=N_COEFFS).astype(np.float32),
        audio_mean=rng.normal(size=86).astype(np.float32),
        audio_std=rng.uniform(0.5, 3.0, size=86).astype(np.float32),
    )


WINDOWS_AUDIO_DIM = 4


def _clip(clip_id, n, rng, phase):
    import numpy as np

    from reactdiff.features import ClipFeatures

    A = WINDOWS_AUDIO_DIM
    # Smooth, low-dimensional motion (a few sinusoids mixed into 58 dims) plus a little noise: learnable
    # structure, so the loss has somewhere to go.
    t = np.arange(n, dtype=np.float32)[:, None] / 25.0
    basis = np.concatenate([np.sin(2 * np.pi * f * t + phase) for f in (0.3, 0.7, 1.1)], axis=1)  # [n, 3]
    mix = np.random.default_rng(0).normal(size=(3, 58)).astype(np.float32)  # shared across clips
    face = basis @ mix + 0.05 * rng.normal(size=(n, 58)).astype(np.float32)
    audio = np.concatenate([basis, rng.normal(size=(n, A - 3))], axis=1).astype(np.float32)
    return ClipFeatures(clip_id, face.astype(np.float32), audio, np.zeros((n, 25), np.float32))


@pytest.fixture(scope="session")
def windows_dir(tmp_path_factory):
    """A real windows split (memory-mapped Arrow) of two dyads, both directions, 120 frames each, with
    4-dim audio features (``WINDOWS_AUDIO_DIM``) and 16-frame windows."""
    import numpy as np

    from reactdiff import atomic
    from reactdiff.corpus import Example, SplitIndex
    from reactdiff.features import EXAMPLES_FILE, FRAMES_FILE, NormStats, examples_table, frames_table
    from reactdiff.windows import build_split_windows, write_split_windows

    A, W = WINDOWS_AUDIO_DIM, 16
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    ids = ["S/s1/P1/1", "S/s1/P2/1", "S/s2/P1/1", "S/s2/P2/1"]
    clips = [_clip(c, 120, rng, phase=i) for i, c in enumerate(ids)]
    examples = [
        Example(0, ids[0], ids[1], "S/s1"),
        Example(1, ids[2], ids[3], "S/s2"),
        Example(2, ids[1], ids[0], "S/s1"),
        Example(3, ids[3], ids[2], "S/s2"),
    ]
    index = SplitIndex(root, "train", [(ids[0], ids[1]), (ids[2], ids[3])], examples, None)
    features = root / "features" / "train"
    atomic.write_parquet(frames_table(clips, "test", A), features / FRAMES_FILE)
    atomic.write_parquet(examples_table(index, set(ids), {}), features / EXAMPLES_FILE)
    stats = NormStats.from_arrays(
        np.concatenate([c.face for c in clips]), np.concatenate([c.audio for c in clips])
    )
    out = root / "windows" / "train"
    write_split_windows(build_split_windows(features, stats, w=W, stride=4), out)
    return out
