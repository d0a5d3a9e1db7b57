"""minigpt.viz and Tensor's repr: the graph behind a tensor, as DOT text and as a picture."""

import os
import re
import shutil
import stat

import numpy as np
import pytest

from minigpt import Tensor, nn, viz
from minigpt import functional as F


def small_graph():
    """A linear layer and cross-entropy, the docs' example: loss <- CrossEntropy <- Linear <- x, W, b."""
    layer = nn.Linear(4, 3)
    x = Tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    return layer, x, F.cross_entropy(layer(x), np.array([0, 1, 2, 0, 1]))


def parse(dot):
    """(nodes: id -> label, edges: [(from, to)]) of the DOT text to_dot writes."""
    nodes = dict(re.findall(r'^  (\w+) \[[^\]]*label="((?:[^"\\]|\\.)*)"', dot, flags=re.M))
    edges = re.findall(r"^  (\w+) -> (\w+);$", dot, flags=re.M)
    return nodes, edges


def test_repr_names_the_op_that_made_a_tensor():
    a = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    assert repr(a).endswith("shape=(2, 3), dtype=float32, device='cpu', requires_grad=True)")
    assert repr(a * 2.0).endswith("grad_fn=<Mul>)") and repr(F.softmax(a)).endswith("grad_fn=<Softmax>)")
    assert (a * 2.0).grad_fn.inputs[0] is a and a.grad_fn is None
    plain = repr(Tensor(np.arange(3.0)))
    assert plain == "Tensor([0., 1., 2.], shape=(3,), dtype=float64, device='cpu')"


def test_to_dot_draws_every_tensor_and_op_with_shapes_dtypes_and_names():
    layer, x, loss = small_graph()
    nodes, edges = parse(viz.to_dot(loss, names=dict(layer.named_parameters())))
    by_label = {label: node for node, label in nodes.items()}
    ops = sorted(label for node, label in nodes.items() if node.startswith("f"))
    assert ops == ["CrossEntropy", "Linear"]
    loss_node, logits = by_label["() float32"], by_label["(5, 3) float32"]
    weight, bias = by_label["weight\\n(3, 4) float32\\nrequires_grad"], by_label["bias\\n(3,) float32\\nrequires_grad"]
    data = by_label["(5, 4) float32"]  # x: an input that collects no gradient
    linear, ce = by_label["Linear"], by_label["CrossEntropy"]
    assert sorted(edges) == sorted([(ce, loss_node), (logits, ce), (linear, logits), (data, linear),
                                    (weight, linear), (bias, linear)])
    assert len(nodes) == 7


def test_to_dot_walks_a_graph_of_any_depth():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):  # deeper than Python's recursion limit
        y = y * 1.0
    nodes, edges = parse(viz.to_dot(y))
    assert len(nodes) == 2 * 5000 + 1 and len(edges) == 2 * 5000


def test_draw_says_how_to_install_graphviz_when_dot_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    with pytest.raises(RuntimeError, match="apt install graphviz"):
        viz.draw(small_graph()[2], tmp_path / "graph.svg")
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        viz.draw(small_graph()[2], tmp_path / "graph.pdf")


def test_draw_hands_the_dot_text_to_the_dot_program(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "dot"  # records its arguments and input, as a stand-in for Graphviz
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" > "$0.args"\ncat > "$0.stdin"\necho drawn > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ["PATH"])
    layer, _, loss = small_graph()
    out = viz.draw(loss, tmp_path / "graph.png", names=dict(layer.named_parameters()))
    assert out.read_text() == "drawn\n"
    assert (tmp_path / "bin" / "dot.args").read_text().split() == ["-Tpng", "-o", str(out)]
    assert (tmp_path / "bin" / "dot.stdin").read_text() == viz.to_dot(loss, names=dict(layer.named_parameters()))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (the fake above runs)")
def test_draw_writes_an_svg_with_graphviz(tmp_path):
    out = viz.draw(small_graph()[2], tmp_path / "graph.svg")
    svg = out.read_text()
    assert "<svg" in svg and "CrossEntropy" in svg and "Linear" in svg
