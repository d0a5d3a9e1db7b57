"""Every fast twin (minigpt/fast/) equals its reference (minigpt/functional.py, minigpt/optim.py),
at sizes where every tile, remainder and branch of the twin runs.

How: each property runs the twin and its reference on the same float64 inputs and the same
random upstream gradient, and compares the values and every input gradient (rtol 1e-10). The
knobs of the twins are patched so that hypothesis' small shapes exercise them:
  "tiny tiles, branches on":  TILE = 7 elements (odd: tiles end mid-row and leave remainders),
                              the one-hot embedding, the max tree, the copies of kᵀ;
  "tiny tiles, branches off": TILE = 7, and each branch's other side (scatter-add, x.max, views);
  "odd tiles, branches on":   TILE = 61: tiles of several rows (or batch elements) and a shorter last one;
  "as shipped":               the real settings (one tile at these sizes).
Inputs are sometimes transposed views (not contiguous), as a caller may pass them.
Then the tests of the tests: each twin is broken on purpose (a tile dropped, repeated indices
dropped, the max tree's odd column forgotten) and the very same properties must fail.
"""

import contextlib
import math
import warnings
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import minigpt
from minigpt import Tensor, fast, gradcheck, nn, optim
from minigpt import functional as F
from minigpt.fast import attention as fast_attention
from minigpt.fast import functional as fast_functional
from minigpt.fast import optim as fast_optim
from minigpt.fast import reductions, tiling
from tests.strategies import arrays, rng_from, seeds

MODES = ["tiny tiles, branches on", "tiny tiles, branches off", "odd tiles, branches on", "as shipped"]


@contextlib.contextmanager
def knobs(mode):
    """Patch the twins' tile size and size thresholds for ``mode`` (see the module docstring)."""
    if mode == "as shipped":
        yield
        return
    on = mode.endswith("branches on")
    big = 10**12
    patches = [(tiling, "TILE", 61 if mode.startswith("odd") else 7),
               (fast_functional, "ONE_HOT_LIMIT", big if on else 0),
               (fast_functional, "REDO_ALL_ABOVE", big if on else -1),  # redo each bad row (on) or all (off)
               (reductions, "MAX_TREE_MIN_WIDTH", 2 if on else big),
               (reductions, "USE_VECDOT", on),  # off: the product, then a row sum (NumPy before 2.0)
               (fast_attention, "KT_COPY_MIN_T", 1 if on else big),  # each of the three blocks the copy
               (fast_attention, "KT_COPY_MAX_S", big if on else 0),  # when off, and allows it when on
               (fast_attention, "KT_COPY_MAX_HS", big if on else 0)]
    with contextlib.ExitStack() as stack:
        for module, name, value in patches:
            stack.enter_context(mock.patch.object(module, name, value))
        yield


def run_both(fast_fn, ref_fn, inputs, grad_seed, seed=0):
    """Run both ops on copies of ``inputs`` (float arrays become leaves) with the same minigpt seed
    (dropout masks) and upstream gradient: [(value, [gradient of each float input]), ...]."""
    results = []
    for fn in (fast_fn, ref_fn):
        # copy(order="K") keeps a transposed input's memory layout (copy() would make it contiguous)
        leaves = [Tensor(a.copy(order="K"), requires_grad=True) if a.dtype.kind == "f" else a for a in inputs]
        minigpt.manual_seed(seed)
        y = fn(*leaves)
        value = y.data.copy()
        y.backward(rng_from(grad_seed).standard_normal(y.shape))
        results.append((value, [t.grad for t in leaves if isinstance(t, Tensor)]))
    return results


