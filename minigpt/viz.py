"""A picture of the graph behind a tensor: the ops that made it and the tensors they read.

    from minigpt import viz
    loss = F.cross_entropy(layer(x), targets)
    print(viz.to_dot(loss, names=dict(layer.named_parameters())))   # Graphviz DOT text
    viz.draw(loss, "graph.svg")                                     # needs Graphviz's `dot`

The graph is the one ``loss.backward()`` walks (minigpt/tensor.py): every tensor that needs a
gradient and the op (``Function``) that made it, back to the leaves. Tensors are boxes (shape,
dtype; the leaves that collect a gradient are filled), ops are ellipses named by their class.
An arrow runs from each input into the op that read it, and from the op to its output, in the
direction of the forward pass; backward runs them in reverse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from minigpt.tensor import Tensor

INSTALL_GRAPHVIZ = ("drawing needs Graphviz's dot program, which is not installed (Debian/Ubuntu: apt install "
                    "graphviz; macOS: brew install graphviz; conda: conda install graphviz); viz.to_dot(t) gives "
                    "the graph as DOT text without it")


def _quote(*lines: str) -> str:
    """A DOT string of ``lines``: quotes and backslashes escaped, lines joined by DOT's \\n."""
    return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines) + '"'


def _tensor_label(t: Tensor, name: str | None) -> str:
    lines = ([name] if name else []) + [f"{tuple(t.shape)} {t.dtype}"]
    if t.grad_fn is None and t.requires_grad:
        lines.append("requires_grad")
    return _quote(*lines)


def to_dot(t: Tensor, names: dict[str, Tensor] | None = None) -> str:
    """The Graphviz DOT source of the graph behind ``t``: a node per tensor (its shape, dtype and,
    for a leaf that collects a gradient, ``requires_grad``; its name where ``names`` maps one to it,
    e.g. ``dict(model.named_parameters())``) and per op (its class name). Needs nothing installed."""
    label_of = {id(p): n for n, p in (names or {}).items()}
    lines = ["digraph minigpt {", "  rankdir=BT;", '  node [fontname="Helvetica", fontsize=10];']
    seen: set[int] = set()
    stack = [t]
    while stack:  # depth-first, with a stack: graphs of any depth
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        style = ', style=filled, fillcolor="#dbe9f6"' if node.grad_fn is None and node.requires_grad else ""
        lines.append(f"  t{id(node)} [shape=box, label={_tensor_label(node, label_of.get(id(node)))}{style}];")
        ctx = node.grad_fn
        if ctx is None:
            continue
        lines.append(f"  f{id(ctx)} [shape=ellipse, label={_quote(type(ctx).__name__)}];")
        lines.append(f"  f{id(ctx)} -> t{id(node)};")
        for inp in ctx.inputs:
            if inp is not None:
                lines.append(f"  t{id(inp)} -> f{id(ctx)};")
                stack.append(inp)
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(t: Tensor, path: str | os.PathLike, names: dict[str, Tensor] | None = None) -> Path:
    """Write the picture of ``to_dot(t, names)`` to ``path``, an .svg or .png file, with Graphviz's
    ``dot`` program; where it is missing, a RuntimeError that says how to install it."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise ValueError(f"draw writes .svg or .png files, not {path.name!r}")
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError(INSTALL_GRAPHVIZ)
    result = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=to_dot(t, names), text=True,
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"Graphviz's dot failed: {' '.join(result.stderr.split())}")
    return path
