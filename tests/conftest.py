"""Shared test set-up: hypothesis profiles, the device fixture, float64 everywhere in checks."""

import os

import pytest
from hypothesis import HealthCheck, settings

import minigpt

# "ci" keeps the whole suite to a few minutes on 2 cores; "thorough" for a deeper search:
#   HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = "cuda" in minigpt.available_devices()

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu,
                                             pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU / CuPy")])]


@pytest.fixture(params=DEVICES)
def device(request):
    """Each test that takes ``device`` runs on the CPU, and on the GPU where there is one."""
    return request.param


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same minigpt seed."""
    minigpt.manual_seed(1234)
    yield


SHAKESPEARE = os.environ.get("MINIGPT_TEST_DATA") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")


@pytest.fixture(scope="session")
def shakespeare_path():
    """The Tiny Shakespeare file that CI keeps beside the repository (never downloaded)."""
    if not os.path.isfile(SHAKESPEARE):
        pytest.skip(f"Tiny Shakespeare not found at {SHAKESPEARE} (set MINIGPT_TEST_DATA)")
    return os.path.abspath(SHAKESPEARE)


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path):
    with open(shakespeare_path, encoding="utf-8") as f:
        return f.read()
