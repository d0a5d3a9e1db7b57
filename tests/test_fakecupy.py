"""The fake CUDA device (tests/fakecupy.py): as strict as CuPy, counting what it should, and
minigpt's reference ops giving NumPy's results on it."""

import copy
import sys

import numpy
import pytest

from minigpt import Tensor, backend
from minigpt import functional as F
from tests import fakecupy

recorder = fakecupy.recorder
HERE = "tests/test_fakecupy.py"


def device(values, dtype=numpy.float64):
    """A device array holding ``values``; the recorder is reset afterwards."""
    a = fakecupy.asarray(numpy.asarray(values, dtype=dtype))
    recorder.reset()
    return a


@pytest.fixture(autouse=True)
def _fresh_recorder():
    """Every test counts from zero."""
    recorder.reset()


def counts():
    return {kind: recorder.count(kind) for kind in ("sync", "h2d", "call")}


# ----------------------------------------------------------------------------- strictness
def test_a_device_array_is_not_a_numpy_array_and_refuses_implicit_conversion():
    a = device([[1.0, 2.0], [3.0, 4.0]])
    assert not isinstance(a, numpy.ndarray)
    for convert in (numpy.asarray, numpy.array, lambda x: numpy.array([x, x])):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            convert(a)
    assert counts()["sync"] == 0


HOST_MIXES = {
    "a + host": lambda a, h: a + h,
    "host + a": lambda a, h: h + a,
    "a * host 0-d": lambda a, h: a * numpy.array(2.0),
    "host 0-d * a": lambda a, h: numpy.array(2.0) * a,
    "a @ host": lambda a, h: a @ h,
    "a -= host": lambda a, h: a.__isub__(h),
    "a == host": lambda a, h: a == h,
    "a < host": lambda a, h: a < h,
    "exp(host)": lambda a, h: fakecupy.exp(h),
    "add(a, host)": lambda a, h: fakecupy.add(a, h),
    "multiply(out=host)": lambda a, h: fakecupy.multiply(a, a, out=h),
    "where(.., host)": lambda a, h: fakecupy.where(a > 0, a, h),
    "concatenate([a, host])": lambda a, h: fakecupy.concatenate([a, h]),
    "numpy.add(a, host)": lambda a, h: numpy.add(a, h),
}


@pytest.mark.parametrize("mix", HOST_MIXES)
def test_mixing_a_device_array_with_a_host_array_raises_type_error(mix):
    a, h = device(numpy.ones((2, 2))), numpy.ones((2, 2))
    with pytest.raises(TypeError, match="Unsupported type"):
        HOST_MIXES[mix](a, h)


def test_scalars_mix_freely_and_numpy_functions_run_on_the_device_as_in_cupy():
    a = device([1.0, 2.0])
    for result in (a + 1, 2.0 * a, numpy.float32(2) * a, a * numpy.int64(3), numpy.exp(a),
                   numpy.concatenate([a, a]), numpy.add.reduce(a)):
        assert isinstance(result, fakecupy.ndarray)
    assert counts() == {"sync": 0, "h2d": 0, "call": 7}


def test_an_operand_with_a_higher_array_priority_takes_the_operator():
    class Other:
        __array_priority__ = 1000

        def __radd__(self, other):
            return "Other.__radd__"

    assert device([1.0]) + Other() == "Other.__radd__"


def test_reductions_and_scalar_indexes_return_0d_device_arrays():
    a = device([[1.0, 2.0], [3.0, 4.0]])
    results = [a.sum(), a.mean(), a.max(), a.min(), a.argmax(), a.any(), a.all(), a[0, 1],
               fakecupy.sum(a), fakecupy.vdot(a, a), a[0] @ a[1], a.sum() + 1,
               fakecupy.add.reduce(a, axis=None)]
    for r in results:
        assert isinstance(r, fakecupy.ndarray) and r.shape == ()
    assert counts()["sync"] == 0
    assert a.sum().item() == 10.0


