"""examples/minimal_train.py: the whole loop on one screen trains, with the reference alone."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "minimal_train.py"


def test_the_minimal_loop_reaches_the_loss_its_docstring_states():
    r = subprocess.run([sys.executable, str(SCRIPT), "--max_iters", "300"], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    losses = [float(v) for v in re.findall(r"^step \d+: val loss ([\d.]+)$", r.stdout, flags=re.M)]
    assert losses[0] > 4.0 and losses[-1] < 2.2  # from uniform guessing over 65 characters (ln 65 = 4.17)
    assert "below 2.2" in SCRIPT.read_text()


def test_the_minimal_loop_uses_the_reference_alone():
    source = SCRIPT.read_text()
    imports = re.findall(r"^(?:from|import) (\S+)", source, flags=re.M)
    assert imports == ["argparse", "numpy", "minigpt", "minigpt", "minigpt.data"]  # no fast, no training, no MPI
    assert "nn.GPT(" in source and "optim.AdamW(" in source and "fast" not in source.split('"""')[2]
    assert len(source.splitlines()) <= 70
