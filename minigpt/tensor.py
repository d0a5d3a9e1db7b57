"""The autograd core: ``Tensor``, the op base class ``Function``, ``backward`` and ``no_grad``.

How reverse-mode autodiff works here, in four sentences:
1. Every op is a ``Function`` subclass with a ``forward`` (arrays in, array out) and a
   ``backward`` (the gradient of the output in, the gradients of the inputs out).
2. ``Function.apply`` runs ``forward`` and, when some input needs a gradient, gives the
   output tensor a ``_ctx``: the op instance, which remembers its input tensors and
   whatever ``forward`` saved for ``backward``.
3. ``Tensor.backward`` sorts the graph topologically (with an explicit stack, so graph
   depth is unlimited) and walks it from the output back to the leaves, calling each
   op's ``backward`` once with the sum of every gradient that reached its output.
4. Leaves (tensors made by the user, such as parameters) add what reaches them into
   ``.grad``: gradients ACCUMULATE across calls until ``zero_grad``.

A Tensor's operators (``a + b``, ``a @ b``, ``.sum()``, ``.reshape()``, ``.to()``...) are ops too:
minigpt/ops.py defines each one with its backward and gives it to Tensor, so that imports run
one way (ops.py imports this module, never the reverse).

Shape letters used across minigpt: B batch, T time, C channels, V vocab, nh heads, hs head size.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

from minigpt import backend

_grad_enabled = True


class no_grad:
    """Context manager (and decorator) inside which no op records a graph.

    >>> with no_grad():
    ...     y = model(x)        # y.requires_grad is False, nothing is saved for backward
    """

    def __enter__(self) -> None:
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc: Any) -> None:
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


def is_grad_enabled() -> bool:
    """False inside ``no_grad()``."""
    return _grad_enabled


def _is_float(dtype: Any) -> bool:
    return getattr(dtype, "kind", None) == "f"


class BackwardError(RuntimeError):
    """An op's backward returned a gradient that cannot be its input's: another shape (a
    missing unbroadcast or reshape), or a float of lower precision than the input."""


def _checked_input_grad(ctx: Function, i: int, inp: Tensor, grad: Any) -> Any:
    """``grad``, the gradient op ``ctx`` returned for its input ``i``, checked against ``inp``.

    Shapes must match exactly: NumPy would broadcast a (1, 3, 4) gradient into a (3, 4) one
    with ``+=``, or store it as the leaf's ``.grad``, and the bug would surface far away.
    A float32 gradient for a float64 input silently loses precision: an error too. A more
    precise one (float64 for float32, as float32 * float64 gives) is cast to the input's dtype.
    Only shapes and dtypes are compared: this runs for every op of every training step.
    """
    shape, dtype = getattr(grad, "shape", None), getattr(grad, "dtype", None)
    if shape != inp.shape:
        raise BackwardError(f"{type(ctx).__name__}.backward returned a gradient of shape {shape} for its "
                            f"input {i}, whose shape is {inp.shape}")
    if dtype != inp.dtype:
        if _is_float(dtype) and dtype.itemsize < inp.dtype.itemsize:
            raise BackwardError(f"{type(ctx).__name__}.backward returned a {dtype} gradient for its input {i}, "
                                f"which is {inp.dtype}: precision would be lost")
        grad = grad.astype(inp.dtype)
    return grad


class Tensor:
    """An array (NumPy or CuPy) that remembers how it was computed, for backprop.

    ``Tensor(data, requires_grad=False, device=None, dtype=None)``: ``data`` is anything
    array-like. Python floats become float32 (minigpt's default), Python ints int64, and
    arrays keep their dtype unless ``dtype`` is given. ``device`` defaults to where
    ``data`` already lives ("cpu" for Python data).
    """

    _is_tensor = True  # how backend.unwrap recognises a Tensor without importing this module
    __array_priority__ = 1000  # numpy_array * tensor -> Tensor.__rmul__, not an object array

    def __init__(self, data: Any, requires_grad: bool = False, device: str | None = None,
                 dtype: Any = None) -> None:
        if isinstance(data, Tensor):
            data = data.data
        if device is None:
            device = backend.device_of(data)
        xp = backend.xp_for(device)
        if hasattr(data, "dtype"):  # an array: onto the device first, then cast there
            data = backend.move(data, device)
        elif dtype is None:
            data = xp.asarray(data)
            if data.dtype.kind == "f":  # Python floats: float32, as torch.tensor does
                data = data.astype(backend.DEFAULT_DTYPE)
        data = xp.asarray(data, dtype=dtype)
        if data.dtype.kind not in "biufc":  # strings, objects, dates: not numbers an op can use
            raise TypeError(f"a Tensor holds numbers (bool, int, float, complex), not {data.dtype}")
        if requires_grad and not _is_float(data.dtype):
            raise TypeError(f"only floating-point tensors can require grad, not {data.dtype}")
        self.data = data
        self.grad: Any = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None  # the op that made this tensor (None for leaves)

    @classmethod
    def _wrap(cls, data: Any) -> Tensor:
        """A Tensor around an op's output array, without __init__'s conversions."""
        t = cls.__new__(cls)
        t.data = backend.ensure_array(data)
        t.grad, t.requires_grad, t._ctx = None, False, None
        return t

    # ------------------------------------------------------------------ basic attributes
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    device = property(lambda self: backend.device_of(self.data))
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._ctx is None)
    # the op that made this tensor (None for a leaf): a Function, whose .inputs are the tensors it read
    grad_fn = property(lambda self: self._ctx)

    def __repr__(self) -> str:
        """The values, then shape, dtype, device and how the tensor was made: ``grad_fn=<Op>`` for
        the result of an op that records a graph (as torch's grad_fn), ``requires_grad=True`` for a
        leaf that collects a gradient. Large arrays are summarised, as NumPy prints them."""
        values = backend.to_numpy(self.data)
        body = backend.numpy.array2string(values, separator=", ", prefix="Tensor(", threshold=100, edgeitems=3)
        made = (f", grad_fn=<{type(self.grad_fn).__name__}>" if self.grad_fn is not None else
                ", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({body}, shape={self.shape}, dtype={self.dtype}, device={self.device!r}{made})"

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> Any:
        """A NumPy copy of the data (from the GPU if needed)."""
        return backend.to_numpy(self.data).copy()

    def item(self) -> float | int:
        """The single value of a one-element tensor as a Python number."""
        return self.data.item()

    def tolist(self) -> Any:
        return backend.to_numpy(self.data).tolist()

    def detach(self) -> Tensor:
        """The same data, cut off from the graph."""
        return Tensor(self.data)

    @property
    def xp(self) -> Any:
        return backend.get_array_module(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------------ backprop
    def backward(self, grad: Any = None) -> None:
        """Backpropagate from this tensor, adding ∂self/∂leaf into every leaf's ``.grad``.

        ``grad`` is the gradient flowing into this tensor (an array or Tensor of its
        shape); without it the tensor must hold one element and the gradient is 1.
        The graph's saved arrays are freed as backward goes (as torch does without
        ``retain_graph``), so a graph can be backpropagated once.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input of its graph has requires_grad=True, or it was made in no_grad())")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single value, not shape {self.shape}")
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = xp.array(backend.unwrap(grad), dtype=self.dtype, copy=True)  # ops may not see the caller's array
            if grad.shape != self.shape:
                raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)
        grads: dict[int, Any] = {id(self): grad}
        for node in reversed(order):  # outputs before the inputs they were made from
            g = grads.pop(id(node), None)
            if g is None:
                continue
            ctx = node._ctx
            if ctx is None:  # a leaf: accumulate, in a buffer it owns
                if node.grad is None:
                    node.grad = xp.array(g, dtype=node.dtype, copy=True)
                else:
                    node.grad += g
                continue
            if ctx.saved is _RELEASED:
                raise RuntimeError("backward through a graph a second time: its saved values were freed")
            input_grads = ctx.backward(g)
            ctx.release()
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for i, (inp, gi) in enumerate(zip(ctx.inputs, input_grads)):
                if gi is None or inp is None or not inp.requires_grad:
                    continue
                gi = _checked_input_grad(ctx, i, inp, gi)  # its input's shape and dtype, or BackwardError
                key = id(inp)
                # new array, never +=: the stored gradient may be an alias of another one
                grads[key] = gi if key not in grads else grads[key] + gi


