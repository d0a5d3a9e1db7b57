"""minigpt's ops against PyTorch's own test samples (the `peer` extra: PyTorch and expecttest;
skipped where they are not installed).

PyTorch describes each of its ops by an OpInfo whose ``sample_inputs`` are the cases its own test
suite runs: odd shapes, 0-d tensors, empty tensors, negative axes, broadcasting. Every sample that
lies inside minigpt's API (API.md: the Tensor operators and minigpt.functional) runs here through
minigpt, the reference ops and the fast twins, forward and backward, and must match PyTorch. A
sample outside the API (a ``dtype=`` argument, class weights, an attention mask...) is counted as
outside with its reason, never as a pass; each op must have samples inside."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the peer extra (PyTorch) is not installed")
pytest.importorskip("expecttest", reason="the peer extra (expecttest, which PyTorch's OpInfos import) is not installed")

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

import minigpt  # noqa: E402
from minigpt import Tensor, backend, fast  # noqa: E402
from minigpt import functional as F  # noqa: E402
from tests import fakecupy  # noqa: E402

OPS = {(op.name, op.variant_test_name): op for op in op_db}
# torch.testing.assert_close's defaults per dtype. Attention's float32 gradients are sums over
# the keys of products of scores that reach ~100 in these samples: PyTorch's own float32 kernels
# differ from float64 there by 1e-5 of the largest value, so there atol is per unit of it.
TOLERANCE = {torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}
SCALED_ATOL = {("nn.functional.scaled_dot_product_attention", "")}


def close(got: np.ndarray, want: np.ndarray, dtype: Any, key: tuple[str, str]) -> bool:
    rtol, atol = TOLERANCE[dtype]
    if key in SCALED_ATOL and dtype == torch.float32:
        finite = np.abs(want[np.isfinite(want)])
        rtol, atol = 2e-4, 2e-5 * max(1.0, float(finite.max()) if finite.size else 1.0)
    return (got.shape == want.shape and got.dtype == want.dtype
            and np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True))


class Outside(Exception):
    """The sample uses something minigpt's API does not have."""


