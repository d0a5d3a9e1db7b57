"""The layout is the architecture: imports run one way, reference -> fast -> training -> commands.

The reference modules a learner reads import nothing from the fast path, MPI or training, and
hold none of the names that only those use; the fast twins import nothing from training or the
commands; the training rooms nothing from the loop or the commands.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minigpt"
REFERENCE = ["tensor", "ops", "functional", "optim", "nn", "backend", "files", "data", "tokenizers", "hub", "gradcheck",
             "viz"]
# each layer, and the modules it must not import (a module's own layer and those below are fine)
ABOVE = {
    "reference": ["minigpt.fast", "minigpt.distributed", "minigpt.train", "minigpt.training", "minigpt.commands",
                  "minigpt.cli", "minigpt.checkpoint"],
    "fast": ["minigpt.train", "minigpt.training", "minigpt.commands", "minigpt.cli"],
    "training": ["minigpt.train", "minigpt.commands", "minigpt.cli"],
    "exercises": ["minigpt.fast", "minigpt.distributed", "minigpt.train", "minigpt.training", "minigpt.commands",
                  "minigpt.cli"],
}
FAST_ONLY_NAMES = ["unshared", "fresh_output", "writes_over", "on_every_device", "SharedMemoryStep", "mpi4py",
                   "blas_threads", "allreduce", "Allreduce", "keep_freed_memory", "tiling"]


def modules(prefix):
    """Every module under minigpt/ whose dotted name starts with ``minigpt.prefix``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("minigpt", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        if name == f"minigpt.{prefix}" or name.startswith(f"minigpt.{prefix}."):
            yield name, path.read_text()


def imported(source):
    """The dotted names a module's source imports (``from minigpt import fast`` gives minigpt.fast)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def upward(source, forbidden):
    return sorted({n for n in imported(source) for f in forbidden if n == f or n.startswith(f + ".")})


def layer_modules():
    for layer, prefixes in (("reference", REFERENCE), ("fast", ["fast"]), ("training", ["training"]),
                            ("exercises", ["exercises"])):
        for prefix in prefixes:
            for name, source in modules(prefix):
                yield layer, name, source


@pytest.mark.parametrize("layer, name, source", list(layer_modules()), ids=lambda v: v if isinstance(v, str) and
                         v.startswith("minigpt") else "")
def test_no_module_imports_a_layer_above_its_own(layer, name, source):
    assert not upward(source, ABOVE[layer]), f"{name} ({layer}) imports {upward(source, ABOVE[layer])}"


@pytest.mark.parametrize("prefix", REFERENCE)
def test_the_reference_holds_no_name_only_the_fast_path_or_mpi_uses(prefix):
    for name, source in modules(prefix):
        found = [w for w in FAST_ONLY_NAMES if re.search(rf"\b{w}\b", source)]
        assert not found, f"{name} holds {found}"


def test_the_check_finds_a_planted_upward_import():
    planted = "import numpy\nfrom minigpt import backend, fast\nfrom minigpt.training.config import TrainConfig\n"
    assert upward(planted, ABOVE["reference"]) == ["minigpt.fast", "minigpt.training.config",
                                                   "minigpt.training.config.TrainConfig"]
    assert "minigpt.fast.switch" in upward("from minigpt.fast.switch import enabled\n", ABOVE["reference"])
    assert upward("from minigpt import backend, nn\n", ABOVE["reference"]) == []
    assert len(list(modules("nn"))) >= 4 and len(list(modules("fast"))) >= 8  # the walk finds the files