def assert_twins_equal(fast_fn, ref_fn, inputs, grad_seed, seed=0):
    (y_fast, g_fast), (y_ref, g_ref) = run_both(fast_fn, ref_fn, inputs, grad_seed, seed)
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-10, atol=1e-12, err_msg="values differ")
    assert len(g_fast) == len(g_ref)
    for i, (a, b) in enumerate(zip(g_fast, g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"gradient of input {i} differs")


def values(rng, shape, huge_rows=False, maybe_transposed=False):
    """Standard normal values; with ``huge_rows`` some rows scaled by 1000 (exp overflows there);
    with ``maybe_transposed``, half the time a transposed view of a (reversed-shape) array."""
    if maybe_transposed and len(shape) > 1 and rng.random() < 0.5:
        x = rng.standard_normal(shape[::-1]).T  # the same shape, not contiguous
    else:
        x = rng.standard_normal(shape)
    if huge_rows:
        x *= rng.choice([1.0, 1000.0], size=shape[:-1] + (1,))
    return x


sides = st.integers(1, 9)


# ----------------------------------------------------------------------------- the twins
@pytest.mark.parametrize("mode", MODES)
@given(V=st.integers(1, 7), C=st.integers(1, 5), B=sides, T=sides, seed=seeds)
def test_embedding_twin(mode, V, C, B, T, seed):
    rng = rng_from(seed)
    idx = rng.integers(0, V, size=(B, T))  # B*T draws from V rows: repeated indices
    with knobs(mode):
        assert_twins_equal(fast.embedding, F.embedding, [idx, values(rng, (V, C))], seed)


@pytest.mark.parametrize("mode", MODES)
@given(shape=st.lists(sides, min_size=1, max_size=3), n_out=sides, bias=st.booleans(), seed=seeds)
def test_linear_twin(mode, shape, n_out, bias, seed):
    rng = rng_from(seed)
    x, w, b = values(rng, tuple(shape), maybe_transposed=True), values(rng, (n_out, shape[-1])), values(rng, (n_out,))
    with knobs(mode):
        if bias:
            assert_twins_equal(fast.linear, F.linear, [x, w, b], seed)
        else:
            assert_twins_equal(fast.linear, F.linear, [x, w], seed)


@pytest.mark.parametrize("mode", MODES)
@given(shape=st.lists(sides, min_size=1, max_size=3), axis=st.sampled_from([-1, 0]), seed=seeds)
def test_softmax_twin(mode, shape, axis, seed):
    x = values(rng_from(seed), tuple(shape), huge_rows=True, maybe_transposed=True)
    with knobs(mode), np.errstate(over="ignore"):
        assert_twins_equal(lambda t: fast.softmax(t, axis), lambda t: F.softmax(t, axis), [x], seed)


@pytest.mark.parametrize("mode", MODES)
@given(N=sides, V=sides, reduction=st.sampled_from(["mean", "sum", "none"]), ignored=st.booleans(),
       three_d=st.booleans(), seed=seeds)
# seed 0 draws a huge row whose max is its odd last logit, far above the target's: the redo must find that max
@example(N=2, V=3, reduction="mean", ignored=False, three_d=False, seed=0)
def test_cross_entropy_twin(mode, N, V, reduction, ignored, three_d, seed):
    rng = rng_from(seed)
    z = values(rng, (N, V), huge_rows=True, maybe_transposed=True)
    t = rng.integers(0, V, size=N)
    if ignored:
        t[rng.random(N) < 0.3] = -100
        t[0] = 0  # at least one row counts
    if three_d and N % 2 == 0:
        z, t = z.reshape(2, N // 2, V), t.reshape(2, N // 2)
    with knobs(mode):
        assert_twins_equal(lambda x: fast.cross_entropy(x, t, reduction=reduction),
                           lambda x: F.cross_entropy(x, t, reduction=reduction), [z], seed)


def cross_entropy_gradients(z, t, reduction, s):
    """[the reference's gradient of z, the twin's], each from cross_entropy(z, t, reduction) and the
    upstream gradient ``s`` (a fixed one: run_both draws a random one)."""
    grads = []
    for impl in (F, fast):
        x = Tensor(z.copy(), requires_grad=True)
        impl.cross_entropy(x, t, reduction=reduction).backward(s)
        grads.append(x.grad)
    return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cross_entropy_keeps_a_small_gradient_over_a_large_sum(dtype, reduction):
    """A logit just short of the redo (half a unit below log(1/tiny) above the target's) makes a
    row's sum of exp huge; a small upstream gradient over it is a subnormal factor. The twin
    must then divide first, as the reference does: the row's gradient keeps its max's share
    (a factor of 0 would leave only -s at the target) and sums to 0."""
    gap = -math.log(np.finfo(dtype).tiny) - 0.5
    z = np.array([[0.0, gap, 0.0], [0.0, 1.0, 2.0]], dtype=dtype)
    t = np.array([0, 2])
    small = 1e-3 if dtype == np.float32 else 1e-9  # s / sum: a subnormal, not 0, in either dtype
    s = np.full(2, small, dtype=dtype) if reduction == "none" else np.asarray(small, dtype=dtype)
    grads = cross_entropy_gradients(z, t, reduction, s)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(grads[1], grads[0], rtol=rtol, atol=0)
    assert grads[1][0, 1] > 0 and abs(grads[1][0].sum()) <= rtol * abs(grads[1][0, 0])


@pytest.mark.parametrize("s", [np.inf, -np.inf])
def test_cross_entropy_twin_passes_an_infinite_gradient_as_the_reference(s):
    """An infinite upstream gradient: ±inf where softmax - onehot is non-zero, as the reference's
    (softmax - onehot) · s gives (the target's entry too, never inf - inf = NaN)."""
    z = np.array([[0.0, 1.0, 2.0]], dtype=np.float32)
    grads = cross_entropy_gradients(z, np.array([0]), "sum", np.float32(s))
    np.testing.assert_array_equal(grads[1], grads[0])
    assert np.isinf(grads[1]).all()


@pytest.mark.parametrize("mode", MODES)
@given(shape=st.lists(sides, min_size=1, max_size=3), affine=st.sampled_from(["none", "weight", "bias", "both"]),
       seed=seeds)
def test_layer_norm_twin(mode, shape, affine, seed):
    rng = rng_from(seed)
    C = shape[-1]
    x, w, b = values(rng, tuple(shape), maybe_transposed=True) * 3 + 1, values(rng, (C,)), values(rng, (C,))
    ins = {"none": [x], "weight": [x, w], "bias": [x, b], "both": [x, w, b]}[affine]
    with knobs(mode):
        if affine == "bias":  # layer_norm(x, None, b): the bias alone
            assert_twins_equal(lambda x, b: fast.layer_norm(x, None, b), lambda x, b: F.layer_norm(x, None, b),
                               ins, seed)
        else:
            assert_twins_equal(fast.layer_norm, F.layer_norm, ins, seed)


@pytest.mark.parametrize("mode", MODES)
@given(shape=st.lists(sides, min_size=1, max_size=3), scale=st.sampled_from([0.3, 3.0]), seed=seeds)
def test_gelu_twin(mode, shape, scale, seed):
    x = values(rng_from(seed), tuple(shape), maybe_transposed=True) * scale
    with knobs(mode):
        assert_twins_equal(fast.gelu, F.gelu, [x], seed)
        assert_twins_equal(lambda t: gelu_over(t * 1.0), lambda t: F.gelu(t * 1.0), [x], seed)  # in place


@pytest.mark.parametrize("mode", MODES)
@given(B=st.integers(1, 5), nh=st.integers(1, 3), T=sides, S=sides, hs=st.integers(1, 5), causal=st.booleans(),
       p=st.sampled_from([0.0, 0.3]), seed=seeds)
@example(B=3, nh=1, T=5, S=5, hs=3, causal=True, p=0.0, seed=1)  # "odd tiles": tiles of 2 batch elements, then 1
@example(B=5, nh=1, T=3, S=6, hs=2, causal=False, p=0.3, seed=2)
def test_attention_twin(mode, B, nh, T, S, hs, causal, p, seed):
    # causal with T != S: torch's is_causal mask, tril(ones(T, S)): row i sees keys j <= i
    # (T < S: every row's diagonal is visible and shifts it; T > S: no shift)
    rng = rng_from(seed)
    q, k, v = values(rng, (B, nh, T, hs)), values(rng, (B, nh, S, hs)), values(rng, (B, nh, S, hs))
    with knobs(mode):
        assert_twins_equal(lambda *a: fast.scaled_dot_product_attention(*a, is_causal=causal, dropout_p=p),
                           lambda *a: F.scaled_dot_product_attention(*a, is_causal=causal, dropout_p=p),
                           [q, k, v], seed, seed=seed)


def heads_then_attention(qkv, n_head, dropout_p=0.0):
    """The reference of the fused op, as the GPT's CausalSelfAttention writes it."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
               for i in range(3))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C)


@pytest.mark.parametrize("mode", MODES)
@given(B=st.integers(1, 3), T=sides, nh=st.integers(1, 3), hs=st.integers(1, 4), p=st.sampled_from([0.0, 0.25]),
       seed=seeds)
def test_fused_attention_twin(mode, B, T, nh, hs, p, seed):
    qkv = values(rng_from(seed), (B, T, 3 * nh * hs))
    with knobs(mode):
        assert_twins_equal(lambda t: fast.causal_self_attention(t, nh, p), lambda t: heads_then_attention(t, nh, p),
                           [qkv], seed, seed=seed)


def gelu_over(h):
    """GELU written over h's array, as fast.GPT runs it on c_fc's output."""
    return fast_functional.GELU.apply(h, inplace=True)


def add_over(x, branch):
    """x + branch written over branch's array, as fast.GPT runs its residual adds."""
    return fast_functional.ResidualAdd.apply(x, branch, inplace=True)


@given(x=arrays((3, 4)), b=arrays((3, 4)), seed=seeds)
def test_residual_add_twin_writes_over_the_branch(x, b, seed):
    (y, grads), (y_ref, grads_ref) = run_both(lambda a, c: add_over(a, c * 1.0), lambda a, c: a + c * 1.0,
                                              [x, b], seed)
    np.testing.assert_array_equal(y, y_ref)  # a + b == b + a exactly
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_array_equal(g, g_ref)
    branch = Tensor(b, requires_grad=True) * 1.0  # an intermediate, as a linear layer's output is
    assert add_over(Tensor(x), branch).data is branch.data


def pieces_of_one_buffer(arrays):
    """The arrays copied end to end into one flat buffer (with two extra slots after them, as the
    all-reduce's flags), returned as views of it: the gradients World.average_gradients leaves."""
    buf = np.empty(sum(a.size for a in arrays) + 2)
    views, offset = [], 0
    for a in arrays:
        view = buf[offset:offset + a.size].reshape(a.shape)
        view[...] = a
        views.append(view)
        offset += a.size
    return views


@pytest.mark.parametrize("mode", MODES)
@given(seed=seeds, partial=st.booleans(), in_one_buffer=st.booleans())
def test_adamw_twin_over_20_steps(mode, seed, partial, in_one_buffer):
    # in_one_buffer: the gradients are consecutive views of one buffer, as after a data-parallel
    # all-reduce, which the twin reads in place
    rng = rng_from(seed)
    shapes = [(3, 4), (5,), (2, 3, 2), (1,)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(20)]
    finals = []
    with knobs(mode):
        for make in (fast.AdamW, optim.AdamW):
            params = [nn.Parameter(p.copy()) for p in start]
            opt = make([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}],
                       lr=3e-3, betas=(0.9, 0.99))
            for step, gs in enumerate(grads):
                gs = pieces_of_one_buffer(gs) if in_one_buffer else [g.copy() for g in gs]
                for i, (p, g) in enumerate(zip(params, gs)):
                    p.grad = None if partial and step % 5 == 4 and i == 1 else g
                opt.step()
                for p, g in zip(params, grads[step]):  # step() reads the gradients, never writes them
                    assert p.grad is None or np.array_equal(p.grad, g), "step() changed a gradient"
            finals.append([p.data.copy() for p in params])
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_consecutive_pieces_is_the_concatenation_without_a_copy():
    a, b, c = pieces_of_one_buffer([np.arange(6.0).reshape(2, 3), np.arange(4.0), np.ones((1, 2))])
    flat = fast_optim.consecutive_pieces([a, b, c])
    np.testing.assert_array_equal(flat, np.concatenate([a.ravel(), b, c.ravel()]))
    assert np.shares_memory(flat, a) and flat.size == 12
    np.testing.assert_array_equal(fast_optim.consecutive_pieces([b, c]), np.concatenate([b, c.ravel()]))
    base = a.base
    assert fast_optim.consecutive_pieces([a, c]) is None  # a gap
    assert fast_optim.consecutive_pieces([b, a]) is None  # out of order
    assert fast_optim.consecutive_pieces([a.copy(), b]) is None  # not views of one buffer
    other = pieces_of_one_buffer([np.arange(6.0).reshape(2, 3), np.arange(4.0)])[1]
    assert fast_optim.consecutive_pieces([a, other]) is None  # the second from another buffer
    assert fast_optim.consecutive_pieces([a, base[6:6], b]) is not None  # an empty piece adds nothing
    assert fast_optim.consecutive_pieces([base[:4], base[4:8][::2]]) is None  # not contiguous
    assert fast_optim.consecutive_pieces([base[:4], base[4:8].view(np.int64)]) is None  # another dtype
    grid = np.zeros((3, 4))
    assert fast_optim.consecutive_pieces([grid[0], grid[1]]) is None  # a 2-D buffer


@pytest.mark.parametrize("mode", MODES)
@given(shape=st.lists(sides, min_size=1, max_size=3), seed=seeds)
@example(shape=[3, 6], seed=0).via("the max tree meets an odd half (6 -> 3)")
@example(shape=[2, 12], seed=1).via("the max tree meets an odd half (12 -> 6 -> 3)")
def test_reductions_equal_numpy_reductions(mode, shape, seed):
    x = values(rng_from(seed), tuple(shape), maybe_transposed=True)
    with knobs(mode):
        np.testing.assert_allclose(reductions.row_sum(x), x.sum(axis=-1, keepdims=True), rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(reductions.row_max(x), x.max(axis=-1, keepdims=True))
        x2 = x.reshape(-1, x.shape[-1])
        np.testing.assert_allclose(reductions.column_sum(x2), x2.sum(axis=0), rtol=1e-12, atol=1e-13)
        inv_n = np.full(x2.shape[-1], 1.0 / x2.shape[-1])
        np.testing.assert_allclose(reductions.row_mean(x2, inv_n), x2.mean(axis=-1, keepdims=True),
                                   rtol=1e-12, atol=1e-13)
        y2 = values(rng_from(seed + 1), x2.shape)
        want = (x2 * y2).sum(axis=-1, keepdims=True)
        np.testing.assert_allclose(reductions.row_dot(x2, y2, np.empty_like(x2)), want, rtol=1e-12, atol=1e-13)


def test_row_dot_without_vecdot_takes_the_product_then_the_row_sum(monkeypatch):
    x, y = np.arange(6.0).reshape(2, 3), np.ones((2, 3))
    monkeypatch.delattr(np, "vecdot", raising=False)  # NumPy before 2.0
    scratch = np.empty_like(x)
    np.testing.assert_array_equal(reductions.row_dot(x, y, scratch), [[3.0], [12.0]])
    np.testing.assert_array_equal(scratch, x * y)  # the product went through the scratch array


@pytest.mark.parametrize("mode", MODES)
def test_adamw_twin_after_its_buffers_were_replaced(mode):
    # Module.to and load_state_dict replace parameters' arrays: the twin must rebuild its flat buffers
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s) for s in [(3, 4), (5,)]]
    finals = []
    with knobs(mode):
        for make in (fast.AdamW, optim.AdamW):
            params = [nn.Parameter(p.copy()) for p in start]
            opt = make(params, lr=1e-2)
            for step in range(12):
                for p in params:
                    p.grad = np.sin(p.data * (step + 1))
                opt.step()
                if step == 3:
                    for p in params:
                        p.data = p.data.copy()  # as Module.to does
                if step == 7:
                    opt.load_state_dict(opt.state_dict())  # new moment arrays
            finals.append([p.data.copy() for p in params])
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- the whole GPT
def gpt_fast_and_reference(config, training, seed=0):
    """Loss and every parameter's gradient of the same GPT (float64), fast, then reference."""
    minigpt.manual_seed(seed)
    model = fast.GPT(config).to(dtype="float64").train(training)
    rng = rng_from(seed)
    x, y = (rng.integers(0, config.vocab_size, size=(12, config.block_size)) for _ in range(2))
    results = []
    for reference in (False, True):
        minigpt.manual_seed(seed + 1)  # the same dropout masks
        model.zero_grad()
        with fast.disabled() if reference else contextlib.nullcontext():
            _, loss = model(x, y)
            loss.backward()
        results.append((loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()}))
    return results


