"""A fake CUDA device for tests: a module that stands where CuPy stands, backed by NumPy.

No GPU is lent to minigpt's CI, so its CuPy path would never run. This module runs it on the CPU,
as strict as CuPy where GPU mistakes hide: its ``ndarray`` wraps a NumPy array (``isinstance(a,
numpy.ndarray)`` is False); mixing it with a ``numpy.ndarray`` raises TypeError; ``numpy.asarray(a)``
raises, and only ``a.get()`` / ``asnumpy(a)`` copy to the host; reductions return 0-d device
arrays. Values are NumPy's own, so results equal a CPU run exactly (random streams differ from CuPy's).

It counts what costs time on a GPU, under the "file:line" that asked (``recorder``):
  "sync"  the host waits for a value: item(), tolist(), get(), asnumpy, float(), int(), bool(),
          complex(), repr()/str()/format(), a boolean-mask index (CuPy reads back how many
          entries it selects), nonzero-like functions, synchronize().
  "h2d"   host data copied to the device: asarray/array of anything but a device array, a host
          index (list, numpy array) in a[...], a host value stored through an array index.
  "call"  device work (about one kernel): a function, ufunc, operator or method that makes or
          writes data, or builds a random generator. Views are free: reshape, transpose, basic
          slicing, broadcast_to, asarray of a device array share their input's memory.

    from tests import fakecupy
    with fakecupy.installed():                # sys.modules["cupy"] is this module
        x = fakecupy.asarray(host_array)      # one "h2d"
        loss = model(Tensor(x))
    fakecupy.recorder.where("sync")           # Counter({"minigpt/functional.py:35": 2, ...})

Each CuPy behaviour copied here was read in CuPy's source (github.com/cupy/cupy): mostly
cupy/_core/core.pyx (ndarray), _core/_scalar.pyx (operands) and _core/_routines_indexing.pyx.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import operator
import os
import sys
import warnings
from types import ModuleType, SimpleNamespace
from typing import Any, Callable, Iterator

import numpy

__version__ = "14.0.0+fake"  # the CuPy it stands for (minigpt's cuda extra asks for CuPy 14)
_THIS_FILE = __file__
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
_MISSING = object()


# ----------------------------------------------------------------------------- the recorder
def _caller() -> str:
    """"path:line" of the first frame outside this file (path relative to the repository)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == _THIS_FILE:
        frame = frame.f_back
    if frame is None:
        return "?"
    path = os.path.relpath(frame.f_code.co_filename, _ROOT)
    if path.startswith(".."):  # outside the repository: keep it whole
        path = frame.f_code.co_filename
    return f"{path}:{frame.f_lineno}"


class Recorder:
    """Counts "sync", "h2d" and "call" events, each under the "file:line" that caused it."""

    def __init__(self) -> None:
        self._events = {kind: collections.Counter() for kind in ("sync", "h2d", "call")}

    def record(self, kind: str) -> None:
        """Count one event of ``kind`` at the caller's line; a "call" raises while kernels fail."""
        if kind == "call" and _kernel_failure is not None:
            raise RuntimeError(_kernel_failure)
        self._events[kind][_caller()] += 1

    def reset(self) -> None:
        """Forget every event."""
        for counter in self._events.values():
            counter.clear()

    def count(self, kind: str) -> int:
        """How many events of ``kind`` since the last reset."""
        return sum(self._events[kind].values())

    def where(self, kind: str) -> collections.Counter:
        """Events of ``kind`` per "file:line" (a copy)."""
        return collections.Counter(self._events[kind])


recorder = Recorder()
_kernel_failure: str | None = None  # while set, every kernel raises RuntimeError with this message