def test_bool_of_a_device_array_follows_cupy():
    assert bool(device([3.0])) is True
    with pytest.raises(ValueError, match="more than one element"):
        bool(device([1.0, 2.0]))


# ----------------------------------------------------------------------------- counting
SYNCS = {  # each on its own line: the recorder must name that line
    "item": lambda a: a.item(),
    "float": lambda a: float(a[0]),  # a[0]: a 0-d view (NumPy 2 converts only 0-d arrays)
    "int": lambda a: int(a[0]),
    "bool": lambda a: bool(a),
    "complex": lambda a: complex(a[0]),
    "get": lambda a: a.get(),
    "asnumpy": lambda a: fakecupy.asnumpy(a),
    "tolist": lambda a: a.tolist(),
    "repr": lambda a: repr(a),
    "format": lambda a: f"{a}",
    "mask index": lambda a: a[a > 0],
    "nonzero": lambda a: fakecupy.nonzero(a),
    "unravel_index": lambda a: fakecupy.unravel_index(a.astype(numpy.int64), (3,)),  # CuPy checks >= 0
    "synchronize": lambda a: fakecupy.cuda.Stream.null.synchronize(),
}


@pytest.mark.parametrize("name", SYNCS)
def test_each_device_to_host_sync_is_counted_at_the_line_that_asked(name):
    a = device([2.5])
    SYNCS[name](a)
    assert recorder.where("sync") == {f"{HERE}:{SYNCS[name].__code__.co_firstlineno}": 1}
    assert recorder.count("h2d") == 0


def test_unravel_index_takes_only_a_device_array_as_cupy_under_numpy_2():
    with pytest.raises(TypeError):
        fakecupy.unravel_index(3, (2, 2))  # CuPy: can_cast(3, int64), which NumPy 2 refuses
    rows, cols = fakecupy.unravel_index(device([3], numpy.int64), (2, 2))
    assert (rows.tolist(), cols.tolist()) == ([1], [1])


def test_what_is_not_a_sync():
    a = device([[1.0, 2.0], [3.0, 4.0]])
    rows = list(a)  # iteration yields views, as CuPy's __iter__
    assert len(a) == 2 and a.shape == (2, 2) and a.dtype == numpy.float64 and a.size == 4
    assert isinstance(rows[0], fakecupy.ndarray) and rows[0].base is a
    assert counts() == {"sync": 0, "h2d": 0, "call": 0}


def test_host_to_device_copies_are_counted_at_their_line():
    host, index = numpy.arange(6.0).reshape(2, 3), device([0, 1], numpy.int64)
    a = fakecupy.asarray(host)
    line = sys._getframe().f_lineno - 1
    assert recorder.where("h2d") == {f"{HERE}:{line}": 1}
    assert fakecupy.asarray(a) is a and fakecupy.asarray(a, dtype=numpy.float64) is a  # no copy
    fakecupy.array([1, 2]), fakecupy.asarray(3.0)  # host data: 2 copies
    a[numpy.array([0, 1])], a[[0, 1]]  # host indexes: 2 copies
    a[index]  # a device index: none
    a[[0, 1], [1, 2]] = 7.0  # two host indexes, and a host value through them: 3 copies
    assert recorder.count("h2d") == 1 + 2 + 2 + 3
    host[0, 0] = 100.0
    assert a[0, 0].item() == 0.0  # asarray copied the host data


def test_a_host_array_cannot_fill_a_basic_slice():
    a = device([1.0, 2.0])
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        a[:] = numpy.array([3.0, 4.0])
    a[:] = numpy.float64(5.0)  # scalars are fine
    assert a.get().tolist() == [5.0, 5.0]