def _topological_order(root: Tensor) -> list[Tensor]:
    """Every tensor that needs a gradient in root's graph, each after all its inputs.

    Depth-first search with an explicit stack (no recursion limit): a node is pushed
    twice, once to expand its inputs and once, marked done, to be emitted after them.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for inp in node._ctx.inputs:
                if inp is not None and inp.requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


_RELEASED = object()


class Function:
    """Base class of every op: a ``forward`` on arrays and a hand-written ``backward``.

    Subclasses implement
      ``forward(self, *arrays, **options) -> array``: the math, on plain arrays. It may
          keep what backward needs in ``self.saved`` (or other attributes).
      ``backward(self, grad_out) -> grad or tuple of grads``: one gradient (array or
          None) per positional input, each of that input's shape.
    ``self.needs_input_grad[i]`` says whether input ``i`` needs a gradient (all False inside
    ``no_grad``), so forward can skip saving and backward can skip work (``linear`` never
    computes dx for the first layer's input).
    """

    inputs: tuple[Tensor | None, ...]
    needs_input_grad: tuple[bool, ...]
    saved: Any = None

    @classmethod
    def apply(cls, *args: Any, **options: Any) -> Tensor:
        """Run the op on Tensors (or arrays / numbers) and record it in the graph."""
        ctx = cls()
        tensors = tuple(a if isinstance(a, Tensor) else None for a in args)
        ctx.needs_input_grad = tuple(_grad_enabled and t is not None and t.requires_grad for t in tensors)
        arrays = [t.data if t is not None else a for t, a in zip(tensors, args)]
        out = Tensor._wrap(ctx.forward(*arrays, **options))
        if _grad_enabled and any(ctx.needs_input_grad):
            out.requires_grad = True
            out._ctx = ctx
            ctx.inputs = tensors
        return out

    def forward(self, *arrays: Any, **options: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad_out: Any) -> Any:
        raise NotImplementedError

    def release(self) -> None:
        """Free what forward saved, once backward has used it."""
        self.saved = _RELEASED


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` down to ``shape``: the backward of numpy broadcasting.

    Broadcasting copied the input along new leading axes and along axes of size 1;
    each copy received its own gradient, so the input's gradient is their sum.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if ones:
        grad = grad.sum(axis=ones, keepdims=True)
    return grad


def iter_tensors(values: Any) -> Iterator[Tensor]:
    """The tensors of an iterable, or a single tensor (for clip_grad_norm_ & co)."""
    if isinstance(values, Tensor):
        yield values
    else:
        yield from values

