"""Array backends: NumPy on device "cpu", CuPy on device "cuda".

Every op in minigpt asks its inputs which array module they live in
(``xp = get_array_module(x)``) and then writes ``xp.exp``, ``xp.matmul``... so the
same line of code runs on the CPU and on a GPU. This is Chainer's trick.

CuPy is optional: it is imported only when something asks for device "cuda" or
meets a CuPy array, and asking for "cuda" without it gives a clear error.

This module is also the home of minigpt's random number generators, one per
device, which :func:`manual_seed` resets.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy

DEFAULT_DTYPE = numpy.float32
DEVICES = ("cpu", "cuda")


class DeviceError(RuntimeError):
    """Raised when a device is unknown or cannot be used on this machine."""


def _cupy_if_loaded() -> ModuleType | None:
    """CuPy if something already imported it, without importing it ourselves."""
    return sys.modules.get("cupy")


def _import_cupy() -> ModuleType:
    """Import CuPy and check that a GPU is visible, or say precisely what is missing."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported on demand
    except ImportError as e:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed "
            "(pip install \"cupy-cuda12x[ctk]>=14\": minigpt's cuda extra, docs/gpu.md)"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing, no GPU, ...
        raise DeviceError(f"device 'cuda': CuPy is installed but no CUDA GPU is usable ({e})") from e
    if count < 1:
        raise DeviceError("device 'cuda': CuPy is installed but no CUDA GPU was found")
    if id(cupy) not in _kernels_ran:
        _probe_kernels(cupy)
        _kernels_ran.add(id(cupy))
    return cupy


_kernels_ran: set[int] = set()  # the CuPy modules (by id) whose probe passed in this process


def _probe_kernels(cupy: ModuleType) -> None:
    """Run three tiny kernels, or raise DeviceError saying why they cannot run.

    Counting GPUs needs only the driver, but CuPy compiles its kernels when they are first used,
    with NVRTC, and multiplies matrices with cuBLAS: libraries of the CUDA toolkit, which the
    driver does not bring and the plain ``cupy-cuda12x`` wheel does not carry. Without them the
    first op of a run would fail deep inside training; one elementwise kernel, one reduction and
    one matrix product here make the choice of device fail (or ``"auto"`` fall back) instead."""
    try:
        a = cupy.arange(4, dtype=cupy.float32).reshape(2, 2)  # [[0, 1], [2, 3]]
        got = float((a * 2 + a @ a).sum())  # elementwise (NVRTC), matmul (cuBLAS), reduction
    except Exception as e:  # noqa: BLE001 - whatever CuPy raises, the GPU cannot be used
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DeviceError(f"device 'cuda': CuPy found a GPU but cannot run a kernel on it ({reason}); where a "
                          f"CUDA library (NVRTC, cuBLAS) is missing, pip install \"cupy-cuda12x[ctk]>=14\" brings "
                          f"them (minigpt's cuda extra, docs/gpu.md)") from e
    if got != 34.0:  # 2 * 6 + (2 + 3 + 6 + 11)
        raise DeviceError(f"device 'cuda': a test kernel computed {got} instead of 34.0")


def forget_kernel_probe() -> None:
    """Probe CuPy's kernels again at the next use of device "cuda" (after the CUDA libraries were
    installed in a running process; tests use it to swap devices)."""
    _kernels_ran.clear()


def cuda_unavailable_reason() -> str | None:
    """Why device "cuda" cannot be used here (CuPy missing, no GPU, its kernels cannot run), or
    None when it can."""
    try:
        _import_cupy()
    except DeviceError as e:
        return str(e)
    return None


def check_device(device: str | None) -> str:
    """Normalise a device name ("cpu", "cuda", "cuda:0"); None means "cpu"."""
    if device is None:
        return "cpu"
    name = str(device).split(":")[0]
    if name not in DEVICES:
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    return name


def xp_for(device: str | None) -> ModuleType:
    """The array module of a device: numpy for "cpu", cupy for "cuda"."""
    if check_device(device) == "cpu":
        return numpy
    return _import_cupy()


def unwrap(x: Any) -> Any:
    """The array inside a Tensor; anything else as it is.

    (Not ``getattr(x, "data", x)``: NumPy and CuPy arrays have a ``.data`` of their own,
    their raw memory buffer.)
    """
    return x.data if getattr(x, "_is_tensor", False) else x


def get_array_module(x: Any) -> ModuleType:
    """``numpy`` or ``cupy``, whichever ``x`` (an array or a Tensor) lives in."""
    x = unwrap(x)
    cupy = _cupy_if_loaded()
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy
    return numpy


def device_of(array: Any) -> str:
    """"cuda" for a CuPy array, "cpu" for anything else."""
    return "cpu" if get_array_module(array) is numpy else "cuda"


def available_devices() -> list[str]:
    """``["cpu"]``, or ``["cpu", "cuda"]`` where CuPy and a GPU are present."""
    return ["cpu"] if cuda_unavailable_reason() else ["cpu", "cuda"]


def to_numpy(array: Any) -> numpy.ndarray:
    """A NumPy array holding ``array``'s values (copied off the GPU if needed)."""
    if get_array_module(array) is numpy:
        return numpy.asarray(array)
    return array.get()