@pytest.mark.parametrize("config, training", [
    (nn.GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, bias=False), False),  # nanoGPT's CPU recipe (--preset nanogpt)
    (nn.GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=24, bias=True, dropout=0.2), True),
])
def test_gpt_fast_equals_reference(config, training):
    (loss_fast, grads_fast), (loss_ref, grads_ref) = gpt_fast_and_reference(config, training)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-12)
    assert grads_fast.keys() == grads_ref.keys()
    for name in grads_ref:
        np.testing.assert_allclose(grads_fast[name], grads_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_fast_gpt_is_nn_gpt_with_a_faster_forward():
    config = nn.GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=24, bias=True)
    minigpt.manual_seed(5)
    plain = nn.GPT(config).to(dtype="float64")
    minigpt.manual_seed(5)
    twin = fast.GPT(config).to(dtype="float64")
    assert isinstance(twin, nn.GPT) and type(plain) is nn.GPT
    assert list(plain.state_dict()) == list(twin.state_dict())  # the same keys, in the same order
    for name, value in plain.state_dict().items():
        np.testing.assert_array_equal(value, twin.state_dict()[name], err_msg=name)  # the same init
    x, y = (rng_from(1).integers(0, 65, size=(3, 16)) for _ in range(2))
    (logits, loss), (logits_twin, loss_twin) = plain(x, y), twin(x, y)
    assert type(loss._ctx) is F.CrossEntropy and type(loss_twin._ctx) is fast_functional.CrossEntropy
    np.testing.assert_allclose(logits_twin.data, logits.data, rtol=1e-10, atol=1e-12)