@contextlib.contextmanager
def installed(kernel_failure: str | None = None) -> Iterator[ModuleType]:
    """Put this module in ``sys.modules["cupy"]`` (where minigpt looks), restoring what was there.

    With ``kernel_failure``, the GPU is found (getDeviceCount says 1) but every kernel raises
    RuntimeError(kernel_failure), as CuPy does on a machine with the driver but without the CUDA
    toolkit's NVRTC ("CuPy failed to load libnvrtc.so.12: ...")."""
    global _kernel_failure
    before = sys.modules.get("cupy", _MISSING)
    sys.modules["cupy"] = sys.modules[__name__]
    _kernel_failure = kernel_failure
    try:
        yield sys.modules[__name__]
    finally:
        _kernel_failure = None
        if before is _MISSING:
            sys.modules.pop("cupy", None)
        else:
            sys.modules["cupy"] = before


# ----------------------------------------------------------------------------- the array
_SCALARS = (bool, int, float, complex, numpy.generic)


def _operand(x: Any) -> Any:
    """An operand of an operator: a device array, a Python or NumPy scalar; nothing else (CuPy's
    CScalar, _core/_scalar.pyx, refuses any other type: a numpy.ndarray, even a 0-d one)."""
    if isinstance(x, ndarray):
        return x._array
    if isinstance(x, _SCALARS):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


def _defers(other: Any) -> bool:
    """Whether an operator returns NotImplemented so that ``other`` handles it: CuPy's
    ``_should_use_rop`` (core.pyx), which hands minigpt's Tensor (priority 1000) ``array * tensor``."""
    ufunc = getattr(type(other), "__array_ufunc__", _MISSING)
    if ufunc is not _MISSING:
        return ufunc is None
    return getattr(other, "__array_priority__", 0) > ndarray.__array_priority__