class Converted:
    """Torch tensors of a sample as minigpt Tensors (float, keeping requires_grad) or arrays
    (integers), on the device of ``xp`` (NumPy, or the fake CuPy), each converted once, so that a
    tensor used twice is one minigpt leaf."""

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp
        self.leaves: dict[int, tuple[Any, Tensor]] = {}

    def __call__(self, t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if not t.is_floating_point():
            return self.xp.asarray(t.detach().numpy().copy())
        if id(t) not in self.leaves:
            array = self.xp.asarray(t.detach().numpy().copy())
            self.leaves[id(t)] = (t, Tensor(array, requires_grad=t.requires_grad))
        return self.leaves[id(t)][1]


def no_kwargs(s: Any, allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(set(s.kwargs) - set(allowed))
    if extra:
        raise Outside(f"keyword {', '.join(extra)}")


def number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def binary(fn: Callable, reflected: bool = False) -> Callable:
    def run(s: Any, c: Converted, Fm: Any) -> Any:
        no_kwargs(s)
        other = s.args[0]
        if not (isinstance(other, torch.Tensor) or number(other)):
            raise Outside(f"operand {type(other).__name__}")
        if not isinstance(s.input, torch.Tensor) and (reflected or not isinstance(other, torch.Tensor)):
            raise Outside("no tensor for the operator to act on")  # torch.Tensor.__rsub__(2.0, t), 2.0 + 3.0
        a, b = c(s.input), c(other)
        return fn(b, a) if reflected else fn(a, b)
    return run


def unary(fn: Callable) -> Callable:
    def run(s: Any, c: Converted, Fm: Any) -> Any:
        no_kwargs(s)
        return fn(c(s.input))
    return run


def axis_and_keepdims(s: Any) -> tuple[Any, bool]:
    dim = s.kwargs.get("dim", s.args[0] if s.args else None)
    keepdim = s.kwargs.get("keepdim", s.args[1] if len(s.args) > 1 else False)
    if isinstance(dim, (list, tuple)):
        dim = tuple(dim)  # () too: every axis, in minigpt as in torch
    return dim, keepdim


def reduction(method: str) -> Callable:
    def run(s: Any, c: Converted, Fm: Any) -> Any:
        no_kwargs(s, ("dim", "keepdim"))
        axis, keepdims = axis_and_keepdims(s)
        return getattr(c(s.input), method)(axis=axis, keepdims=keepdims)
    return run


def permutation(ndim: int, d0: int, d1: int) -> tuple[int, ...]:
    perm = list(range(ndim))
    if ndim:
        d0, d1 = d0 % ndim, d1 % ndim
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return tuple(perm)


def shape_args(args: tuple) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)


def pow_(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s)
    if not number(s.args[0]):
        raise Outside("a tensor exponent")
    return c(s.input) ** s.args[0]


def getitem(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s)
    index = s.args[0]
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(p.numpy() if isinstance(p, torch.Tensor) else p for p in parts)  # index arrays stay arrays
    return c(s.input)[parts if isinstance(index, tuple) else parts[0]]


def softmax(name: str) -> Callable:
    def run(s: Any, c: Converted, Fm: Any) -> Any:
        no_kwargs(s, ("dim",))
        dim = s.kwargs.get("dim", s.args[0] if s.args else None)
        return getattr(Fm, name)(c(s.input), axis=dim)
    return run


def embedding(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s)
    return Fm.embedding(c(s.args[0]), c(s.input))


def linear(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("bias",))
    bias = s.kwargs.get("bias", s.args[1] if len(s.args) > 1 else None)
    return Fm.linear(c(s.input), c(s.args[0]), c(bias))


def cross_entropy(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("reduction", "ignore_index"))
    target = s.args[0]
    if s.kwargs.get("reduction", "mean") != "mean":
        raise Outside(f"reduction={s.kwargs['reduction']!r}")
    if target.is_floating_point():
        raise Outside("class probabilities as targets")
    if s.input.ndim != 2:
        raise Outside("classes on axis 1 of a (N, C, d1...) input (minigpt's are last)")
    return Fm.cross_entropy(c(s.input), c(target), ignore_index=s.kwargs.get("ignore_index", -100))


def layer_norm(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("eps", "weight", "bias"))
    shape, rest = tuple(s.args[0]), list(s.args[1:])
    weight = s.kwargs.get("weight", rest[0] if rest else None)
    bias = s.kwargs.get("bias", rest[1] if len(rest) > 1 else None)
    if shape != tuple(s.input.shape[-1:]):
        raise Outside(f"normalized_shape {shape} (minigpt normalises the last axis)")
    return Fm.layer_norm(c(s.input), c(weight), c(bias), eps=s.kwargs.get("eps", 1e-5))


def gelu(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("approximate",))
    if s.kwargs.get("approximate", "none") != "tanh":
        raise Outside("the exact (erf) GELU (minigpt's is GPT-2's tanh form)")
    return Fm.gelu(c(s.input))


def attention(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("is_causal", "dropout_p", "scale"))
    if len(s.args) > 2:
        raise Outside("a positional attention mask")
    if s.kwargs.get("dropout_p", 0.0) != 0.0:
        raise Outside("random dropout")
    q, k, v = s.input, *s.args
    return Fm.scaled_dot_product_attention(c(q), c(k), c(v), is_causal=s.kwargs.get("is_causal", False),
                                           scale=s.kwargs.get("scale"))


def dropout(s: Any, c: Converted, Fm: Any) -> Any:
    no_kwargs(s, ("p", "training"))
    p, training = s.kwargs.get("p", 0.5), s.kwargs.get("training", True)
    if training and 0.0 < p < 1.0:
        raise Outside("random dropout")
    return Fm.dropout(c(s.input), p=p, training=training)


# (OpInfo name, variant): how minigpt runs its sample; whether the backward is compared
TENSOR_OPS: dict[tuple[str, str], Callable] = {
    ("add", ""): binary(lambda a, b: a + b),
    ("sub", ""): binary(lambda a, b: a - b),
    ("mul", ""): binary(lambda a, b: a * b),
    ("div", "no_rounding_mode"): binary(lambda a, b: a / b),
    ("true_divide", ""): binary(lambda a, b: a / b),
    ("__radd__", ""): binary(lambda a, b: a + b, reflected=True),
    ("__rsub__", ""): binary(lambda a, b: a - b, reflected=True),
    ("__rmul__", ""): binary(lambda a, b: a * b, reflected=True),
    ("__rdiv__", ""): binary(lambda a, b: a / b, reflected=True),
    ("pow", ""): pow_,
    ("neg", ""): unary(lambda a: -a),
    ("exp", ""): unary(lambda a: a.exp()),
    ("log", ""): unary(lambda a: a.log()),
    ("tanh", ""): unary(lambda a: a.tanh()),
    ("matmul", ""): binary(lambda a, b: a @ b),
    ("__rmatmul__", ""): binary(lambda a, b: a @ b, reflected=True),
    ("sum", ""): reduction("sum"),
    ("mean", ""): reduction("mean"),
    ("amax", ""): reduction("max"),
    ("max", "reduction_no_dim"): unary(lambda a: a.max()),
    ("max", "reduction_with_dim"): reduction("max"),
    ("reshape", ""): lambda s, c, Fm: c(s.input).reshape(*shape_args(s.args)),
    ("view", ""): lambda s, c, Fm: c(s.input).reshape(*shape_args(s.args)),
    ("permute", ""): lambda s, c, Fm: c(s.input).transpose(*shape_args(s.args)),
    ("transpose", ""): lambda s, c, Fm: c(s.input).transpose(*permutation(s.input.ndim, *s.args)),
    ("t", ""): unary(lambda a: a.transpose()),
    ("T", ""): unary(lambda a: a.transpose()),
    ("mT", ""): unary(lambda a: a.transpose(*permutation(a.ndim, -2, -1))),
    ("__getitem__", ""): getitem,
}
FUNCTIONAL_OPS: dict[tuple[str, str], Callable] = {
    ("softmax", ""): softmax("softmax"),
    ("log_softmax", ""): softmax("log_softmax"),
    ("nn.functional.embedding", ""): embedding,
    ("nn.functional.linear", ""): linear,
    ("nn.functional.cross_entropy", ""): cross_entropy,
    ("nn.functional.layer_norm", ""): layer_norm,
    ("nn.functional.gelu", ""): gelu,
    ("nn.functional.scaled_dot_product_attention", ""): attention,
    ("nn.functional.dropout", ""): dropout,
}
FUNCTION_OF = {key: key[0].split(".")[-1] if key[0] != "nn.functional.scaled_dot_product_attention" else
               "scaled_dot_product_attention" for key in FUNCTIONAL_OPS}
NO_GRAD = {("amax", ""), ("max", "reduction_no_dim"), ("max", "reduction_with_dim")}  # API: max needs no grad


def first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) or type(out).__name__.startswith("torch.return_types") else out