def test_the_switch():
    config = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    model = fast.GPT(config)
    x = np.zeros((2, 8), np.int64)
    assert type(nn.GPT(config)(x, x)[1]._ctx) is F.CrossEntropy  # the reference model is the reference
    assert fast.enabled(model.lm_head.weight)
    assert type(model(x, x)[1]._ctx) is fast_functional.CrossEntropy  # the fast twin ran
    with fast.disabled():
        assert not fast.enabled(model.lm_head.weight)
        assert type(model(x, x)[1]._ctx) is F.CrossEntropy  # the reference ran
        with fast.disabled():
            pass
        assert not fast.enabled(model.lm_head.weight)  # nested: still off
    assert fast.enabled(model.lm_head.weight)
    with mock.patch.object(minigpt.backend, "get_array_module", lambda x: object()):
        assert not fast.enabled(model.lm_head.weight)  # not NumPy (CuPy): the reference


# ----------------------------------------------------------------------------- the tests of the tests
def tiles_without_the_last(original):
    def mutant(xp, n, unit=1):
        tiles = original(xp, n, unit)
        return tiles[:-1] if len(tiles) > 1 else tiles
    return mutant


def scatter_add_dropping_repeats(dweight, idx, rows):
    dweight[idx] += rows  # fancy-index +=: a repeated index keeps only one of its rows
    return dweight