class ndarray:
    """A device array: a NumPy array that host code reaches only through get()."""

    __array_priority__ = 100  # CuPy's
    __slots__ = ("_array", "_base")
    __hash__ = None  # mutable, like every array

    @classmethod
    def _make(cls, data: Any, base: ndarray | None = None) -> ndarray:
        """Wrap NumPy's result (a NumPy scalar becomes a 0-d array); ``base``: what it views."""
        a = cls.__new__(cls)
        a._array = numpy.asarray(data)
        a._base = None if base is None else base._base if base._base is not None else base
        return a

    # metadata: free
    base = property(lambda self: self._base)
    T = property(lambda self: self.transpose())
    device = property(lambda self: cuda.Device(0))
    flags = property(lambda self: SimpleNamespace(  # CuPy's flags have no "writeable"
        c_contiguous=self._array.flags.c_contiguous, f_contiguous=self._array.flags.f_contiguous,
        owndata=self._base is None))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._array)

    def __iter__(self) -> Iterator[ndarray]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))  # views, no sync (as CuPy)

    # to the host: each a "sync"; as in core.pyx, every conversion goes through get()
    def __array__(self, dtype: Any = None, copy: Any = None) -> numpy.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream: Any = None, order: str = "C", out: numpy.ndarray | None = None,
            blocking: bool = True) -> numpy.ndarray:
        """A NumPy copy of the array (a sync)."""
        recorder.record("sync")
        if out is None:
            return self._array.copy(order=order)
        out[...] = self._array
        return out

    def item(self) -> Any:
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._host(numpy.ndarray.item)

    def _host(self, convert: Callable) -> Any:
        recorder.record("sync")
        return convert(self._array)

    def __bool__(self) -> bool:
        if self.size == 0:  # CuPy still answers False here (NumPy 2 raises)
            warnings.warn("The truth value of an empty array is ambiguous.", DeprecationWarning)
            return False
        if self.size > 1:
            raise ValueError("The truth value of an array with more than one element is "
                             "ambiguous. Use a.any() or a.all()")
        return self._host(bool)

    # indexes, as CuPy's _core/_routines_indexing.pyx takes them
    def __getitem__(self, key: Any) -> ndarray:
        """Basic indexes give views (free); array indexes make a new array (a call)."""
        key, advanced = _index(key, self._array.shape)
        if not advanced:
            if not any(part is Ellipsis for part in key):
                key += (Ellipsis,)  # so that a[0, 0] is a 0-d view, not a NumPy scalar
            return ndarray._make(self._array[key], base=self)
        recorder.record("call")
        return ndarray._make(self._array[key])

    def __setitem__(self, key: Any, value: Any) -> None:
        key, advanced = _index(key, self._array.shape)
        if isinstance(value, ndarray):
            value = value._array
        elif advanced:  # CuPy makes any other value a device array first
            recorder.record("h2d")
            value = numpy.array(value)
        elif numpy.ndim(value) != 0:  # a basic index fills: host arrays refused (CuPy gh-2079)
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        recorder.record("call")
        self._array[key] = value

    # numpy.exp(a), numpy.concatenate([a]) run this module's function, as CuPy's core.pyx does
    def __array_ufunc__(self, np_ufunc: numpy.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            if len(kwargs["out"]) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            kwargs["out"] = kwargs["out"][0]
        if np_ufunc.__name__ in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"):
            inputs = tuple(x.item() if isinstance(x, numpy.ndarray) and x.ndim == 0 else x for x in inputs)
        device_ufunc = _device_attr(np_ufunc.__name__)
        return (device_ufunc if method == "__call__" else getattr(device_ufunc, method))(*inputs, **kwargs)

    def __array_function__(self, func: Callable, types: Any, args: Any, kwargs: Any) -> Any:
        if not all(issubclass(t, ndarray) for t in types):
            return NotImplemented
        device_func = getattr(sys.modules[__name__], func.__name__, None)
        if func.__module__ != "numpy" or device_func is None:
            return NotImplemented
        return device_func(*args, **kwargs)


for _name in ("shape", "dtype", "ndim", "size", "nbytes", "itemsize", "strides"):
    setattr(ndarray, _name, property(lambda self, _name=_name: getattr(self._array, _name)))
for _name, _convert in (("tolist", numpy.ndarray.tolist), ("__float__", float), ("__int__", int),
                        ("__complex__", complex), ("__repr__", repr), ("__str__", str)):
    setattr(ndarray, _name, lambda self, _convert=_convert: self._host(_convert))
ndarray.__format__ = lambda self, spec: self._host(lambda a: format(a, spec))
ndarray.__copy__ = ndarray.__deepcopy__ = lambda self, memo=None: self.copy()  # a device copy


def _index(key: Any, shape: tuple | None = None) -> tuple[tuple, bool]:
    """``key`` as a tuple for NumPy, and whether it holds an (integer or boolean) array.
    A host index is copied to the device (h2d); a mask syncs (CuPy reads its count back)."""
    parts, advanced = [], False
    for part in key if isinstance(key, tuple) else (key,):
        if isinstance(part, ndarray):
            part = part._array
        elif isinstance(part, (numpy.ndarray, list, tuple, bool, numpy.bool_)):
            recorder.record("h2d")
            part = numpy.array(part)
        if isinstance(part, numpy.ndarray):
            advanced = True
            if part.dtype == bool:
                recorder.record("sync")
        parts.append(part)
    if advanced and shape is not None and not any(p is Ellipsis for p in parts):
        parts = _wrapped(parts, shape)
    return tuple(parts), advanced


def _wrapped(parts: list, shape: tuple) -> list:
    """Integer-array index parts wrapped around their axis, as CuPy's advanced indexing does (an
    out-of-range index reads another row where NumPy raises; cupy's docs, "Differences between CuPy
    and NumPy"). Code that needs NumPy's check must make it itself on a GPU."""
    out, axis = [], 0
    for part in parts:
        if isinstance(part, numpy.ndarray) and part.dtype != bool and part.dtype.kind in "iu":
            out.append(part % shape[axis] if axis < len(shape) and shape[axis] else part)
            axis += 1
        else:
            out.append(part)
            if part is not None:
                axis += part.ndim if isinstance(part, numpy.ndarray) else 1  # a mask takes its ndim axes
    return out


def _operator(op: Callable, reflected: bool = False, inplace: bool = False) -> Callable:
    """An operator method running ``op`` on the arrays inside (a call)."""
    def method(self: ndarray, other: Any) -> Any:
        if not (reflected or inplace) and _defers(other):
            return NotImplemented
        other = _operand(other)
        recorder.record("call")
        if inplace:
            op(self._array, other)  # writes through: a view's += changes its base
            return self
        return ndarray._make(op(other, self._array) if reflected else op(self._array, other))
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    setattr(ndarray, f"__{_name}__", _operator(_op))
    setattr(ndarray, f"__r{_name}__", _operator(_op, reflected=True))
    setattr(ndarray, f"__i{_name}__", _operator(getattr(operator, "i" + _name), inplace=True))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):  # Python turns a < b into b > a itself
    setattr(ndarray, f"__{_name}__", _operator(getattr(operator, _name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", lambda self, _op=getattr(operator, _name): _run(_op, "", (self,), {}))


# ----------------------------------------------------------------------------- functions
# NumPy's functions, run on the arrays inside. A call is free when its result views an input and
# it wrote nothing; metadata functions never count; these ones sync inside CuPy's own code:
_SYNCING = {"nonzero", "argwhere", "flatnonzero", "unique", "extract", "compress", "unravel_index"}
_METADATA = {"result_type", "promote_types", "can_cast", "issubdtype", "isdtype", "isscalar",
             "ndim", "shape", "size", "broadcast_shapes"}


def _unwrap(x: Any, inputs: list) -> Any:
    """``x`` with each device array (in lists and tuples too) replaced by its NumPy array and
    added to ``inputs``. A numpy.ndarray raises: CuPy functions do not take host arrays."""
    if isinstance(x, ndarray):
        inputs.append(x)
        return x._array
    if isinstance(x, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(x)}: a host array on the device (use asarray)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, inputs) for v in x)
    return x


def _wrap(result: Any, inputs: list, fresh: list) -> Any:
    """NumPy's ``result`` as device arrays (scalars as 0-d ones); new data is noted in ``fresh``."""
    if isinstance(result, (list, tuple)):
        return type(result)(_wrap(r, inputs, fresh) for r in result)
    if not isinstance(result, (numpy.ndarray,) + _SCALARS):
        return result
    for x in inputs:
        if result is x._array:  # asarray of a device array, out=: the very same array
            return x
    base = next((x for x in inputs if numpy.may_share_memory(result, x._array)), None)
    if base is None:
        fresh.append(result)
    return ndarray._make(result, base)


# Reductions that take an axis. NumPy lets a 0-d array reduce over axis 0 or -1; CuPy does not
# (cupy/_core/_reduction.pyx normalises each axis against ndim 0 and raises AxisError)
_REDUCTIONS = {"sum", "mean", "prod", "max", "min", "amax", "amin", "argmax", "argmin", "any", "all", "std",
               "var", "cumsum", "cumprod", "nansum", "nanmax", "nanmin", "nanmean", "count_nonzero"}


def _check_axis_of_0d(args: tuple, kwargs: dict) -> None:
    axis = kwargs.get("axis", args[1] if len(args) > 1 else None)
    first = args[0] if args else None
    if isinstance(first, ndarray) and first.ndim == 0 and axis is not None and axis != ():
        raise numpy.exceptions.AxisError(f"axis {axis} is out of bounds for array of dimension 0")


def _run(func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
    """Call NumPy's ``func`` on device arrays as the device function ``name``, and count it."""
    if name in _REDUCTIONS:
        _check_axis_of_0d(args, kwargs)
    inputs: list = []
    args, kwargs = _unwrap(args, inputs), {k: _unwrap(v, inputs) for k, v in kwargs.items()}
    result = func(*args, **kwargs)
    if name in _METADATA:
        return result
    fresh: list = []
    wrapped = _wrap(result, inputs, fresh)
    if result is None or fresh or kwargs.get("out") is not None:
        recorder.record("call")
    if name in _SYNCING or (name == "where" and len(args) == 1):
        recorder.record("sync")
    return wrapped


for _name in ("reshape", "transpose", "swapaxes", "squeeze", "ravel", "flatten", "view", "copy",
              "astype", "fill", "sum", "mean", "prod", "max", "min", "argmax", "argmin", "any", "all",
              "std", "var", "cumsum", "clip", "round", "dot", "take", "repeat", "nonzero", "sort"):
    setattr(ndarray, _name, lambda self, *args, _name=_name, **kwargs:
            _run(getattr(numpy.ndarray, _name), _name, (self,) + args, kwargs))


# What CuPy's ufuncs do beyond a call (cupy/_core/_kernel.pyx, _routines_indexing.pyx): outer for
# every ufunc; reduce and accumulate for add and multiply only, reduceat for add only; at only for
# the ufuncs with a scatter kernel, and there only for the dtypes its atomic operations take
_REDUCE = {"reduce": {"add", "multiply"}, "accumulate": {"add", "multiply"}, "reduceat": {"add"}}
_I32, _U32, _I64, _U64 = (numpy.dtype(t) for t in ("int32", "uint32", "int64", "uint64"))
_F16, _F32, _F64 = (numpy.dtype(t) for t in ("float16", "float32", "float64"))
_SCATTER = {"add": {_I32, _F16, _F32, _F64, _U32, _U64}, "subtract": {_I32, _U32},
            "maximum": {_I32, _F32, _F64, _U32, _U64}, "minimum": {_I32, _F32, _F64, _U32, _U64},
            **{f"bitwise_{op}": {_I32, _I64, _U32, _U64} for op in ("and", "or", "xor")}}


class ufunc:
    """A NumPy ufunc on device arrays: call it, or use what CuPy's ufunc of that name has of at,
    reduce, accumulate, outer and reduceat (the rest raise NotImplementedError, as CuPy's)."""

    def __init__(self, np_ufunc: numpy.ufunc) -> None:
        self._ufunc, self.__name__ = np_ufunc, np_ufunc.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _run(self._ufunc, self.__name__, args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return _run(self._ufunc.outer, self.__name__, args, kwargs)

    def __getattr__(self, method: str) -> Callable:
        if method not in _REDUCE:
            raise AttributeError(method)
        if self.__name__ not in _REDUCE[method]:
            raise NotImplementedError(f"`cupy_{self.__name__}.{method}` is not supported yet")

        def run(*args: Any, **kwargs: Any) -> Any:
            unknown = set(kwargs) - {"axis", "dtype", "out", "keepdims"}  # CuPy's signature: no initial, where
            if unknown:
                raise TypeError(f"{method}() got an unexpected keyword argument {sorted(unknown)[0]!r}")
            return _run(getattr(self._ufunc, method), self.__name__, args, kwargs)
        return run

    def at(self, a: ndarray, indices: Any, b: Any = None) -> None:
        """``a[indices] op= b`` unbuffered, through CuPy's scatter kernels: integer-array indices
        wrap around their axis, and only the dtypes that CUDA's atomics take are accepted."""
        if self.__name__ not in _SCATTER:
            raise NotImplementedError(f"`cupy_{self.__name__}.at` is not supported yet")
        key, advanced = _index(indices, a.shape)
        integer = any(isinstance(p, numpy.ndarray) and p.dtype.kind in "iu" for p in key)
        if advanced and integer and a.dtype not in _SCATTER[self.__name__]:
            kinds = ", ".join(sorted(str(t) for t in _SCATTER[self.__name__]))
            raise TypeError(f"cupy.{self.__name__}.at only supports {kinds} as data type")
        if isinstance(b, (numpy.ndarray, list, tuple)):  # CuPy copies the values to the device (core.array)
            recorder.record("h2d")
            b = ndarray._make(numpy.array(b))
        recorder.record("call")
        self._ufunc.at(a._array, key if len(key) > 1 else key[0], *(() if b is None else (_operand(b),)))


_cache: dict = {}


def _device_attr(name: str) -> Any:
    """``numpy.name`` for device arrays: functions and ufuncs wrapped; types (float32, dtype,
    finfo...) and constants (inf, pi, newaxis) as they are."""
    if name not in _cache:
        value = getattr(numpy, name)
        if isinstance(value, ModuleType):
            raise AttributeError(f"fakecupy has no submodule {name!r}")
        if isinstance(value, numpy.ufunc) and name != "matmul":  # CuPy's matmul is a gufunc: no methods
            value = ufunc(value)
        elif callable(value) and not isinstance(value, type):
            value = functools.wraps(value)(lambda *args, _f=value, **kwargs: _run(_f, name, args, kwargs))
        _cache[name] = value
    return _cache[name]


# The names CuPy has (tests/cupy_names.txt, read from CuPy's own cupy/__init__.py): a NumPy name
# outside it (errstate, vecdot, nditer...) is refused, as a GPU would refuse it, so code that reaches
# for it through its array module fails here and not first on a real GPU
CUPY_NAMES = frozenset(line.strip() for line in open(os.path.join(os.path.dirname(_THIS_FILE), "cupy_names.txt"))
                       if line.strip() and not line.startswith("#"))


def __getattr__(name: str) -> Any:
    """``fakecupy.exp``, ``fakecupy.float32``...: NumPy's, for device arrays (PEP 562)."""
    if name.startswith("_"):  # __path__, __wrapped__...: this module is no package
        raise AttributeError(name)
    if name not in CUPY_NAMES:
        raise AttributeError(f"module 'cupy' has no attribute '{name}'")
    return _device_attr(name)


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    """``a`` on the device: a device array as it is (cast if ``dtype`` says so), anything else
    copied over from the host (an "h2d")."""
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    return array(a, dtype=dtype, order=order)


def array(obj: Any, dtype: Any = None, copy: bool = True, order: Any = "K", ndmin: int = 0) -> ndarray:
    """A new device array: a device copy of device arrays, or host data copied over (an "h2d")."""
    on_device = isinstance(obj, ndarray) or (isinstance(obj, (list, tuple)) and
                                             any(isinstance(x, ndarray) for x in obj))
    if on_device:  # a copy, or a stack of device arrays
        return _run(numpy.array, "array", (obj,), dict(dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    recorder.record("h2d")
    return ndarray._make(numpy.array(obj, dtype=dtype, copy=True, order=order or "K", ndmin=ndmin))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> numpy.ndarray:
    """``a`` on the host: a device array is copied back (a sync), anything else as NumPy's."""
    if isinstance(a, ndarray):
        return a.get(stream, order, out, blocking)
    return numpy.asarray(a, order=order)


def get_array_module(*args: Any) -> ModuleType:
    """This module if any argument is a device array, else numpy."""
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else numpy


def unravel_index(indices: Any, shape: Any, order: str = "C") -> tuple:
    """NumPy's, for a device array of indices only: CuPy's (cupy/_indexing/generate.py) calls
    ``can_cast(indices, int64)``, which NumPy 2 refuses for a Python int; it also syncs."""
    if not isinstance(indices, ndarray):
        raise TypeError(f"unravel_index: indices must be a device array, not {type(indices)}")
    return _run(numpy.unravel_index, "unravel_index", (indices, shape), {"order": order})


# ----------------------------------------------------------------------------- random
class Generator:
    """``cupy.random.default_rng(seed)`` and ``cupy.random.Generator(bit_generator)``, with a
    NumPy generator underneath (MT19937: it takes 64-bit seeds, as CuPy's do).
    Building one is a call (it seeds a state on the device), and so is each draw."""

    def __init__(self, seed: Any = None) -> None:
        recorder.record("call")
        if isinstance(seed, Philox4x3210):  # Generator(bit_generator), the new API
            self._gen = numpy.random.Generator(seed.bit_generator)
        else:
            self.seed(seed)

    def seed(self, seed: int | None = None) -> None:
        self._gen = numpy.random.Generator(numpy.random.MT19937(seed))

    def _drawn(self, values: numpy.ndarray) -> ndarray:
        recorder.record("call")
        return ndarray._make(values)

    def random(self, size: Any = None, dtype: Any = float) -> ndarray:
        return self._drawn(self._gen.random(size, dtype=dtype))

    def standard_normal(self, size: Any = None, dtype: Any = float) -> ndarray:
        return self._drawn(self._gen.standard_normal(size, dtype=dtype))

    def integers(self, low: int, high: int | None = None, size: Any = None, dtype: Any = numpy.int64,
                 endpoint: bool = False) -> ndarray:
        return self._drawn(self._gen.integers(low, high, size, dtype=dtype, endpoint=endpoint))



class Philox4x3210:
    """``cupy.random.Philox4x3210(seed)``, a counter-based bit generator for ``Generator``
    (NumPy's Philox underneath; the seed may be an int or a numpy SeedSequence, as CuPy's)."""

    def __init__(self, seed: Any = None) -> None:
        self.bit_generator = numpy.random.Philox(seed)


class RandomState:
    """``cupy.random.RandomState(seed, method)``: a generator of cuRAND's host API. Building one is
    a call (cuRAND allocates its state on the device); ``seed`` is host work only (it sets the
    key and rewinds the offset); each draw is two calls. As CuPy's, the seed is an integer in
    [0, 2**64) and ``random_sample`` draws float32 or float64 only. (NumPy's Philox underneath,
    whatever the method: the streams differ from cuRAND's, the rules do not.)"""

    def __init__(self, seed: Any = None, method: int = 100) -> None:
        recorder.record("call")
        self.method = method
        self.seed(seed)

    def seed(self, seed: Any = None) -> None:
        if seed is not None:
            value = numpy.asarray(seed)
            if value.dtype.kind not in "biu":
                raise TypeError("Seed must be an integer.")
            if not 0 <= int(value) < 2**64:
                raise ValueError("Seed must be an integer between 0 and 2**64 - 1")
            seed = int(value)
        self._gen = numpy.random.Generator(numpy.random.Philox(seed))

    def random_sample(self, size: Any = None, dtype: Any = float) -> ndarray:
        """Two calls, as CuPy's: cuRAND draws in (0, 1], then a kernel maps 1 to 0."""
        dtype = numpy.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError(f"cupy.random only supports float32 and float64 (not {dtype})")
        recorder.record("call")
        recorder.record("call")
        return ndarray._make(self._gen.random(size, dtype=dtype))


random = SimpleNamespace(default_rng=Generator, Generator=Generator, RandomState=RandomState,
                         Philox4x3210=Philox4x3210)
# cuRAND's generator kinds (cupy_backends/cuda/libs/curand.pyx)
curand = SimpleNamespace(CURAND_RNG_PSEUDO_DEFAULT=100, CURAND_RNG_PSEUDO_XORWOW=101,
                         CURAND_RNG_PSEUDO_MRG32K3A=121, CURAND_RNG_PSEUDO_MTGP32=141,
                         CURAND_RNG_PSEUDO_MT19937=142, CURAND_RNG_PSEUDO_PHILOX4_32_10=161)


# ----------------------------------------------------------------------------- cuda stubs
class _Device:
    """``cupy.cuda.Device(0)``, standing for ``Stream.null`` too: synchronize() is a sync."""

    def __init__(self, device: int = 0) -> None:
        self.id = int(device)

    def synchronize(self) -> None:
        recorder.record("sync")

    def use(self) -> _Device:
        return self

    __enter__ = use
    __exit__ = lambda self, *exc: None  # noqa: E731


def _device_properties(device: int) -> dict[str, Any]:
    """``cupy.cuda.runtime.getDeviceProperties(i)``: a dict whose "name" is bytes, as CUDA's."""
    if device != 0:
        raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device}")
    return {"name": b"fakecupy (NumPy on the CPU)", "totalGlobalMem": 16 << 30, "major": 8, "minor": 0,
            "multiProcessorCount": 1}


cuda = SimpleNamespace(Device=_Device, Stream=SimpleNamespace(null=_Device()), is_available=lambda: True,
                       runtime=SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=_device_properties), curand=curand,
                       get_device_id=lambda: 0)
_pool = SimpleNamespace(used_bytes=lambda: 0, total_bytes=lambda: 0, free_all_blocks=lambda: None)


def get_default_memory_pool() -> SimpleNamespace:
    """A memory pool stub: nothing used, nothing to free."""
    return _pool

