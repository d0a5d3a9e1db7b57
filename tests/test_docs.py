"""docs/derivations.md says what the code computes: its formula blocks are run against the ops,
and every pointer to the code names something that exists."""

import importlib
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import Tensor, nn, optim
from minigpt import functional as F

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "derivations.md"
sys.path.insert(0, str(REPO / "examples"))
BLOCKS = re.findall(r"```python\n# formula: (\w+)\n(.*?)```", DOC.read_text(), flags=re.S)


def formula(name):
    namespace = {"np": np}
    for n, code in BLOCKS:
        if n == name:
            exec(code, namespace)  # our own documentation, not a file from a user
            return namespace
    raise KeyError(name)


def test_every_op_has_its_formula_block():
    assert sorted(n for n, _ in BLOCKS) == sorted(
        ["linear", "embedding", "softmax", "log_softmax", "cross_entropy", "layer_norm", "gelu", "heads",
         "attention", "dropout", "adamw"])


def test_every_code_pointer_exists():
    pointers = re.findall(r"`(minigpt/[\w/]+)\.py::(\w+)`", DOC.read_text())
    assert len(pointers) >= 9
    for path, name in pointers:
        module = importlib.import_module(path.replace("/", "."))
        assert hasattr(module, name), f"{path}.py has no {name}"


rng = np.random.default_rng(0)


def leaf(shape):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


def check(name, op, inputs, backward_extra=()):
    """Run the documented forward/backward and minigpt's op on the same inputs."""
    doc = formula(name)
    arrays = [t.data if isinstance(t, Tensor) else t for t in inputs]
    out = op(*inputs)
    np.testing.assert_allclose(out.data, doc["forward"](*arrays), rtol=1e-10, atol=1e-12)
    dy = rng.standard_normal(out.shape)
    out.backward(dy)
    expected = doc["backward"](*arrays, dy, *backward_extra)
    expected = expected if isinstance(expected, tuple) else (expected,)
    grads = [t.grad for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    assert len(grads) == len(expected)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


def test_linear():
    check("linear", F.linear, [leaf((5, 3)), leaf((4, 3)), leaf((4,))])


def test_embedding():
    check("embedding", F.embedding, [rng.integers(0, 5, 7), leaf((5, 3))])


@pytest.mark.parametrize("name, op", [("softmax", F.softmax), ("log_softmax", F.log_softmax), ("gelu", F.gelu)])
def test_elementwise_and_rowwise(name, op):
    check(name, op, [leaf((4, 6))])


def test_cross_entropy():
    z, t = leaf((6, 5)), rng.integers(0, 5, 6)
    doc = formula("cross_entropy")
    loss = F.cross_entropy(z, t)
    assert loss.item() == pytest.approx(doc["forward"](z.data, t), rel=1e-12)
    loss.backward(np.array(1.7))
    np.testing.assert_allclose(z.grad, doc["backward"](z.data, t, 1.7), rtol=1e-10)


def test_layer_norm():
    check("layer_norm", F.layer_norm, [leaf((4, 6)), leaf((6,)), leaf((6,))])


def test_dropout_with_the_mask_the_op_drew():
    doc = formula("dropout")
    x = Tensor(rng.uniform(1, 2, (6, 7)), requires_grad=True)  # never 0: a 0 in y means dropped
    y = F.dropout(x, p=0.3)
    keep = y.data != 0
    assert 0 < keep.mean() < 1
    np.testing.assert_allclose(y.data, doc["forward"](x.data, keep, 0.3), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    y.backward(dy)
    np.testing.assert_allclose(x.grad, doc["backward"](x.data, keep, 0.3, dy), rtol=1e-12)


def test_the_tanh_gelu_is_within_what_the_doc_says_of_x_phi_x():
    x = np.linspace(-8, 8, 20001)
    erf = np.vectorize(math.erf)
    exact = x * 0.5 * (1 + erf(x / np.sqrt(2)))  # x·Φ(x)
    assert np.abs(F.gelu(Tensor(x)).data - exact).max() < 0.0005
    assert "within 0.0005 of the exact GELU" in DOC.read_text()


def test_split_heads_as_the_gpt_does_it():
    """The doc's split into heads and its backward against CausalSelfAttention's reshape and transpose ops."""
    doc = formula("heads")
    x = leaf((2, 5, 12))
    heads = x.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3)  # as nn/gpt.py's CausalSelfAttention.forward
    np.testing.assert_array_equal(heads.data, doc["forward"](x.data, 3))
    dy = rng.standard_normal(heads.shape)
    heads.backward(dy)
    np.testing.assert_array_equal(x.grad, doc["backward"](x.data, 3, dy))
    merged = Tensor(heads.data).transpose(0, 2, 1, 3).reshape(2, 5, 12)  # and the merge undoes the split
    np.testing.assert_array_equal(merged.data, x.data)


def test_the_measured_init_scales_the_doc_quotes():
    """derivations.md's numbers from examples/init_scales.py at GPT-2's init (the trained ones need a run)."""
    import init_scales  # examples/init_scales.py

    text = DOC.read_text()
    model = init_scales.preset_gpt()
    idx = init_scales.measurement_batch()
    s = init_scales.attention_stats(model, idx)
    assert s["q"] == pytest.approx(128 * 0.02**2, rel=0.1) and s["k"] == pytest.approx(128 * 0.02**2, rel=0.1)
    assert f"var(q) = var(k) = {s['q']:.3f}" in text and f"{s['k']:.3f}" == f"{s['q']:.3f}"
    assert f"var(scores) = {s['scores']:.4f}" in text and f"the largest weight is {s['max_weight']:.3f}" in text
    scaled = init_scales.stream_stds(init_scales.preset_gpt(), idx)
    plain = init_scales.stream_stds(init_scales.unscaled(init_scales.preset_gpt()), idx)
    assert scaled[-1] < 0.6 * plain[-1]  # the scaling keeps the stream from growing with depth
    assert " → ".join(f"{v:.3f}" for v in scaled[1:]) in text and " → ".join(f"{v:.3f}" for v in plain[1:]) in text


def test_attention():
    check("attention", F.scaled_dot_product_attention, [leaf((2, 3, 5, 4)) for _ in range(3)])


def test_adamw():
    doc = formula("adamw")
    p0 = rng.standard_normal(5)
    param = nn.Parameter(p0.copy())
    opt = optim.AdamW([param], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    for t in range(1, 5):
        g = rng.standard_normal(5)
        param.grad = g.copy()
        opt.step()
        p, m, v = doc["step"](p, g, m, v, t, 0.01, 0.9, 0.99, 1e-8, 0.1)
        np.testing.assert_allclose(param.data, p, rtol=1e-12)