def test_calls_count_new_data_and_writes_while_views_are_free():
    a = device(numpy.arange(6.0).reshape(2, 3))
    views = [a.reshape(3, 2), a.T, a.transpose(1, 0), a.swapaxes(0, 1), a[0], a[:, 1:], a[None],
             fakecupy.swapaxes(a, 0, 1), fakecupy.expand_dims(a, 0), fakecupy.broadcast_to(a[0], (4, 3)),
             fakecupy.ascontiguousarray(a), a.astype(numpy.float64, copy=False)]
    assert counts() == {"sync": 0, "h2d": 0, "call": 0}
    assert all(v.base is a for v in views[:-2]) and views[-2] is a and views[-1] is a
    out = fakecupy.empty_like(a)
    assert fakecupy.multiply(a, a, out=out) is out
    fakecupy.exp(a), a.sum(axis=0), a.copy(), a.astype(numpy.float32), -a, a + a, a.T.reshape(6)
    assert recorder.count("call") == 2 + 7  # empty_like, multiply; then 7 with new data
    line = sys._getframe().f_lineno - 2
    assert recorder.where("call")[f"{HERE}:{line}"] == 7


def test_get_and_asnumpy_return_host_copies():
    a = device([[1.0, 2.0], [3.0, 4.0]])
    for host in (a.get(), fakecupy.asnumpy(a)):
        assert type(host) is numpy.ndarray
        numpy.testing.assert_array_equal(host, [[1.0, 2.0], [3.0, 4.0]])
        host[0, 0] = -1.0
    assert a[0, 0].item() == 1.0
    h = numpy.ones(2)
    assert fakecupy.asnumpy(h) is h  # a host array stays: no sync
    assert recorder.count("sync") == 3


def test_in_place_operators_write_through_views():
    a = device(numpy.zeros((2, 3)))
    row = a[1]
    row += 1.0
    row *= 3.0
    row -= device([0.0, 1.0, 2.0])
    a.T[0] /= 2.0
    numpy.testing.assert_array_equal(a.get(), [[0.0, 0.0, 0.0], [1.5, 2.0, 1.0]])
    b = copy.deepcopy(a)  # a device copy, not a view
    b += 1
    assert a[0, 0].item() == 0.0


def test_add_at_accumulates_repeated_indices():
    z = device(numpy.zeros((3, 2)))
    fakecupy.add.at(z, device([0, 2, 0, 0], numpy.int64), device(numpy.ones((4, 2))))
    numpy.testing.assert_array_equal(z.get(), [[3.0, 3.0], [0.0, 0.0], [1.0, 1.0]])


def test_mask_and_integer_array_indexing_and_assignment_match_numpy():
    host = numpy.arange(12.0).reshape(3, 4)
    a, expected = device(host), host.copy()
    mask, rows, cols = a > 4, device([0, 2, 2], numpy.int64), device([1, 0, 3], numpy.int64)
    numpy.testing.assert_array_equal(a[mask].get(), expected[expected > 4])
    numpy.testing.assert_array_equal(a[rows, cols].get(), expected[[0, 2, 2], [1, 0, 3]])
    numpy.testing.assert_array_equal(a[rows].get(), expected[[0, 2, 2]])
    a[mask] = -1.0
    a[rows, cols] = device([10.0, 20.0, 30.0])
    expected[expected > 4] = -1.0
    expected[[0, 2, 2], [1, 0, 3]] = [10.0, 20.0, 30.0]
    numpy.testing.assert_array_equal(a.get(), expected)


def test_random_generators_are_seeded_and_counted():
    rng, state = fakecupy.random.default_rng(7), fakecupy.random.RandomState(2**63 - 1)
    x = rng.random((2, 3), dtype=numpy.float32)
    y = state.random_sample((4,), dtype=numpy.float32)
    z, n = rng.standard_normal(5, dtype=numpy.float32), rng.integers(0, 10, size=3)
    assert (x.dtype, y.dtype, z.dtype, n.dtype) == (numpy.float32, numpy.float32, numpy.float32, numpy.int64)
    assert recorder.count("call") == 2 + 3 + 2  # two generators built, three draws, random_sample's two kernels
    again = fakecupy.random.default_rng(7).random((2, 3), dtype=numpy.float32)
    numpy.testing.assert_array_equal(again.get(), x.get())