def check_sample(key: tuple[str, str], run: Callable, s: Any, dtype: Any, Fm: Any, xp: Any = np) -> str | None:
    """Run one sample through PyTorch and minigpt; None when they agree, else what differs."""
    c = Converted(xp)
    ours = run(s, c, Fm)  # raises Outside before anything is compared
    theirs = first(OPS[key].op(s.input, *s.args, **s.kwargs))
    got = backend.to_numpy(ours.data if isinstance(ours, Tensor) else ours)
    want = theirs.detach().numpy()
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"forward gives {got.dtype} {got.shape}, not {want.dtype} {want.shape}"
    if not close(got, want, dtype, key):
        return f"forward differs by up to {np.nanmax(np.abs(got - want))}"
    if key in NO_GRAD or not theirs.requires_grad:
        return None
    g = np.random.default_rng(0).standard_normal(want.shape).astype(want.dtype)
    leaves = [(t, ours_leaf) for t, ours_leaf in c.leaves.values() if t.requires_grad]
    want_grads = torch.autograd.grad(theirs, [t for t, _ in leaves], torch.from_numpy(g), allow_unused=True)
    ours.backward(xp.asarray(g))
    for (t, leaf), want_grad in zip(leaves, want_grads):
        want_grad = np.zeros(t.shape, want.dtype) if want_grad is None else want_grad.numpy()
        got_grad = np.zeros(t.shape, want.dtype) if leaf.grad is None else backend.to_numpy(leaf.grad)
        if not close(got_grad, want_grad, dtype, key):
            return f"gradient of a {tuple(t.shape)} input differs"
    return None


