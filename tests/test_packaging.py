"""What a user gets from `pip install .` or from an sdist: the package WITH its Tiny Shakespeare.

The build runs as pip runs it: setuptools and wheel fetched from the package index into a folder of
their own, then the PEP 517 hooks of setuptools.build_meta on a copy of the repository.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSET = "minigpt/assets/tinyshakespeare.txt.gz"
LEFT_BEHIND = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                     ".pytest_cache", "out", "out-*", ".venv")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built from a copy of this repository."""
    tmp = tmp_path_factory.mktemp("build")
    src, backend, dist = tmp / "src", tmp / "backend", tmp / "dist"
    shutil.copytree(REPO, src, ignore=LEFT_BEHIND)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--target", str(backend), "setuptools>=64", "wheel"], check=True, capture_output=True)
    build = ("import sys, setuptools.build_meta as b; d = sys.argv[1]; "
             "names = [b.build_wheel(d), b.build_sdist(d)]; print('built:', *names)")
    r = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=src, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(backend)))
    assert r.returncode == 0, r.stderr
    wheel_name, sdist_name = r.stdout.strip().splitlines()[-1].split()[1:]  # setuptools logs above it
    return dist / wheel_name, dist / sdist_name


def test_the_wheel_carries_the_text_and_loads_it_from_anywhere(dists, tmp_path):
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as z:
        assert ASSET in z.namelist()
        z.extractall(tmp_path / "site")
    # from another folder, with nothing but the wheel's files on the path, and requests unimportable
    (tmp_path / "site" / "requests.py").write_text("raise ImportError('no network here')\n")
    r = subprocess.run([sys.executable, "-c", "import minigpt; print(len(minigpt.data.load_text()), minigpt.__file__)"],
                       cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0, r.stderr
    count, where = r.stdout.split()
    assert count == "1115394" and Path(where).is_relative_to(tmp_path / "site")


def test_the_wheel_carries_the_command_and_the_license(dists, tmp_path):
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        z.extractall(tmp_path / "site")
    assert "minigpt = minigpt.commands:entry" in entry_points  # pip makes it the `minigpt` command
    assert "minigpt/exercises/blanks/linear.py" in names and "minigpt/assets/expected_curves.json" in names
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names)
    # a wheel user trains with the command the wheel carries: python -m minigpt train
    r = subprocess.run([sys.executable, "-m", "minigpt", "train", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0 and "--n_layer" in r.stdout, r.stderr


def test_the_sdist_carries_the_text_and_the_examples(dists):
    _, sdist = dists
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert ASSET in names
    assert {"examples/train_shakespeare.py", "README.md", "setup.cfg", "minigpt/data.py", "LICENSE",
            "minigpt/commands/train.py"} <= names


def test_nothing_reads_outside_the_repository():
    # the text ships in the package: no test, example or benchmark reaches for a copy beside the clone
    beside = "/".join(["..", "shared"])  # spelled so that this file does not match itself
    for folder in ("tests", "examples", "benchmarks", "minigpt"):
        for f in (REPO / folder).rglob("*.py"):
            source = f.read_text(encoding="utf-8")
            for outside in (beside, '"shared", ' + '"data"', "MINIGPT_TEST" + "_DATA"):
                assert outside not in source, (f, outside)


def test_ci_examples_are_the_same_on_every_run():
    from hypothesis import settings

    assert settings.get_profile("ci").derandomize  # a red CI run is red again on re-run
    assert not settings.get_profile("thorough").derandomize  # the deep search stays random