def max_tree_forgetting_the_odd_column(x):
    m = x
    while m.shape[-1] > 1:
        half = m.shape[-1] // 2
        m = np.maximum(m[..., :half], m[..., half:2 * half])
    return m


def pieces_one_element_late(arrays):
    """consecutive_pieces, reading the buffer one element after where the gradients start."""
    flat = original_consecutive_pieces(arrays)
    if flat is None:
        return None
    start = (flat.ctypes.data - flat.base.ctypes.data) // flat.itemsize + 1
    return flat.base[start:start + flat.size]


original_consecutive_pieces = fast_optim.consecutive_pieces


def update_that_scales_its_gradient(p, g, m, v, group, t):
    """AdamW's update, then g scaled in place: a twin that treats the caller's gradients as scratch."""
    original_update(p, g, m, v, group, t)
    g *= 0.5


original_update = fast_optim.adamw_update


def transposed_unscaled(k, buf, scale=None):
    """The copy of kᵀ without the scale it should carry."""
    return original_transposed(k, buf)


original_transposed = fast_attention.transposed


def max_forgotten(x):
    """A row max of 0 whatever the row holds: a redo that shifts by it is the unshifted exp again."""
    return np.zeros(x.shape[:-1] + (1,), dtype=x.dtype)


def every_small_gradient_case(mode):
    """test_cross_entropy_keeps_a_small_gradient_over_a_large_sum over all its parameters (``mode``:
    the twins' knobs play no part in it)."""
    for dtype in (np.float32, np.float64):
        for reduction in ("none", "mean"):
            test_cross_entropy_keeps_a_small_gradient_over_a_large_sum(dtype, reduction)


