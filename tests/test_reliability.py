"""Edges found by a hostile user: NaN settings, reductions over axes that do not exist, tensors of
strings, files that are not text, downloads that are not text, two runs in one folder."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minigpt
from minigpt import Tensor, files, nn, optim
from minigpt.data import DataError, load_text
from tests.commandline import run_minigpt
from tests.hubserver import HubServer


def run(*args):
    return run_minigpt(*args, timeout=120)


# ----------------------------------------------------------------------------- NaN settings
@pytest.mark.parametrize("kw", [dict(lr=math.nan), dict(weight_decay=math.nan), dict(eps=math.nan),
                                dict(betas=(math.nan, 0.9)), dict(lr=-1.0)])
def test_adamw_refuses_nan_and_negative_settings(kw):
    with pytest.raises(ValueError, match="Invalid"):
        optim.AdamW([Tensor(np.ones(2, np.float32), requires_grad=True)], **kw)


def test_adamw_checks_each_group_too():
    p = Tensor(np.ones(2, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        optim.AdamW([{"params": [p], "weight_decay": math.nan}])


@pytest.mark.parametrize("args, says", [
    (["--weight_decay", "nan"], "--weight_decay must be a non-negative number, got nan"),
    (["--grad_clip", "nan"], "--grad_clip must be a non-negative number, got nan"),
    (["--learning_rate", "nan"], "--learning_rate must be positive, got nan"),
    (["--beta2", "nan"], "--beta2 must lie in [0, 1), got nan"),
    (["--dropout", "nan"], "--dropout must lie in [0, 1), got nan"),
    (["--seed=-1"], "--seed must be a non-negative integer, got -1"),
])
def test_bad_numbers_are_refused_by_name(args, says):
    r = run("train", *args)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {says}", r.stderr


# ----------------------------------------------------------------------------- the API's own edges
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis", [2, -3, (0, 2)])
def test_a_reduction_over_an_axis_that_does_not_exist_raises_as_numpy(name, axis):
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises((ValueError, IndexError)):
        getattr(np, name if name != "max" else "amax")(x, axis=axis)  # NumPy refuses it...
    with pytest.raises(IndexError, match="out of bounds"):
        getattr(Tensor(x), name)(axis=axis)  # ...and so does minigpt, rather than wrap it around


def test_valid_negative_axes_still_reduce():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(Tensor(x).sum(axis=-2).data, x.sum(axis=-2))
    np.testing.assert_array_equal(Tensor(x).max(axis=-1).data, x.max(axis=-1))
    with pytest.raises(ValueError, match="more than once"):
        Tensor(x).sum(axis=(0, -2))


@pytest.mark.parametrize("data", [["1.5", "2.0"], np.array(["a", "b"]), [object()]])
def test_a_tensor_of_strings_or_objects_is_refused_at_once(data):
    with pytest.raises(TypeError, match="holds numbers"):
        Tensor(data)


def test_a_linear_layer_names_the_shapes_it_expects():
    with pytest.raises(ValueError, match=r"Linear\(4, 3\) takes inputs whose last axis is 4, got shape \(2, 5\)"):
        nn.Linear(4, 3)(Tensor(np.ones((2, 5), np.float32)))


# ----------------------------------------------------------------------------- data that is not a file of text
def test_a_device_is_refused_before_a_byte_is_read():
    with pytest.raises(DataError, match="not a regular file"):
        load_text("/dev/zero")  # reading it would never end


def test_a_pipe_is_refused_instead_of_waiting_for_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    t0 = time.time()
    r = run("train", "--data", str(fifo), "--max_iters", "1")
    assert r.returncode == 2 and "not a regular file" in r.stderr and time.time() - t0 < 60


def test_a_byte_order_mark_is_no_character_of_the_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert load_text(path) == "hello"


def test_a_download_that_is_not_text_is_not_cached(tmp_path):
    server = HubServer({"data.txt": b"\xff\xfe not utf-8"})
    url = server.url + "/data.txt"
    try:
        with pytest.raises(DataError, match="not UTF-8 text.*nothing was cached"):
            load_text(url=url, cache_dir=tmp_path)
        assert list(tmp_path.iterdir()) == []
        server.files["data.txt"] = b"fixed text"
        assert load_text(url=url, cache_dir=tmp_path) == "fixed text"
    finally:
        server.close()


# ----------------------------------------------------------------------------- one run per folder
def test_a_held_folder_names_its_holder_and_is_free_once_given_back(tmp_path):
    held = files.hold_folder(tmp_path)
    with pytest.raises(files.FolderBusy, match=f"in use by another run \\(pid {os.getpid()}\\)"):
        files.hold_folder(tmp_path)
    held.close()
    files.hold_folder(tmp_path).close()


def test_a_killed_runs_lock_is_not_stuck(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from minigpt import files; held = files.hold_folder(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(files.FolderBusy):
        files.hold_folder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    files.hold_folder(tmp_path).close()  # the operating system ended the lock with its holder


def test_a_second_training_on_a_busy_folder_is_refused(tmp_path):
    out = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "minigpt", "train", "--out_dir", out, "--max_iters", "100000",
                              "--eval_interval", "100000", "--sample_chars", "0"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            if (tmp_path / "run" / ".lock").exists() and (tmp_path / "run" / ".lock").read_text().startswith("pid"):
                break
            time.sleep(0.1)
        second = run("train", "--out_dir", out, "--max_iters", "1")
        assert second.returncode == 2 and f"in use by another run (pid {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_the_folder_is_given_back_when_a_run_ends(tmp_path):
    from minigpt.train import train
    from minigpt.training.config import TrainConfig

    cfg = TrainConfig.preset(out_dir=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=8, block_size=8,
                             batch_size=2, max_iters=2, eval_interval=1, eval_iters=1, sample_chars=0)
    train(cfg, log=lambda m: None)
    train(cfg, log=lambda m: None)  # the same folder again, in the same process: free
    minigpt.manual_seed(0)


# ----------------------------------------------------------------------------- empty tensors, as PyTorch
@pytest.mark.parametrize("shape, axis", [((5, 0, 0), -1), ((0, 3), -1), ((5, 0, 0), 0), ((3, 0), 0)])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_of_an_empty_tensor_is_empty_forward_and_backward(shape, axis, name):
    from minigpt import functional as F
    from minigpt.fast import functional as fast_F

    x = Tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = getattr(F, name)(x, axis=axis)
    (y * 2).sum().backward()
    assert y.shape == shape and x.grad.shape == shape  # torch: the same empty shapes, no error
    if name == "softmax":  # its fast twin too (log_softmax has none), forward and backward
        x_fast = Tensor(np.zeros(shape, np.float32), requires_grad=True)
        y_fast = fast_F.softmax(x_fast, axis=axis)
        (y_fast * 2).sum().backward()
        assert y_fast.shape == shape and x_fast.grad.shape == shape


def test_softmax_of_one_number_is_one_and_its_gradient_zero():
    from minigpt import fast
    from minigpt import functional as F

    for module in (F, fast):
        x = Tensor(np.array(3.0), requires_grad=True)
        y = module.softmax(x, axis=0)  # torch: softmax over the only axis a 0-d tensor has
        y.backward()
        assert float(y.data) == 1.0 and float(x.grad) == 0.0


@pytest.mark.parametrize("module", ["reference", "fast"])
def test_layers_of_width_zero_work_as_in_pytorch(module):
    """A feature axis of size 0 (torch allows nn.Linear(0, 3)): the math on empty rows, no error."""
    from minigpt import fast
    from minigpt import functional as F

    M = F if module == "reference" else fast
    x, w, b = (Tensor(np.zeros(s, np.float32), requires_grad=True) for s in [(2, 0), (3, 0), (3,)])
    b.data[:] = [1.0, 2.0, 3.0]
    y = M.linear(x, w, b)  # in = 0: a sum of no terms is 0, and y is the bias
    y.backward(np.ones((2, 3), np.float32))
    assert y.data.tolist() == [[1.0, 2.0, 3.0]] * 2
    assert x.grad.shape == (2, 0) and w.grad.shape == (3, 0) and b.grad.tolist() == [2.0, 2.0, 2.0]
    x, w = Tensor(np.ones((2, 3), np.float32), requires_grad=True), Tensor(np.zeros((0, 3), np.float32), requires_grad=True)
    y = M.linear(x, w)  # out = 0
    y.backward(np.ones((2, 0), np.float32))
    assert y.shape == (2, 0) and x.grad.tolist() == [[0.0] * 3] * 2 and w.grad.shape == (0, 3)
    table = Tensor(np.zeros((5, 0), np.float32), requires_grad=True)
    e = M.embedding(np.array([[1, 2], [0, 4]]), table)  # rows of width 0
    e.backward(np.ones((2, 2, 0), np.float32))
    assert e.shape == (2, 2, 0) and table.grad.shape == (5, 0)
    x, g = Tensor(np.zeros((3, 0), np.float32), requires_grad=True), Tensor(np.zeros(0, np.float32), requires_grad=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # the reference's mean of an empty row warns
        y = M.layer_norm(x, g)
        y.backward(np.ones((3, 0), np.float32))
    assert y.shape == (3, 0) and x.grad.shape == (3, 0) and g.grad.shape == (0,)


def test_matmul_with_an_empty_inner_axis_gives_zeros_and_empty_gradients():
    a = Tensor(np.ones((5, 5, 0), np.float32), requires_grad=True)  # the shared-weight path of the backward
    b = Tensor(np.ones((0, 5), np.float32), requires_grad=True)
    y = a @ b
    y.sum().backward()
    assert y.shape == (5, 5, 5) and not y.data.any()  # a sum of no terms: 0, as torch
    assert a.grad.shape == (5, 5, 0) and b.grad.shape == (0, 5)


def test_reshape_of_an_empty_tensor():
    x = Tensor(np.zeros((5, 5, 0), np.float32), requires_grad=True)
    y = x.reshape(0, 5)
    y.sum().backward()
    assert y.shape == (0, 5) and x.grad.shape == (5, 5, 0)


# ----------------------------------------------------------------------------- NaN never saved, resume remembers
def tiny_cfg(tmp_path, **kw):
    from minigpt.training.config import TrainConfig

    base = dict(out_dir=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=8, block_size=8, batch_size=4,
                max_iters=4, lr_decay_iters=4, eval_interval=2, eval_iters=1, sample_chars=0)
    base.update(kw)
    return TrainConfig.preset(**base)


def test_a_diverged_evaluation_never_writes_a_checkpoint(tmp_path, monkeypatch):
    from minigpt import checkpoint
    from minigpt.train import train
    from minigpt.training import steps

    real_step = steps.train_step

    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):  # the step before the evaluation at 2 sends the weights to inf,
        out = real_step(model, *args, **kwargs)  # while the loss it reports is still a number
        calls["n"] += 1
        if calls["n"] == 2:
            for p in model.parameters():
                p.data[...] = np.inf
        return out

    monkeypatch.setattr(steps, "train_step", poisoned)
    with pytest.raises(steps.TrainingError, match="last good checkpoints are kept"):
        train(tiny_cfg(tmp_path, max_iters=6, lr_decay_iters=6, reference=True), log=lambda m: None)
    for name in ("latest.npz", "best.npz"):  # the step-0 evaluation's, before the weights went
        saved = checkpoint.load(tmp_path / "run" / name)
        assert saved.state["iter_num"] == 0
        assert all(np.isfinite(v).all() for v in saved.model.state_dict().values())


def test_resume_reads_the_runs_own_data_source(tmp_path, monkeypatch):
    from minigpt.train import train
    from minigpt.training.config import resume_config

    text = tmp_path / "own.txt"
    text.write_text("a b c d e f g\n" * 200, encoding="utf-8")
    monkeypatch.setenv("MINIGPT_DATA", str(text))
    train(tiny_cfg(tmp_path, max_iters=2, lr_decay_iters=2), log=lambda m: None)
    monkeypatch.delenv("MINIGPT_DATA")
    cfg = resume_config(tmp_path / "run", max_iters=4)
    assert cfg.data == str(text)
    assert train(cfg, log=lambda m: None).iterations == 4


def test_resume_with_a_lower_rate_lowers_the_floor_as_a_fresh_start_does(tmp_path):
    from minigpt.train import train
    from minigpt.training.config import resume_config

    train(tiny_cfg(tmp_path, max_iters=2, lr_decay_iters=2), log=lambda m: None)
    cfg = resume_config(tmp_path / "run", learning_rate=1e-4, max_iters=3)
    assert cfg.min_lr == pytest.approx(1e-5)
    cfg.validate()


def test_a_damaged_metrics_file_is_a_warning_and_a_fresh_file(tmp_path):
    from minigpt.train import train
    from minigpt.training.config import resume_config

    train(tiny_cfg(tmp_path, max_iters=2, lr_decay_iters=2), log=lambda m: None)
    (tmp_path / "run" / "metrics.csv").write_text("garbage,without\nthe,columns\n")
    (tmp_path / "run" / ".latest.npz.abc123.tmp").write_bytes(b"half a checkpoint")
    warnings = []
    train(resume_config(tmp_path / "run", max_iters=4), log=lambda m: None, warn=warnings.append)
    assert any("metrics.csv is damaged" in w for w in warnings)
    assert not (tmp_path / "run" / ".latest.npz.abc123.tmp").exists()  # an interrupted save's leftovers
    assert "val_bpc" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_a_text_without_a_newline_trains_and_samples(tmp_path):
    from minigpt.train import train

    text = tmp_path / "flat.txt"
    text.write_text("abcabcabd " * 300, encoding="utf-8")
    result = train(tiny_cfg(tmp_path, data=str(text), sample_chars=20), log=lambda m: None)
    assert len(result.sample) == 21 and result.sample[0] == " "  # its vocabulary's first character
    r = run("sample", "--out_dir", str(tmp_path / "run"), "--num_samples", "1", "--max_new_tokens", "5")
    assert r.returncode == 0, r.stderr


def test_a_signal_during_set_up_ends_the_run_at_once(tmp_path):
    """Nothing is trained yet, so nothing waits for a step to save: SIGTERM while the text downloads
    (a server that answers after 60 s) ends the command at once, exit 130."""
    server = HubServer({"slow.txt": b"text " * 1000})
    server.delay["slow.txt"] = 60
    try:
        proc = subprocess.Popen([sys.executable, "-m", "minigpt", "train", "--data", server.url + "/slow.txt",
                                 "--out_dir", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, MINIGPT_CACHE=str(tmp_path / "cache")))
        for _ in range(400):  # until the request has reached the server: the command is in its set-up
            if server.requests:
                break
            time.sleep(0.05)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130 and time.time() - t0 < 10, err
        assert "Traceback" not in err
    finally:
        server.close()
