"""Bad input, interruption and damaged files, driven through the real command lines.

Every case of bad input must end with ONE line on stderr and exit status 2, never a traceback.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minigpt import checkpoint, nn
from minigpt.data import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--eval_iters", "2", "--sample_chars", "0"]


def cli(script, *args, env=None, timeout=300):
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("MINIGPT_DATA", None)  # the packaged Tiny Shakespeare unless a test says otherwise
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    # warnings the run gave before it failed (no matplotlib, so no loss.png) are lines of their own
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("args, message", [
    (["--n_layer", "0"], "--n_layer must be a positive integer"),
    (["--batch_size=-3"], "--batch_size must be a positive integer"),
    (["--block_size", "0"], "--block_size must be a positive integer"),
    (["--max_iters", "0"], "--max_iters must be a positive integer"),
    (["--eval_iters", "0"], "--eval_iters must be a positive integer"),
    (["--learning_rate", "0"], "--learning_rate must be positive"),
    (["--learning_rate=-1e-3"], "--learning_rate must be positive"),
    (["--warmup_iters=-1"], "--warmup_iters must not be negative"),
    (["--n_embd", "30", "--n_head", "4"], "--n_embd (30) must be divisible by --n_head (4)"),
    (["--dropout", "1.0"], "--dropout must lie in [0, 1)"),
    (["--dropout=-0.1"], "--dropout must lie in [0, 1)"),
    (["--beta2", "1.5"], "--beta2 must lie in [0, 1)"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--model", "lstm"], "argument --model: invalid choice: 'lstm'"),
    (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["--n_layer", "two"], "invalid int value"),
    (["--no_such_flag"], "unrecognized arguments"),
    (["--preset", "gpt2"], "argument --preset: invalid choice: 'gpt2'"),
    (["--resume", "--preset", "nanogpt"], "--resume continues a run with the settings it was started with"),
    (["--min_lr", "0.01"], "--min_lr 0.01 is above --learning_rate 0.006"),
])
def test_bad_training_flags(args, message):
    assert_one_line_error(cli("train_shakespeare.py", *args), message)


@pytest.mark.parametrize("args, message", [
    (["--num_samples", "0"], "--num_samples must be >= 1"),
    (["--temperature=-1"], "--temperature must be >= 0"),
    (["--top_k", "0"], "--top_k must be >= 1"),
    (["--max_new_tokens", "x"], "invalid int value"),
])
def test_bad_sampling_flags(args, message, tmp_path):
    assert_one_line_error(cli("sample.py", "--out_dir", str(tmp_path), *args), message)


def _fake_module_dir(tmp_path, name, source):
    """PYTHONPATH with a stand-in module ``name`` (whose code is ``source``) ahead of everything."""
    d = tmp_path / "fake"
    d.mkdir()
    (d / f"{name}.py").write_text(source)
    return {"PYTHONPATH": f"{d}{os.pathsep}{REPO}"}


def test_cuda_without_cupy_says_so(tmp_path):
    env = _fake_module_dir(tmp_path, "cupy", "raise ImportError('No module named cupy')\n")
    r = cli("train_shakespeare.py", "--device", "cuda", env=env)
    assert_one_line_error(r, "CuPy, which is not installed")


def test_cuda_without_a_gpu_says_so(tmp_path):
    source = ("class ndarray: pass\n"
              "class _Runtime:\n"
              "    @staticmethod\n"
              "    def getDeviceCount():\n"
              "        raise RuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')\n"
              "class cuda:\n    runtime = _Runtime\n")
    env = _fake_module_dir(tmp_path, "cupy", source)
    r = cli("train_shakespeare.py", "--device", "cuda", env=env)
    assert_one_line_error(r, "no CUDA GPU is usable")
    r = cli("sample.py", "--out_dir", str(tmp_path), "--device", "cuda", env=env)
    assert_one_line_error(r, "no CUDA GPU is usable")


# ----------------------------------------------------------------------------- data
def test_default_text_is_the_packaged_one_and_touches_no_network(tmp_path):
    # requests cannot even be imported, and the cache stays empty: the text came from the package
    env = _fake_module_dir(tmp_path, "requests", "raise ImportError('the network must not be touched')\n")
    env["MINIGPT_CACHE"] = str(tmp_path / "cache")
    r = cli("train_shakespeare.py", *TINY, "--max_iters", "2", "--eval_interval", "2", "--out_dir",
            str(tmp_path / "run"), env=env)
    assert r.returncode == 0, r.stderr
    assert "1,003,854 training and 111,540 validation tokens, vocabulary 65" in r.stdout
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_url_without_network_says_how_to_pass_the_data(where, tmp_path):
    url = "http://127.0.0.1:9/input.txt"  # the discard port: nothing listens there
    env = {"MINIGPT_CACHE": str(tmp_path / "cache")}
    args = ["--data", url] if where == "flag" else []
    if where == "environment":
        env["MINIGPT_DATA"] = url
    r = cli("train_shakespeare.py", *TINY, *args, env=env)
    assert_one_line_error(r, "could not download", "--data PATH or the MINIGPT_DATA environment variable")
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached from a failed download


def test_missing_data_file(tmp_path):
    assert_one_line_error(cli("train_shakespeare.py", "--data", str(tmp_path / "nope.txt")), "data file not found")


def test_data_file_that_is_not_utf8(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("Ça ira, ça ira! ".encode("latin-1") * 100)
    assert_one_line_error(cli("train_shakespeare.py", "--data", str(f)), "not UTF-8")


def test_data_file_too_short_for_the_block_size(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("To be, or not to be: that is the question.\n" * 3)
    assert_one_line_error(cli("train_shakespeare.py", "--data", str(f)), "too short for block_size 64")


def test_data_from_the_environment_variable(tmp_path, shakespeare_path):
    r = cli("train_shakespeare.py", *TINY, "--max_iters", "2", "--eval_interval", "2", "--out_dir",
            str(tmp_path / "run"), env={"MINIGPT_DATA": shakespeare_path})
    assert r.returncode == 0, r.stderr


# ----------------------------------------------------------------------------- checkpoints and prompts
@pytest.fixture
def good_run(tmp_path):
    tok = CharTokenizer.from_text("abcdefgh\n")
    model = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=8))
    checkpoint.save(tmp_path / "best.npz", model, tokenizer=tok)
    return tmp_path


def test_sampling_from_a_good_checkpoint(good_run):
    r = cli("sample.py", "--out_dir", str(good_run), "--start", "abc", "--max_new_tokens", "5")
    assert r.returncode == 0 and r.stdout.count("abc") == 3


def test_prompt_with_characters_outside_the_vocabulary(good_run):
    r = cli("sample.py", "--out_dir", str(good_run), "--start", "abcXyz")
    assert_one_line_error(r, "characters not in the vocabulary", "'X'", "'y'", "'z'")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(cli("sample.py", "--out_dir", str(tmp_path / "none")), "no checkpoint at")


def test_truncated_checkpoint(good_run):
    f = good_run / "best.npz"
    f.write_bytes(f.read_bytes()[:2000])
    assert_one_line_error(cli("sample.py", "--out_dir", str(good_run)), "not a readable checkpoint")


def test_damaged_checkpoint(good_run):
    f = good_run / "best.npz"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = os.urandom(64)
    f.write_bytes(bytes(raw))
    r = cli("sample.py", "--out_dir", str(good_run))
    assert_one_line_error(r, str(f))


def test_foreign_checkpoint(tmp_path):
    np.savez(tmp_path / "best.npz", weights=np.ones(3))
    assert_one_line_error(cli("sample.py", "--out_dir", str(tmp_path)), "not a minigpt checkpoint")


def test_checkpoint_whose_shapes_do_not_match_its_config(good_run):
    model = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=9, n_layer=1, n_head=2, n_embd=8))
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays["model/transformer.wpe.weight"] = np.zeros((4, 8), np.float32)
    with np.load(good_run / "best.npz") as z:
        arrays["__meta__"] = z["__meta__"]
    np.savez(good_run / "best.npz", **arrays)
    assert_one_line_error(cli("sample.py", "--out_dir", str(good_run)), "transformer.wpe.weight", "(4, 8)")


def test_checkpoint_carrying_a_pickled_object_is_refused(good_run):
    with np.load(good_run / "best.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/transformer.wpe.weight"] = np.array([{"payload": "pickled"}], dtype=object)
    np.savez(good_run / "best.npz", **arrays)
    assert_one_line_error(cli("sample.py", "--out_dir", str(good_run)), "pickled objects")


def test_resume_without_a_checkpoint(tmp_path):
    assert_one_line_error(cli("train_shakespeare.py", "--resume", "--out_dir", str(tmp_path)), "no checkpoint at")


def test_resume_with_a_larger_block_size_or_another_shape(tmp_path, shakespeare_path):
    out = str(tmp_path / "run")
    r = cli("train_shakespeare.py", *TINY, "--max_iters", "2", "--eval_interval", "2", "--out_dir", out,
            "--data", shakespeare_path)
    assert r.returncode == 0, r.stderr
    r = cli("train_shakespeare.py", "--resume", "--out_dir", out, "--block_size", "32")
    assert_one_line_error(r, "--block_size 32 is larger than the checkpoint's 16")
    r = cli("train_shakespeare.py", "--resume", "--out_dir", out, "--n_layer", "3")
    assert_one_line_error(r, "--n_layer 3 (checkpoint: 1)")


# ----------------------------------------------------------------------------- a diverging run
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, shakespeare_path):
    out = tmp_path / "run"
    r = cli("train_shakespeare.py", *TINY, "--max_iters", "50", "--eval_interval", "10", "--learning_rate", "1e9",
            "--grad_clip", "0", "--warmup_iters", "0", "--out_dir", str(out), "--data", shakespeare_path)
    assert_one_line_error(r, "the loss became", "at iteration")
    ck = checkpoint.load(out / "latest.npz")
    assert all(np.isfinite(v).all() for v in ck.model.state_dict().values())


# ----------------------------------------------------------------------------- interruption
def _train_args(out, data, iters=300):
    return [*TINY, "--max_iters", str(iters), "--lr_decay_iters", str(iters), "--eval_interval", "100",
            "--log_interval", "1", "--dropout", "0.1", "--out_dir", str(out), "--data", data]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_ends_bit_identical(sig, tmp_path, shakespeare_path):
    straight = cli("train_shakespeare.py", *_train_args(tmp_path / "straight", shakespeare_path))
    assert straight.returncode == 0, straight.stderr

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "train_shakespeare.py"),
                             *_train_args(tmp_path / "stopped", shakespeare_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stderr:  # the progress lines: wait until training is under way
        if "iter 40/" in line or time.time() > deadline:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopping after this step" in err
    assert "continue with --resume" in out

    resumed = cli("train_shakespeare.py", "--resume", "--out_dir", str(tmp_path / "stopped"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a = checkpoint.load(tmp_path / "straight" / "latest.npz")
    b = checkpoint.load(tmp_path / "stopped" / "latest.npz")
    for k, v in a.model.state_dict().items():
        np.testing.assert_array_equal(v, b.model.state_dict()[k])
    final = [line for line in straight.stdout.splitlines() if "whole validation split" in line]
    assert final and final == [line for line in resumed.stdout.splitlines() if "whole validation split" in line]


WRITER = """
import sys
import minigpt
from minigpt import checkpoint, nn
model = nn.GPT(nn.GPTConfig(block_size=64, vocab_size=65, n_layer=2, n_head=4, n_embd=128))
path = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    i += 1
    checkpoint.save(path, model, iter_num=i)
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "latest.npz"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + rng.random() * 0.3)  # somewhere in the middle of some write
        proc.kill()
        proc.wait()
        if path.exists():  # the file under the real name is always a whole checkpoint
            seen.add(checkpoint.load(path).state["iter_num"])
    assert seen  # at least one save completed, and every state seen loaded