def every_sum_usable(total):
    """unusable_sums that finds nothing to redo: an overflowed or NaN row is kept as it is."""
    return np.zeros(total.shape, dtype=bool)


MUTANTS = {
    "layer norm drops its last row tile": (tiling, "tiles", tiles_without_the_last(tiling.tiles),
                                           test_layer_norm_twin, "tiny tiles, branches on"),
    "attention drops its last batch tile": (tiling, "tiles", tiles_without_the_last(tiling.tiles),
                                            test_attention_twin, "tiny tiles, branches on"),
    "GELU drops its last tile": (tiling, "tiles", tiles_without_the_last(tiling.tiles),
                                 test_gelu_twin, "tiny tiles, branches on"),
    "AdamW drops its last tile": (tiling, "tiles", tiles_without_the_last(tiling.tiles),
                                  test_adamw_twin_over_20_steps, "tiny tiles, branches on"),
    "AdamW reads an all-reduce buffer one element late": (fast_optim, "consecutive_pieces", pieces_one_element_late,
                                                          test_adamw_twin_over_20_steps, "tiny tiles, branches on"),
    "AdamW writes into the gradients it reads": (fast_optim, "adamw_update",
                                                update_that_scales_its_gradient,
                                                test_adamw_twin_over_20_steps, "tiny tiles, branches on"),
    "attention's copy of kᵀ forgets the scale": (fast_attention, "transposed", transposed_unscaled,
                                                 test_attention_twin, "tiny tiles, branches on"),
    "embedding's large-input branch drops repeated indices": (fast_functional, "scatter_add",
                                                              scatter_add_dropping_repeats, test_embedding_twin,
                                                              "tiny tiles, branches off"),
    "softmax's max tree forgets the odd column": (fast_functional, "row_max", max_tree_forgetting_the_odd_column,
                                                  test_softmax_twin, "tiny tiles, branches on"),
    "softmax redoes every row without its max": (fast_functional, "row_max", max_forgotten,
                                                 test_softmax_twin, "tiny tiles, branches off"),
    "cross-entropy keeps rows whose exp overflowed": (fast_functional, "unusable_sums", every_sum_usable,
                                                      test_cross_entropy_twin, "tiny tiles, branches on"),
    "cross-entropy multiplies by a subnormal factor": (fast_functional, "loses_digits", lambda factor: False,
                                                      every_small_gradient_case, "as shipped"),
    "cross-entropy's max tree forgets the odd column": (fast_functional, "row_max",
                                                        max_tree_forgetting_the_odd_column, test_cross_entropy_twin,
                                                        "tiny tiles, branches on"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_broken_twin_is_caught(mutant):
    module, name, replacement, property_test, mode = MUTANTS[mutant]
    with mock.patch.object(module, name, replacement), np.errstate(all="ignore"):  # a broken softmax overflows
        try:
            property_test(mode=mode)
        except AssertionError:
            return
        except Exception as group:  # hypothesis reports several distinct failures as an ExceptionGroup
            if any(isinstance(e, AssertionError) for e in getattr(group, "exceptions", ())):
                return
            raise
    pytest.fail(f"the mutant '{mutant}' passed the equality checks")


# ----------------------------------------------------------------------------- edges of the twins
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_softmax_redoes_rows_out_of_exp_range_alone(dtype):
    # the twin tries exp(x) unshifted; rows that overflow, underflow or hold NaN are redone with
    # their max, quietly, and the other rows keep their unshifted result bit for bit
    import warnings

    big = float(np.log(np.finfo(dtype).max)) + 10  # exp(big) overflows
    z = np.array([[0.5, -1.0, 2.0], [big, big - 1, 0.0], [-2 * big, -2 * big - 1, -2 * big],
                  [np.nan, 0.0, 1.0], [3.0, 1.0, -4.0]], dtype=dtype)
    with warnings.catch_warnings(), mock.patch.object(fast_functional, "REDO_ALL_ABOVE", 1.0):  # each row alone
        warnings.simplefilter("error")
        p = fast.softmax(Tensor(z)).data
    z64 = z.astype(np.float64)
    e = np.exp(z64 - z64.max(axis=-1, keepdims=True))
    expected = e / e.sum(axis=-1, keepdims=True)
    finite = [0, 1, 2, 4]
    np.testing.assert_allclose(p[finite], expected[finite], rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=np.finfo(dtype).tiny)  # subnormal results keep few digits
    assert np.isnan(p[3]).all()
    alone = fast.softmax(Tensor(z[[0, 4]])).data  # the ordinary rows without the bad ones
    np.testing.assert_array_equal(p[[0, 4]], alone)


def test_fast_gelu_inplace_writes_over_its_input_and_changes_nothing_else():
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((5, 70_000)), rng.standard_normal((5, 70_000))  # several tiles

    def run(make_input, inplace):
        leaf_ = Tensor(x.copy(), requires_grad=True)
        h = make_input(leaf_)  # an intermediate, as the MLP's c_fc output
        y = gelu_over(h) if inplace else fast.gelu(h)
        y.backward(g[:, : y.shape[1]])
        return h, y, leaf_.grad

    h_ref, y_ref, grad_ref = run(lambda t: t * 1.0, False)
    h, y, grad = run(lambda t: t * 1.0, True)
    assert y.data is h.data  # written over its input
    np.testing.assert_array_equal(y.data, y_ref.data)
    np.testing.assert_array_equal(grad, grad_ref)
    np.testing.assert_array_equal(h_ref.data, x)  # not in place: the input is untouched
    # an input that is not contiguous is copied first, and stays as it was
    h, y, grad = run(lambda t: (t * 1.0)[:, ::2], True)
    assert not np.shares_memory(y.data, h.data)
    np.testing.assert_array_equal(h.data, x[:, ::2])


def test_kt_copies_are_made_for_the_cpu_preset_shapes_only():
    rng = np.random.default_rng(2)
    q, k = (rng.standard_normal((2, 1, 40, 3)) for _ in range(2))
    assert fast_attention.transposed_buffer(q, k, slice(0, 1)) is not None
    assert fast_attention.transposed_buffer(q[..., :1, :], k, slice(0, 1)) is None  # one query row: a view


@given(B=st.integers(1, 2), T=sides, nh=st.integers(1, 3), hs=st.integers(1, 3))
def test_fused_attention_gradient(B, T, nh, hs):
    x = np.random.default_rng(T).standard_normal((B, T, 3 * nh * hs))
    assert gradcheck(lambda t: fast.causal_self_attention(t, nh), [Tensor(x, requires_grad=True)])


@pytest.mark.parametrize("T", [1, 5, 64])
def test_causal_attention_redoes_no_softmax_row(T):
    # scores shifted by their diagonal (always visible) leave every row's sum of exp >= 1, so the
    # fast softmax's unshifted try holds everywhere; without the shift, early rows whose few
    # visible scores are all below 0 must be redone with their max (rows are found by row_max)
    qkv = np.random.default_rng(T).standard_normal((6, T, 3 * 4 * 8)).astype(np.float32)
    y_ref = heads_then_attention(Tensor(qkv), 4).data
    for shift, expect_redo in ((fast_attention.shift_by_diagonal, False), (lambda s: None, True)):
        with mock.patch.object(fast_attention, "shift_by_diagonal", shift), \
                mock.patch.object(fast_functional, "row_max", wraps=fast_functional.row_max) as row_max:
            y = fast.causal_self_attention(Tensor(qkv), 4).data
        assert row_max.called == expect_redo
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q1, k0, k1", [(1e20, 1.0, -1e20),  # q1·k1 overflows: a diagonal of -inf
                                         (1.8e19, 1e19, -1e19)])  # finite, but score − diagonal overflows
