from __future__ import annotations

import pytest

import reactdiff  # noqa: F401  (offline / telemetry defaults before any library import)


@pytest.fixture(scope="session")
def prefect_backend():
    """An isolated temporary Prefect backend shared by every test that runs a flow (start-up ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