def test_installed_is_where_minigpt_finds_cupy_and_is_undone_on_exit():
    before = sys.modules.get("cupy")
    with fakecupy.installed():
        assert backend.xp_for("cuda") is fakecupy
        a = backend.move(numpy.ones(3), "cuda")
        assert backend.device_of(a) == "cuda" and backend.get_array_module(a) is fakecupy
        assert backend.move(a, "cuda") is a
        assert type(backend.move(a, "cpu")) is numpy.ndarray
    assert sys.modules.get("cupy") is before


# ----------------------------------------------------------------------------- minigpt's ops on it
_rng = numpy.random.default_rng(0)
HOST = {
    "x": _rng.standard_normal((2, 3, 8)), "w": _rng.standard_normal((5, 8)), "b": _rng.standard_normal(5),
    "ln_w": _rng.standard_normal(8), "ln_b": _rng.standard_normal(8),
    "q": _rng.standard_normal((2, 2, 4, 8)), "k": _rng.standard_normal((2, 2, 4, 8)),
    "v": _rng.standard_normal((2, 2, 4, 8)),
    "idx": _rng.integers(0, 5, (2, 3)), "targets": numpy.array([[1, 4, -100], [0, 2, 3]]),
}
OPS = {
    "embedding": lambda t: F.embedding(t["idx"], t["w"]),
    "linear": lambda t: F.linear(t["x"], t["w"], t["b"]),
    "softmax": lambda t: F.softmax(t["x"]),
    "cross_entropy": lambda t: F.cross_entropy(F.linear(t["x"], t["w"]), t["targets"]),
    "layer_norm": lambda t: F.layer_norm(t["x"], t["ln_w"], t["ln_b"]),
    "gelu": lambda t: F.gelu(t["x"]),
    "scaled_dot_product_attention": lambda t: F.scaled_dot_product_attention(t["q"], t["k"], t["v"]),
}


def forward_backward(op, put):
    """Run ``op`` forward and backward (random upstream gradient) on arrays ``put`` made. Integer
    inputs (indices, targets) stay on the host, as the training loop's batches do: the ops check
    them there and copy them over."""
    inputs = {name: Tensor(put(a), requires_grad=True) if a.dtype.kind == "f" else a for name, a in HOST.items()}
    out = OPS[op](inputs)
    upstream = put(numpy.random.default_rng(1).standard_normal(out.shape))
    recorder.reset()
    out = OPS[op](inputs)  # again, counted from here
    out.backward(upstream)
    grads = {name: t.grad for name, t in inputs.items() if isinstance(t, Tensor) and t.grad is not None}
    return {"out": out.data, **grads}


@pytest.mark.parametrize("op", OPS)
def test_functional_op_on_the_fake_device_gives_numpy_results(op):
    expected = forward_backward(op, numpy.asarray)
    with fakecupy.installed():
        got = forward_backward(op, fakecupy.asarray)
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert isinstance(value, fakecupy.ndarray), name
        numpy.testing.assert_array_equal(value.get(), expected[name], err_msg=name)


def test_cross_entropy_copies_host_targets_to_the_device_once():
    expected = F.cross_entropy(Tensor(HOST["x"]), HOST["targets"])
    with fakecupy.installed():
        logits = Tensor(fakecupy.asarray(HOST["x"]))
        recorder.reset()
        loss = F.cross_entropy(logits, HOST["targets"])  # host targets: xp.asarray copies them over
    assert recorder.count("h2d") == 1
    numpy.testing.assert_array_equal(loss.data.get(), expected.data)


@pytest.mark.parametrize("op", OPS)
def test_functional_op_runs_without_syncs_and_copies_only_its_host_indices(op):
    with fakecupy.installed():
        forward_backward(op, fakecupy.asarray)
    assert recorder.where("sync") == {}
    assert recorder.count("h2d") == (1 if op in ("embedding", "cross_entropy") else 0)  # idx or targets