def test_causal_attention_with_an_overflowing_diagonal_equals_the_reference(q1, k0, k1):
    # row 1 sees scores (q1·k0, q1·k1): a huge score beside a hugely negative (or -inf) diagonal.
    # The reference's softmax gives [1, 0]; a shift by the raw diagonal would give NaN
    q = np.array([1.0, q1, 1.0], dtype=np.float32).reshape(1, 1, 3, 1)
    k = np.array([k0, k1, 1.0], dtype=np.float32).reshape(1, 1, 3, 1)
    v = np.array([2.0, 3.0, 5.0], dtype=np.float32).reshape(1, 1, 3, 1)
    qkv = np.concatenate([q, k, v], axis=-1).reshape(1, 3, 3)  # (B, T, 3C), one head of size 1
    with np.errstate(all="ignore"):  # the reference's q @ kᵀ overflows, as it should
        y_ref = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
        y = fast.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=True).data
        y_fused = fast.causal_self_attention(Tensor(qkv), 1).data
    assert np.isfinite(y_ref).all() and y_ref[0, 0, 1, 0] == 2.0  # all of row 1's weight on key 0
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    np.testing.assert_allclose(y_fused.reshape(y_ref.shape), y_ref, rtol=1e-6)


def test_fused_attention_keeps_float32_and_checks_p():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 12)).astype(np.float32), requires_grad=True)
    y = fast.causal_self_attention(x, 2)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == np.float32
    with pytest.raises(ValueError):
        fast.causal_self_attention(x, 2, dropout_p=2.0)