def leaf(t: Any) -> Any:
    """A sample's tensor as a leaf of its own (PyTorch's samples may be views of one another)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    return t.detach().clone().requires_grad_(t.requires_grad)


def describe(s: Any) -> str:
    def d(x: Any) -> str:
        if isinstance(x, torch.Tensor):
            return f"tensor{tuple(x.shape)}"
        if isinstance(x, (tuple, list)):
            return "(" + ", ".join(d(v) for v in x) + ")"
        return repr(x)
    return f"{d(s.input)} args={d(s.args)} kwargs={ {k: d(v) for k, v in s.kwargs.items()} }"


def run_op(key: tuple[str, str], run: Callable, dtype: Any, Fm: Any,
           device: str = "cpu") -> tuple[int, int, list[str]]:
    """(samples run, of which with an empty tensor, failures) for one op on "cpu" or "fake" (the
    fake CuPy of tests/fakecupy.py: CuPy's rules, the reference ops)."""
    ran = empties = 0
    failures = []
    with fakecupy.installed() if device == "fake" else contextlib.nullcontext():
        xp = fakecupy if device == "fake" else np
        for s in OPS[key].reference_inputs("cpu", dtype, requires_grad=key not in NO_GRAD):
            s = s.transform(leaf)
            try:
                problem = check_sample(key, run, s, dtype, Fm, xp)
            except Outside:
                continue
            except Exception as e:  # noqa: BLE001 - a crash is a failure to report with its sample
                problem = f"{type(e).__name__}: {e}"
            ran += 1
            tensors = [s.input, *s.args, *s.kwargs.values()]
            empties += any(isinstance(t, torch.Tensor) and t.numel() == 0 for t in tensors)
            if problem:
                failures.append(f"{describe(s)}: {problem}")
    return ran, empties, failures


DTYPES = [torch.float32, torch.float64]
# the fast twins where they differ from the reference (fast.log_softmax and fast.dropout are the reference's)
TWINS = [(key, "fast") for key in FUNCTIONAL_OPS if FUNCTION_OF[key] and
         getattr(fast, FUNCTION_OF[key]) is not getattr(F, FUNCTION_OF[key])]


@pytest.mark.parametrize("device", ["cpu", "fake"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("key", list(TENSOR_OPS), ids=lambda k: "-".join(filter(None, k)))
def test_tensor_ops_match_pytorch_on_its_own_samples(key, dtype, device):
    minigpt.manual_seed(0)
    ran, _, failures = run_op(key, TENSOR_OPS[key], dtype, F, device)
    assert ran > 0, f"no sample of {key} lies inside minigpt's API"
    assert not failures, "\n".join(failures)


# (op, how it runs): the reference ops on the CPU and on the fake GPU, the fast twins on the CPU
FUNCTIONAL_RUNS = ([(key, "reference") for key in FUNCTIONAL_OPS] + [(key, "fast") for key, _ in TWINS]
                   + [(key, "reference on the fake GPU") for key in FUNCTIONAL_OPS])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("key, how", FUNCTIONAL_RUNS, ids=[f"{k[0]}-{how}" for k, how in FUNCTIONAL_RUNS])
def test_functional_ops_match_pytorch_on_its_own_samples(key, how, dtype):
    minigpt.manual_seed(0)
    ran, _, failures = run_op(key, FUNCTIONAL_OPS[key], dtype, fast if how == "fast" else F,
                              "fake" if "fake" in how else "cpu")
    assert ran > 0, f"no sample of {key} lies inside minigpt's API"
    assert not failures, "\n".join(failures)


def test_empty_samples_run_inside_the_api():
    """PyTorch's samples hold empty tensors (softmax over (5, 0, 0), (5, 5, 0) @ (0, 5), a (0, 5)
    linear...): they run above, and here it is checked that they are not all outside."""
    empties = {key: run_op(key, run, torch.float64, F)[1] for key, run in {**TENSOR_OPS, **FUNCTIONAL_OPS}.items()}
    for key in [("reshape", ""), ("softmax", ""), ("log_softmax", ""), ("matmul", ""), ("nn.functional.linear", ""),
                ("nn.functional.layer_norm", ""), ("add", ""), ("exp", "")]:
        assert empties[key] > 0, key


def test_the_comparison_catches_planted_mistakes(monkeypatch):
    slightly_off = type("Module", (), {"gelu": staticmethod(lambda x: F.gelu(x * (1 + 1e-5)))})
    assert run_op(("nn.functional.gelu", ""), FUNCTIONAL_OPS[("nn.functional.gelu", "")], torch.float32,
                  slightly_off)[2]  # a float32 forward off by 1e-5
    monkeypatch.setattr(F.Softmax, "backward_fn", staticmethod(lambda y, dy, axis: y * dy))  # the row sum lost
    ran, _, failures = run_op(("softmax", ""), FUNCTIONAL_OPS[("softmax", "")], torch.float64, F)
    assert failures and all("gradient" in f for f in failures)


@pytest.mark.parametrize("device", ["cpu", "fake"])
def test_dropout_in_training_keeps_or_drops_each_element_as_pytorch_does(device):
    """PyTorch's samples of random dropout (0 < p < 1, training) cannot match number for number
    (another generator), so each output is checked for what both do: every element is 0 or
    x / (1 - p), and the gradient is dy / (1 - p) where kept, 0 where dropped."""
    minigpt.manual_seed(0)
    key, checked = ("nn.functional.dropout", ""), 0
    with fakecupy.installed() if device == "fake" else contextlib.nullcontext():
        xp = fakecupy if device == "fake" else np
        for s in OPS[key].reference_inputs("cpu", torch.float64, requires_grad=True):
            p, training = s.kwargs.get("p", 0.5), s.kwargs.get("training", True)
            if set(s.kwargs) - {"p", "training"} or not (training and 0.0 < p < 1.0) or s.input.numel() == 0:
                continue
            x = s.input.detach().numpy()
            leaf = Tensor(xp.asarray(x.copy()), requires_grad=True)
            y = F.dropout(leaf, p=p, training=True)
            g = np.random.default_rng(1).standard_normal(x.shape)
            y.backward(xp.asarray(g))
            got, grad = backend.to_numpy(y.data), backend.to_numpy(leaf.grad)
            kept = np.isclose(got, x / (1 - p), rtol=1e-12, atol=0) & (x != 0)
            dropped = (got == 0) & (x != 0)
            assert (kept | dropped | (x == 0)).all(), describe(s)  # nothing else
            np.testing.assert_allclose(grad[kept], g[kept] / (1 - p), rtol=1e-12)
            assert (grad[dropped] == 0).all()
            theirs = OPS[key].op(s.input, *s.args, **s.kwargs).detach().numpy()  # PyTorch: the same two outcomes
            assert (np.isclose(theirs, x / (1 - p), rtol=1e-12, atol=0) | (theirs == 0)).all()
            checked += 1
    assert checked > 0
