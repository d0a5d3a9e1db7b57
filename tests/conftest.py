"""Shared test set-up: hypothesis profiles, the device fixture, float64 everywhere in checks."""

import os

import pytest
from hypothesis import HealthCheck, settings

import minigpt
from minigpt import data

# "ci" keeps the whole suite to a few minutes on 2 cores and is derandomized: the same examples on
# every run, so a red run is red again on re-run. "thorough" searches deeper, with fresh random
# examples each time:  HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile("ci", deadline=None, max_examples=20, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = "cuda" in minigpt.available_devices()


def _cuda(reason):
    return pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason=reason)])


DEVICES = ["cpu", _cuda("no CUDA GPU / CuPy")]
GPU_ONLY = [_cuda("no CUDA GPU / CuPy: on the CPU a GPU-vs-CPU comparison would compare the CPU with itself")]


@pytest.fixture(params=DEVICES)
def device(request):
    """Each test that takes ``device`` runs on the CPU, and on the GPU where there is one: for
    tests that check what a device does on its own (moving a module, its output's device)."""
    return request.param


@pytest.fixture(params=GPU_ONLY)
def gpu_device(request):
    """The GPU ("cuda"), skipped without one: for tests that compare a GPU run with a CPU run,
    which on the CPU would compare the CPU with itself and prove nothing."""
    return request.param


@pytest.fixture(autouse=True)
def _fixed_seed():
    """Every test starts from the same minigpt seed."""
    minigpt.manual_seed(1234)
    yield


@pytest.fixture(scope="session")
def shakespeare_text():
    """Tiny Shakespeare from the copy shipped inside minigpt (sha256-checked, no network)."""
    return data.load_text()


@pytest.fixture(scope="session")
def shakespeare_path(shakespeare_text, tmp_path_factory):
    """The packaged Tiny Shakespeare written to a file, for tests of ``--data PATH``."""
    path = tmp_path_factory.mktemp("data") / "tinyshakespeare.txt"
    path.write_text(shakespeare_text, encoding="utf-8")
    return str(path)
