"""The `minigpt` command: its subcommands, their help, the warnings a run gives, and every command
line written in README.md and docs/*.md (each is parsed by the real parser, so none can drift)."""

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import backend, checkpoint, cli, commands
from minigpt.train import train
from minigpt.training.config import TrainConfig, ignored_settings, resolve_device, resume_config
from minigpt.training.metrics import overfitting, read_metrics
from tests import fakecupy

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_iters=2, sample_chars=0)


def quiet(message):
    pass


def run_minigpt(*args, **kw):
    return subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), **kw)


# ----------------------------------------------------------------------------- the command and its help
def test_python_m_minigpt_lists_the_subcommands_and_no_subcommand_is_bad_input():
    r = run_minigpt("--help")
    assert r.returncode == 0
    for name in ("train", "sample", "attention-map"):
        assert name in r.stdout
    r = run_minigpt()
    assert r.returncode == 2 and r.stderr.strip() == "error: a command is needed: train, sample, attention-map, exercises, check (see --help)"
    r = run_minigpt("fly")
    assert r.returncode == 2 and "invalid choice: 'fly'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def subcommand_actions(name):
    parser = commands.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return sub, [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_flag_of_every_subcommand_has_help_and_shows_its_default(name):
    sub, actions = subcommand_actions(name)
    text = " ".join(sub.format_help().split())
    formatter = sub._get_formatter()
    for a in actions:
        shown = " ".join(formatter._expand_help(a).split())  # as --help prints it, defaults added
        assert len(shown) > 20 and shown in text, a.option_strings
        if a.choices:
            assert "{" + ",".join(a.choices) + "}" in text, a.option_strings
        if not isinstance(a, argparse._StoreTrueAction) and a.dest != "preset" and a.default != argparse.SUPPRESS:
            assert "default" in shown and "default: None" not in shown, (a.option_strings, shown)


def test_the_train_flags_are_the_train_config_fields_and_their_defaults_match_python():
    _, actions = subcommand_actions("train")
    flags = {a.dest for a in actions}
    assert flags == set(TrainConfig.__dataclass_fields__) | {"preset"}
    from minigpt.commands.train import config_from  # noqa: PLC0415

    assert config_from(commands.build_parser().parse_args(["train"])) == TrainConfig()
    assert TrainConfig() == TrainConfig.preset()
    assert TrainConfig().n_layer == 1 and TrainConfig().learning_rate == 6e-3  # the project's recipe


def test_the_example_scripts_are_the_same_command():
    for script, name in (("train_shakespeare.py", "train"), ("sample.py", "sample")):
        via_script = subprocess.run([sys.executable, str(REPO / "examples" / script), "--help"], capture_output=True,
                                    text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert via_script.returncode == 0 and via_script.stdout == run_minigpt(name, "--help").stdout


def test_the_console_script_is_installed():
    # pip installs `minigpt` beside the interpreter (the README's install line); it is the same command
    exe = Path(sys.executable).parent / "minigpt"
    if not exe.exists():
        pytest.skip("minigpt is not pip-installed in this environment (the wheel test checks the entry point)")
    r = subprocess.run([str(exe), "train", "--max_iters", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: --max_iters must be a positive integer, got 0"


# ----------------------------------------------------------------------------- what a run says
def test_a_flag_the_bigram_model_ignores_is_named(tmp_path, capsys):
    status = cli.run(lambda: commands.main(["train", "--model", "bigram", "--n_head", "3"]))
    assert status == 2 and capsys.readouterr().err.strip().splitlines() == [  # an error, not a warning first
        "error: --n_embd (128) must be divisible by --n_head (3)"]
    status = cli.run(lambda: commands.main(["train", "--model", "bigram", "--n_layer", "4", "--dropout", "0.1",
                                            "--max_iters", "1", "--eval_iters", "1", "--sample_chars", "0",
                                            "--out_dir", str(tmp_path)]))
    err = capsys.readouterr().err
    assert status == 0
    assert "warning: --n_layer, --dropout: the bigram model has no use for these settings (ignored)" in err
    assert ignored_settings("gpt", {"n_layer": 4}) == []
    assert ignored_settings("bigram", {"n_layer": None, "block_size": 8}) == []


def test_no_matplotlib_is_a_warning_and_no_picture(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    warnings = []
    train(TrainConfig.preset(out_dir=str(tmp_path), max_iters=2, eval_interval=2, **TINY), log=quiet,
          warn=warnings.append)
    assert len(warnings) == 1 and "matplotlib is not installed" in warnings[0] and "plot extra" in warnings[0]
    assert not (tmp_path / "loss.png").exists()


def rows(*pairs):
    return [{"train_loss": str(t), "val_loss": str(v)} for t, v in pairs]


def test_overfitting_is_the_val_loss_rising_while_the_train_loss_falls():
    assert overfitting(rows((3, 2), (2, 2.1), (1.5, 2.3), (1.2, 2.6)))
    assert overfitting(rows((4, 4), (3, 2), (2, 2.1), (1.5, 2.3), (1.2, 2.6)))  # the last three count
    assert not overfitting(rows((2, 2.1), (1.5, 2.3), (1.2, 2.6)))  # two rises are not yet three
    assert not overfitting(rows((3, 2), (2, 2.1), (1.5, 2.0), (1.2, 2.6)))  # it fell once in between
    assert not overfitting(rows((3, 2), (2, 2.1), (2.1, 2.3), (1.2, 2.6)))  # the train loss rose too: noise
    assert not overfitting(rows((3, 3), (2, 2.9), (1.5, 2.8), (1.2, 2.7)))  # both falling: learning


def test_a_small_text_warns_of_overfitting_once(tmp_path, shakespeare_text):
    small = tmp_path / "small.txt"
    small.write_text(shakespeare_text[:3000])
    warnings = []
    train(TrainConfig.preset(data=str(small), out_dir=str(tmp_path / "run"), n_layer=1, n_head=4, n_embd=64,
                             block_size=32, batch_size=16, max_iters=600, eval_interval=100, eval_iters=5,
                             sample_chars=0), log=quiet, warn=warnings.append)
    said = [w for w in warnings if "overfitting" in w]
    assert len(said) == 1, warnings
    metrics = read_metrics(tmp_path / "run" / "metrics.csv")
    assert float(metrics[-1]["val_loss"]) > min(float(r["val_loss"]) for r in metrics)


def test_metrics_time_and_bits_per_character_continue_across_resume(tmp_path):
    out = tmp_path / "run"
    calls = iter(range(10_000))
    cfg = TrainConfig.preset(out_dir=str(out), max_iters=30, eval_interval=10, **TINY)
    stopped = train(cfg, log=quiet, warn=quiet, should_stop=lambda: next(calls) == 14)  # after step 15
    assert stopped.interrupted and stopped.iterations == 15
    before = read_metrics(out / "metrics.csv")
    state = checkpoint.read_state(out / "latest.npz")
    assert state["elapsed_s"] >= float(before[-1]["elapsed_s"]) - 0.05  # metrics.csv rounds to 0.1 s
    done = train(resume_config(out), log=quiet, warn=quiet)
    after = read_metrics(out / "metrics.csv")
    assert [r["iter"] for r in after] == ["0", "10", "20", "30"] and after[:2] == before
    times = [float(r["elapsed_s"]) for r in after]
    assert times == sorted(times) and times[2] >= state["elapsed_s"] - 0.05  # not restarted from 0
    for r in after:  # bits per character of the validation text: nats / ln 2 for characters
        assert float(r["val_bpc"]) == pytest.approx(float(r["val_loss"]) / np.log(2), rel=1e-5)
    assert done.full_val_bpc == pytest.approx(done.full_val_loss / np.log(2))


def test_a_stop_during_the_last_step_saves_and_exits_as_interrupted(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig.preset(out_dir=str(out), max_iters=6, eval_interval=3, **TINY)
    calls = iter(range(10_000))
    result = train(cfg, log=quiet, warn=quiet, should_stop=lambda: next(calls) == 5)  # during step 6 of 6
    assert result.interrupted and result.full_val_loss is None  # no whole-split evaluation after Ctrl-C
    assert checkpoint.read_state(out / "latest.npz")["iter_num"] == 6
    assert [r["iter"] for r in read_metrics(out / "metrics.csv")] == ["0", "3"]
    resumed = train(resume_config(out), log=quiet, warn=quiet)  # the final evaluation, no step
    assert not resumed.interrupted and resumed.iterations == 6 and resumed.full_val_loss is not None
    straight = train(TrainConfig.preset(out_dir=str(tmp_path / "straight"), max_iters=6, eval_interval=3, **TINY),
                     log=quiet, warn=quiet)
    assert resumed.full_val_loss == straight.full_val_loss


def test_a_stop_during_the_final_evaluation_skips_the_whole_split_loss(tmp_path):
    cfg = TrainConfig.preset(out_dir=str(tmp_path), max_iters=4, eval_interval=2, **TINY)
    calls = iter(range(10_000))
    result = train(cfg, log=quiet, warn=quiet, should_stop=lambda: next(calls) >= 4)  # asked after the 4 steps
    assert result.interrupted and result.full_val_loss is None and result.iterations == 4
    assert checkpoint.read_state(tmp_path / "latest.npz")["evaluated"]


def test_a_stop_after_the_whole_split_loss_skips_the_sample_and_is_an_interruption(tmp_path):
    cfg = TrainConfig.preset(out_dir=str(tmp_path), max_iters=4, eval_interval=2, **dict(TINY, sample_chars=50))
    calls = iter(range(10_000))
    # asked after each of the 4 steps, then before the whole-split loss, after it, and after the sample
    result = train(cfg, log=quiet, warn=quiet, should_stop=lambda: next(calls) == 5)
    assert result.interrupted and result.full_val_loss is not None and result.sample == ""


def test_the_train_command_gives_back_the_callers_signal_handlers(tmp_path):
    import signal  # noqa: PLC0415

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert commands.main(["train", "--max_iters", "1", "--eval_iters", "1", "--n_embd", "16", "--sample_chars", "0",
                          "--out_dir", str(tmp_path)]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_attention_map_writes_into_the_run_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train(TrainConfig.preset(out_dir=str(tmp_path), max_iters=1, **TINY), log=quiet, warn=quiet)
    before = set(os.listdir("."))
    assert commands.main(["attention-map", "--out_dir", str(tmp_path), "--start", "ROMEO:"]) == 0
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert set(os.listdir(".")) == before  # nothing written into the current folder
    assert "1 layer(s) x 2 heads over 6 characters" in capsys.readouterr().out


def test_attention_map_without_matplotlib_is_one_clear_error(tmp_path, monkeypatch, capsys):
    train(TrainConfig.preset(out_dir=str(tmp_path), max_iters=1, **TINY), log=quiet, warn=quiet)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    capsys.readouterr()  # the training's progress line
    status = cli.run(lambda: commands.main(["attention-map", "--out_dir", str(tmp_path)]))
    assert status == 2 and capsys.readouterr().err.strip() == "error: drawing needs matplotlib: pip install matplotlib (minigpt's plot extra)"
    assert not (tmp_path / "attention.png").exists()


# ----------------------------------------------------------------------------- a GPU that cannot run kernels
NVRTC_MISSING = "CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open shared object file"


@pytest.fixture
def driver_only_gpu():
    """A GPU that the driver finds but whose kernels cannot compile (no NVRTC), on the fake device."""
    backend.forget_kernel_probe()
    with fakecupy.installed(kernel_failure=NVRTC_MISSING):
        yield
    backend.forget_kernel_probe()


def test_auto_falls_back_to_the_cpu_saying_why(driver_only_gpu):
    warnings = []
    assert resolve_device("auto", warnings.append) == "cpu"
    assert len(warnings) == 1 and "libnvrtc.so.12" in warnings[0] and "cupy-cuda12x[ctk]" in warnings[0]
    assert TrainConfig.preset(device="auto").n_layer == 1  # and so the CPU preset
    assert backend.available_devices() == ["cpu"]


def test_cuda_fails_at_once_with_the_reason(driver_only_gpu, capsys):
    with pytest.raises(backend.DeviceError, match="cannot run a kernel.*libnvrtc"):
        resolve_device("cuda")
    status = cli.run(lambda: commands.main(["train", "--device", "cuda"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "libnvrtc.so.12" in err[0]


def test_a_gpu_that_runs_its_kernels_is_chosen():
    backend.forget_kernel_probe()
    try:
        with fakecupy.installed():
            warnings = []
            assert resolve_device("auto", warnings.append) == "cuda" and warnings == []
    finally:
        backend.forget_kernel_probe()


def test_the_kernel_probe_fails_on_a_wrong_result(monkeypatch):
    backend.forget_kernel_probe()
    try:
        with fakecupy.installed():
            monkeypatch.setattr(fakecupy.ndarray, "__matmul__", lambda a, b: a)  # a broken product
            with pytest.raises(backend.DeviceError, match="computed 18.0 instead of 34.0"):
                resolve_device("cuda")
    finally:
        backend.forget_kernel_probe()


# ----------------------------------------------------------------------------- the documented command lines
class Parsed(Exception):
    """Raised in place of running a script once its flags have parsed."""


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPT = re.compile(r"^python[\d.]* (?:-m minigpt\b|(?:examples|benchmarks)/\w+\.py\b)")
# what a script may need that the test extra does not install: such a command is skipped, saying so
OPTIONAL = {"torch", "matplotlib", "cupy"}


def code_in(text):
    """The code of a Markdown text: the lines of its fenced blocks (``` or ~~~, any info string) and
    its inline code spans (which may wrap onto the next line)."""
    fence = r"(```|~~~)[^\n]*\n(.*?)\1"
    lines = [line for _, block in re.findall(fence, text, flags=re.S) for line in block.splitlines()]
    spans = re.findall(r"`([^`]+)`", re.sub(fence, "", text, flags=re.S))
    return lines + [" ".join(span.split()) for span in spans]


def documented_command_lines():
    """(file, command) for every minigpt command line in README.md and docs/*.md: the code that
    starts with `minigpt`, `python -m minigpt`, or `python examples/...` / `python benchmarks/...`
    (after `mpiexec ...`, `&&`, environment settings). Other projects' commands (nanoGPT's
    `python train.py ...`, pip) are left out."""
    found = []
    for doc in DOCS:
        for line in code_in(doc.read_text()):
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                part = re.sub(r"^(\$ )?((\w+=\S+ )*)(mpiexec( -{1,2}\w+ \S+)* )?(timeout \d+ )?", "", part.strip())
                if part.startswith("minigpt ") or part == "minigpt" or SCRIPT.match(part):
                    found.append((doc.name, part))
    return sorted(set(found))


def test_the_docs_hold_command_lines_to_check():
    lines = [c for _, c in documented_command_lines()]
    assert any(c.startswith("minigpt train") for c in lines) and any(c.startswith("minigpt sample") for c in lines)
    assert any("benchmarks/" in c for c in lines)


def run_parser_of(argv, monkeypatch, parse=True):
    """Run the parser of the minigpt command line ``argv`` (the command's, or a script's) on its
    arguments; the parser, or SystemExit where they do not parse (--help too: code 0). With
    ``parse=False`` only find the parser (a script's first), without parsing anything."""
    if argv[0] == "minigpt" or re.match(r"python[\d.]*$", argv[0]) and argv[1:3] == ["-m", "minigpt"]:
        parser = commands.build_parser()
        if parse:
            parser.parse_args(argv[1:] if argv[0] == "minigpt" else argv[3:])
        return parser
    script = REPO / argv[1]
    assert script.exists(), f"{argv[1]} does not exist"
    original = argparse.ArgumentParser.parse_args
    seen = []

    def parse_then_stop(self, args=None, namespace=None):
        seen.append(self)
        if parse:
            original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[2:]])
    monkeypatch.syspath_prepend(str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except Parsed:
        return seen[0]
    except ModuleNotFoundError as e:
        if e.name.split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{argv[1]} needs {e.name}, which is not installed here (the bench extra)")
    raise AssertionError(f"{' '.join(argv)} never parsed its flags")


def parse_only(argv, monkeypatch):
    """Parse ``argv`` (a minigpt command line) with the real parser of the command or script."""
    try:
        run_parser_of(argv, monkeypatch)
    except SystemExit as e:
        assert e.code == 0, f"{' '.join(argv)} does not parse"  # --help exits 0


@pytest.mark.parametrize("doc, command", documented_command_lines())
def test_every_documented_command_line_parses(doc, command, monkeypatch):
    parse_only(shlex.split(command), monkeypatch)


def test_the_command_line_check_catches_a_wrong_flag(monkeypatch):
    with pytest.raises(AssertionError, match="does not parse"):
        parse_only(["minigpt", "train", "--n_layers", "2"], monkeypatch)
    with pytest.raises(AssertionError, match="does not parse"):
        parse_only(["python3.11", "-m", "minigpt", "sample", "--top-k", "2"], monkeypatch)
    with pytest.raises(AssertionError, match="does not parse"):
        parse_only(["python", "benchmarks/bench_generate.py", "--no-such-flag"], monkeypatch)
    parse_only(["python", "benchmarks/bench_generate.py", "--help"], monkeypatch)
    found = {c for _, c in documented_command_lines()}
    assert "python examples/walkthrough.py all" in found  # inside a fenced block
    assert "minigpt train --preset nanogpt" in found  # an inline span


def every_option(monkeypatch):
    """The option strings of every parser minigpt has: the command's subcommands, the examples'
    and the benchmarks' scripts (those whose imports are installed here)."""
    options = set()
    parser = commands.build_parser()
    for action in parser._actions:
        options.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices[sub], argparse.ArgumentParser):
                options.update(o for a in action.choices[sub]._actions for o in a.option_strings)
    for script in sorted((REPO / "examples").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        try:
            with monkeypatch.context() as m:
                found = run_parser_of(["python", str(script.relative_to(REPO))], m, parse=False)
        except pytest.skip.Exception:  # it needs an optional package that is not installed here
            continue
        except AssertionError:  # a module without a command line (torch_gpt.py)
            continue
        options.update(o for a in found._actions for o in a.option_strings)
    return options


def documented_flags(texts=None):
    """Every ``--flag`` written in the code of README.md and docs/*.md (or of ``texts``), but for
    those of other programs: nanoGPT's are written ``--name=value``, and Open MPI's ``--hostfile``."""
    flags = set()
    for text in texts if texts is not None else [doc.read_text() for doc in DOCS]:
        for code in code_in(text):
            flags.update(re.findall(r"(?<![\w-])(--[a-z][\w-]*)(?![\w=-])", code))
    return flags - {"--hostfile"}


def test_every_documented_flag_exists(monkeypatch):
    known = every_option(monkeypatch)
    assert {"--n_layer", "--top_k", "--ranks-plain", "--nanogpt"} <= known
    missing = sorted(documented_flags() - known)
    assert not missing, f"documented but no parser has them: {missing}"
    planted = "Train deeper with `--n_layers 4`, or `minigpt train --n_layer 4\n--drop_out 0.1`."
    assert documented_flags([planted]) - known == {"--n_layers", "--drop_out"}


def test_the_readme_python_example_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})  # our own README, not a user's file