def writeable(array: Any) -> bool:
    """Whether an op may write into ``array`` (NumPy arrays can be read-only; CuPy's cannot)."""
    return getattr(array.flags, "writeable", True)


def ensure_array(x: Any) -> Any:
    """``x`` as an array: NumPy reductions return scalars (numpy.float32), not 0-d arrays."""
    if isinstance(x, numpy.generic):
        return numpy.asarray(x)
    return x


def move(array: Any, device: str) -> Any:
    """``array`` on ``device``; the same object when it is already there."""
    device = check_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return array.get()
    return xp_for("cuda").asarray(array)


# ----------------------------------------------------------------------------- randomness
# One NumPy Generator drives every random choice minigpt makes on the host: init, batches,
# sampling, and the CPU's dropout masks. On a GPU, dropout masks come from one cuRAND Philox
# generator that lives on the device, so that drawing a mask never involves the host. Its stream is
# numbered: stream n is seeded from (manual_seed's seed, n).
_SEED = 1337
_generator: numpy.random.Generator | None = None
_device_generator: tuple[ModuleType, Any] | None = None  # (cupy, its RandomState over cuRAND's Philox)
_device_stream = 0
_device_seeded = False  # whether the device generator was seeded for the current stream


def manual_seed(seed: int) -> None:
    """Seed every random choice minigpt makes (init, dropout, batches, sampling)."""
    global _SEED, _generator
    _SEED = int(seed)
    _generator = numpy.random.Generator(numpy.random.PCG64(_SEED))
    start_device_stream(0)


def generator() -> numpy.random.Generator:
    """minigpt's random generator (created from the current seed on first use)."""
    if _generator is None:
        manual_seed(_SEED)
    return _generator


def start_device_stream(n: int) -> None:
    """Draw the GPU's dropout masks from the start of stream number ``n`` from now on (cheap:
    the generator is re-seeded on the next draw, and only on a GPU).

    A CuPy generator's position in its stream cannot be read or saved (CuPy's documentation:
    "Random states cannot be serialized"), so a checkpoint cannot hold it. The training loop
    starts stream ``it`` before step ``it`` instead: a resumed run then draws exactly the masks
    of an uninterrupted one, and a step's masks depend on nothing but the seed and ``it``."""
    global _device_stream, _device_seeded
    _device_stream, _device_seeded = int(n), False


def start_host_stream(*key: int) -> None:
    """Draw the host's random numbers from the start of the stream seeded by (seed, *key) from now
    on. A data-parallel run starts stream (it, rank) before step ``it`` on each rank: every rank
    then drops its own dropout mask, and a resumed run draws the masks of an uninterrupted one.
    (A one-process run never calls this: its generator runs on from ``manual_seed``.)"""
    global _generator
    generator()  # the seed is set
    _generator = numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence((_SEED, *key))))


def device_stream_seed(seed: int, stream: int) -> numpy.uint64:
    """The 64-bit cuRAND seed of stream ``stream`` under ``manual_seed(seed)``: NumPy's
    SeedSequence mixes the pair, so that neighbouring streams get unrelated seeds."""
    return numpy.random.SeedSequence((seed, stream)).generate_state(1, numpy.uint64)[0]


def uniform(shape: tuple[int, ...], dtype: Any, device: str) -> Any:
    """Uniform [0, 1) samples of ``shape`` on ``device``: from minigpt's NumPy generator on the
    CPU; on a GPU from the device generator, seeded for the current stream (device work only,
    nothing copied from the host).

    The device generator is cuRAND's Philox4x32-10 through CuPy's ``RandomState``, built once.
    Philox is counter-based: its whole state is a key and an offset, so starting another stream
    re-seeds the same generator from the host (``seed`` sets the key and rewinds the offset to 0),
    allocating nothing, however many steps a run takes. (CuPy's ``Generator`` API would build a
    Philox state per thread, some megabytes, for each stream.)"""
    global _device_generator, _device_seeded
    if check_device(device) == "cpu":
        return generator().random(shape, dtype=numpy.dtype(dtype))
    cupy = _import_cupy()
    if _device_generator is None or _device_generator[0] is not cupy:  # (tests swap CuPy modules)
        philox = cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        _device_generator, _device_seeded = (cupy, cupy.random.RandomState(method=philox)), False
    if not _device_seeded:
        _device_generator[1].seed(device_stream_seed(_SEED, _device_stream))
        _device_seeded = True
    return _device_generator[1].random_sample(shape, dtype=dtype)


def get_rng_state() -> dict:
    """The generators' state as plain JSON-able data (for checkpoints): the NumPy generator's,
    and the number of the device's stream (restoring it restarts that stream from its start:
    see :func:`start_device_stream`)."""
    return {"seed": _SEED, "bit_generator": generator().bit_generator.state, "device_stream": _device_stream}


def set_rng_state(state: dict) -> None:
    """Restore the state saved by :func:`get_rng_state`."""
    manual_seed(state["seed"])
    generator().bit_generator.state = state["bit_generator"]
    start_device_stream(state.get("device_stream", 0))  # a checkpoint from before device streams: 0