def test_residual_add_broadcasting_falls_back_to_a_new_array():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    b_leaf = Tensor(np.arange(3.0), requires_grad=True)
    b = b_leaf * 1.0  # an op's output, so writing over it would be allowed, but it broadcasts
    y = add_over(x, b)
    np.testing.assert_array_equal(y.data, np.ones((2, 3)) + np.arange(3.0))
    np.testing.assert_array_equal(b.data, np.arange(3.0))
    y.backward(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.grad, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(b_leaf.grad, [3.0, 5.0, 7.0])


def test_residual_add_never_writes_into_a_read_only_branch():
    data = np.arange(6.0).reshape(2, 3)
    data.flags.writeable = False
    branch = Tensor(data, requires_grad=True).reshape(2, 3)  # an op's output: a read-only view of data
    assert not branch.is_leaf and not branch.data.flags.writeable
    y = add_over(Tensor(np.ones((2, 3))), branch)
    np.testing.assert_array_equal(y.data, np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(data, np.arange(6.0).reshape(2, 3))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_embedding_twin_keeps_an_inf_or_nan_in_its_own_row(bad):
    """The one-hot product would spread 0 * inf = NaN over every row of the gradient; the twin
    notices and scatters, as the reference (and torch) do."""
    idx = np.array([[0, 2, 2, 1]])
    dout = np.ones((1, 4, 3), np.float32)
    dout[0, 1, 0] = bad  # reaches row 2 only
    grads = []
    for embedding in (fast.embedding, F.embedding):
        w = Tensor(np.zeros((4, 3), np.float32), requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the twin's product meets the inf quietly, as the reference does
            embedding(idx, w).backward(dout)
        grads.append(w.grad)
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.isfinite(grads[0][[0, 1, 3]]).all() and not np.isfinite(grads[0][2, 0])


def _dtypes_of(value: object) -> set[str]:
    """The dtypes of the arrays in what a forward or backward returned (a tuple, an array, None)."""
    values = value if isinstance(value, tuple) else (value,)
    return {str(v.dtype) for v in values if hasattr(v, "dtype")}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_float32_training_step_is_float32_in_every_op_gradient_and_state(dropout, monkeypatch):
    """A float32 GPT's whole training step (fast twins, forward, backward, clipping, AdamW) makes no
    float64 array where it can be seen: no op's output, no gradient an op sends back, no .grad,
    no weight or AdamW moment. (One float64 constant slipped into an op doubles its memory traffic
    and casts everything after it.)"""
    from minigpt.tensor import Function
    from minigpt.training.steps import train_step

    seen: dict[str, set[str]] = {}

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    def recording(method, name: str):
        def recorded(self, *args, **kwargs):
            out = method(self, *args, **kwargs)
            seen.setdefault(name, set()).update(_dtypes_of(out))
            return out
        return recorded

    for cls in set(subclasses(Function)):
        for phase in ("forward", "backward"):
            if phase in vars(cls):
                monkeypatch.setattr(cls, phase, recording(vars(cls)[phase], f"{cls.__name__}.{phase}"))
    minigpt.manual_seed(0)
    cfg = nn.GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=dropout)
    model = fast.GPT(cfg).train()
    opt = fast.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (3, 16)), rng.integers(0, 11, (3, 16))
    for _ in range(2):  # the second step runs on AdamW's moments made by the first
        train_step(model, opt, x, y, grad_clip=1.0)
    for name in ("LayerNorm.forward", "LayerNorm.backward", "GELU.forward", "CausalSelfAttentionQKV.backward",
                 "Linear.backward", "CrossEntropy.forward", "Embedding.backward"):
        assert name in seen, f"{name} never ran: the test no longer watches what a step runs"
    wider = {name: d for name, d in seen.items() if d - {"float32"}}
    assert not wider, f"ops that made arrays other than float32: {wider}"
    for p in model.parameters():
        assert p.dtype == p.grad.dtype == np.float32
        state = opt.state[id(p)]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == np.float32
