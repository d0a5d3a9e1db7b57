"""Backends: one code path for NumPy and CuPy, and op code never calls NumPy directly."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
from minigpt import backend

PACKAGE = Path(minigpt.__file__).parent
# every module that does array math must take xp from its inputs
OP_MODULES = ["tensor.py", "ops.py", "functional.py", "optim.py", "gradcheck.py", "nn/module.py", "nn/layers.py", "nn/gpt.py",
              "fast/functional.py", "fast/attention.py", "fast/reductions.py", "fast/tiling.py", "fast/optim.py", "fast/gpt.py",
              "fast/switch.py"]


def numpy_uses(source):
    """Every import of numpy/cupy and every use of the names np, numpy, cp, cupy in ``source``."""
    offenders = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            offenders += [a.name for a in node.names if a.name.split(".")[0] in ("numpy", "cupy")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("numpy", "cupy"):
            offenders.append(node.module)
        elif isinstance(node, ast.Name) and node.id in ("np", "numpy", "cp", "cupy"):
            offenders.append(f"{node.id} at line {node.lineno}")
    return offenders


@pytest.mark.parametrize("name", OP_MODULES)
def test_op_code_never_uses_numpy_directly(name):
    offenders = numpy_uses((PACKAGE / name).read_text())
    assert not offenders, f"{name} uses numpy/cupy directly: {offenders}"


def test_the_numpy_check_catches_offenders():
    assert numpy_uses("import numpy as np\ndef f(x):\n    return np.exp(x)\n") == ["numpy", "np at line 3"]
    assert numpy_uses("from numpy import exp\n") == ["numpy"]
    assert numpy_uses("def f(x):\n    xp = get(x)\n    return xp.exp(x)\n") == []


def test_get_array_module_and_devices():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(minigpt.Tensor([1.0])) is np
    devices = minigpt.available_devices()
    assert devices[0] == "cpu" and set(devices) <= {"cpu", "cuda"}


def test_unknown_device_is_a_clear_error():
    with pytest.raises(backend.DeviceError, match="unknown device 'tpu'"):
        minigpt.Tensor([1.0], device="tpu")


def test_cuda_without_cupy_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes "import cupy" fail
    with pytest.raises(backend.DeviceError, match="CuPy, which is not installed"):
        minigpt.Tensor([1.0], device="cuda")
    assert minigpt.available_devices() == ["cpu"]


def test_cuda_without_a_gpu_says_so(monkeypatch):
    class FakeRuntime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    class FakeCupy:
        cuda = type("cuda", (), {"runtime": FakeRuntime})

    monkeypatch.setitem(sys.modules, "cupy", FakeCupy)
    with pytest.raises(backend.DeviceError, match="no CUDA GPU is usable"):
        backend.xp_for("cuda")


def test_importing_minigpt_does_not_import_cupy():
    import subprocess

    code = "import sys, minigpt; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rng_state_round_trip():
    minigpt.manual_seed(5)
    backend.generator().random(3)
    state = backend.get_rng_state()
    a = backend.generator().random(4)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.generator().random(4), a)


FAULTS_PER_ROUND = """
import resource, sys
import numpy as np
from minigpt import fast
kept = fast.keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(3):  # warm-up: the heap grows once
    a = np.ones(1 << 19, np.float32); b = np.ones(1 << 19, np.float32); del a, b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # 2 MiB blocks freed and allocated again, as a training step's activations are
    a = np.ones(1 << 19, np.float32); b = np.ones(1 << 19, np.float32); del a, b
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) only")
def test_keep_freed_memory_stops_the_page_faults_of_reallocation():
    import subprocess

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], capture_output=True, text=True, check=True)
        kept, per_round = out.stdout.split()
        return kept, float(per_round)

    kept, with_keep = faults("keep")
    if kept != "True":
        pytest.skip("this Linux's C library is not glibc (no mallopt)")
    _, default = faults("default")
    assert default > 500  # each round faults two fresh 2 MiB blocks in: 1024 pages of 4 KiB
    assert with_keep < 20  # the freed blocks are reused
