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