@pytest.mark.parametrize("bad_value", ["too large", "negative"])
@pytest.mark.parametrize("where", ["host", "device"])
@pytest.mark.parametrize("op", ["embedding", "cross_entropy"])
def test_out_of_range_indices_raise_before_they_move_or_with_one_read_back_on_the_device(op, where, bad_value):
    bad = HOST["idx"].copy() if op == "embedding" else HOST["targets"].copy()
    bad[1, 2] = 5 if bad_value == "too large" else -2  # one past the last row or class; or below 0
    with fakecupy.installed():
        w, x = Tensor(fakecupy.asarray(HOST["w"])), Tensor(fakecupy.asarray(HOST["x"]))
        recorder.reset()
        with pytest.raises(IndexError, match="out of range"):
            if op == "embedding":
                F.embedding(bad if where == "host" else fakecupy.asarray(bad), w)
            else:
                F.cross_entropy(F.linear(x, w), bad if where == "host" else fakecupy.asarray(bad))
    assert recorder.count("h2d") == (0 if where == "host" else 1)  # host: caught before the copy
    assert recorder.count("sync") == (0 if where == "host" else 1)  # device: one bool read back


def test_the_fake_lacks_what_cupy_lacks():
    from tests import fakecupy

    with fakecupy.installed() as cp:
        for name in ("errstate", "vecdot", "nditer", "unstack"):  # NumPy's, not CuPy's
            with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
                getattr(cp, name)
        assert cp.exp is not None and cp.put_along_axis is not None and cp.float32 is numpy.float32
        assert cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        assert cp.__version__.startswith("14")


def test_ufunc_methods_exist_only_where_cupys_do():
    a, rows = device([[1.0, 2.0], [3.0, 4.0]]), device([0, 0], numpy.int64)
    assert fakecupy.multiply.reduce(a, axis=0).get().tolist() == [3.0, 8.0]
    assert fakecupy.maximum.outer(device([1.0, 3.0]), device([2.0])).get().tolist() == [[2.0], [3.0]]
    for method, call in (("reduce", lambda: fakecupy.maximum.reduce(a)),
                         ("accumulate", lambda: fakecupy.subtract.accumulate(a)),
                         ("reduceat", lambda: fakecupy.multiply.reduceat(a, device([0], numpy.int64))),
                         ("at", lambda: fakecupy.multiply.at(a, rows, 2.0))):
        with pytest.raises(NotImplementedError, match=f"{method}` is not supported"):
            call()
    with pytest.raises(TypeError, match="add.at only supports"):  # CuPy 14.0 (14.1 added int64)
        fakecupy.add.at(device(numpy.zeros(3), numpy.int64), rows, 1)
    with pytest.raises(TypeError, match="subtract.at only supports"):
        fakecupy.subtract.at(a, rows, 1.0)
    with pytest.raises(TypeError, match="initial"):  # CuPy's reduce takes axis, dtype, out, keepdims
        fakecupy.add.reduce(a, initial=1.0)
    with pytest.raises(AttributeError):  # matmul is a gufunc in CuPy, without ufunc methods
        fakecupy.matmul.outer(a, a)
    counts_ = device(numpy.zeros(3), numpy.int32)
    fakecupy.add.at(counts_, device([0, 4, -1], numpy.int64), 1)  # the scatter kernel wraps: 4 is row 1
    assert counts_.get().tolist() == [1, 1, 1]


def test_reductions_refuse_an_axis_on_a_0d_array_as_cupy():
    a = device(2.0)
    for call in (lambda: a.sum(axis=0), lambda: a.max(axis=-1, keepdims=True), lambda: fakecupy.mean(a, 0)):
        with pytest.raises(numpy.exceptions.AxisError):
            call()
    assert a.sum().item() == 2.0 and a.sum(axis=()).item() == 2.0  # no axis, or none named: fine


def test_add_at_copies_host_values_to_the_device_as_cupy():
    z = device(numpy.zeros(3))
    fakecupy.add.at(z, device([0, 0], numpy.int64), numpy.array([1.0, 2.0]))
    assert z.get().tolist() == [3.0, 0.0, 0.0] and counts()["h2d"] == 1
