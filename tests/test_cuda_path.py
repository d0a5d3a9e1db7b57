"""minigpt's CuPy code path: on the fake device of tests/fakecupy.py in every run (no GPU needed),
and on a real GPU too where there is one (the ``gpu`` mark; skipped without CuPy and a GPU).

The fake is as strict as CuPy where GPU mistakes hide (host and device arrays never mix, no
implicit copies to the host), so code that runs on it keeps every array on its device. Its values
are NumPy's own: a run on it equals the CPU run with the same ops (the reference ops: minigpt's
fast twins are CPU-only) number for number, once both draw the same dropout masks. On a real GPU
the same comparisons hold to float tolerance (cuBLAS sums in another order than OpenBLAS).

The per-step budgets of a training step are asserted on the fake, which counts: one
read-back (the loss), two host-to-device copies (the batch), and a pinned count of device calls.
"""

import contextlib
import inspect
from types import SimpleNamespace

import numpy
import pytest

from tests import fakecupy

import minigpt
from minigpt import backend, checkpoint, optim
from minigpt import functional as F
from minigpt.data import get_batch
from minigpt.gradcheck import GradcheckError, gradcheck
from minigpt import tensor as tensor_module
from minigpt.nn import GPT, BigramLanguageModel, GPTConfig
from minigpt.tensor import Tensor
from minigpt.train import build_model, build_optimizer, train
from minigpt.training.config import TrainConfig, resume_config
from minigpt.training.evaluate import split_loss
from minigpt.training.steps import train_step

from tests.conftest import HAS_CUDA

# the line of Tensor.item that reads a value back (the one synchronisation a training step may have)
ITEM_LINE = next(i for i, line in enumerate(inspect.getsource(tensor_module).splitlines(), 1)
                 if line.strip() == "return self.data.item()")

recorder = fakecupy.recorder


def _real_gpu():
    import cupy  # noqa: PLC0415 - only where a GPU is present
    return SimpleNamespace(name="cuda", xp=cupy, on=contextlib.nullcontext, exact=False)


@pytest.fixture(params=["fake", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA GPU / CuPy (the fake device runs these tests in every run)")])])
def gpu(request):
    """The device the CuPy path runs on: the fake (always), a real GPU (where there is one).
    ``gpu.on()`` is the context to run it in; ``gpu.exact``: results equal the CPU's exactly."""
    if request.param == "fake":
        return SimpleNamespace(name="fake", xp=fakecupy, on=fakecupy.installed, exact=True)
    return _real_gpu()


def same(gpu, got, expected):
    """``got`` equals ``expected``: exactly on the fake device, to float32 tolerance on a GPU."""
    if gpu.exact:
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=2e-4)


def quiet(msg):
    pass


def tiny(out_dir, **kw):
    cfg = dict(out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8, max_iters=12,
               lr_decay_iters=12, warmup_iters=2, learning_rate=3e-3, min_lr=3e-4, eval_interval=6, eval_iters=2,
               sample_chars=20, dropout=0.0)
    cfg.update(kw)
    return TrainConfig.preset(**cfg)


@pytest.fixture
def device_masks_on_the_cpu(monkeypatch):
    """The CPU run's dropout masks drawn from the device generator's stream (and copied to the host),
    so that a CPU run and a fake-device run with dropout can be compared number for number."""
    draw = backend.uniform

    def uniform(shape, dtype, device):
        return draw(shape, dtype, "cuda").get() if device == "cpu" else draw(shape, dtype, device)

    monkeypatch.setattr(backend, "uniform", uniform)


# ----------------------------------------------------------------------------- the training loop
def test_the_training_loop_runs_on_the_device_and_equals_the_cpu_run(tmp_path, gpu):
    cpu = train(tiny(tmp_path / "cpu", device="cpu", reference=True), log=quiet)
    lines = []
    with gpu.on():
        recorder.reset()
        dev = train(tiny(tmp_path / "cuda", device="cuda"), log=lines.append)
        calls = recorder.count("call")
    assert any("device cuda" in line for line in lines)
    assert calls > 1000 or gpu.name == "cuda"  # the steps really ran on the fake device's array module
    same(gpu, dev.full_val_loss, cpu.full_val_loss)  # on the fake: the same NumPy arithmetic, step for step
    assert dev.sample == cpu.sample or not gpu.exact


def test_training_with_dropout_equals_the_cpu_run_that_draws_the_same_masks(tmp_path, gpu, device_masks_on_the_cpu):
    kw = dict(dropout=0.2, max_iters=6, eval_interval=3)
    with gpu.on():
        cpu = train(tiny(tmp_path / "cpu", device="cpu", reference=True, **kw), log=quiet)
        dev = train(tiny(tmp_path / "cuda", device="cuda", **kw), log=quiet)
        again = train(tiny(tmp_path / "again", device="cuda", **kw), log=quiet)
    same(gpu, dev.full_val_loss, cpu.full_val_loss)
    same(gpu, dev.best_val_loss, cpu.best_val_loss)
    same(gpu, again.full_val_loss, dev.full_val_loss)  # one seed, one run (a GPU's add.at adds in any order)


def test_dropout_masks_come_from_the_device_generator_with_no_host_work():  # counts: the fake only
    with fakecupy.installed():
        backend.uniform((1,), numpy.float32, "cuda")  # the generator is built (once per process)
        minigpt.manual_seed(3)
        x = Tensor(fakecupy.ones((4, 8), dtype=numpy.float32))
        recorder.reset()
        masks = [F.dropout(x, 0.5).data for _ in range(5)]
        assert recorder.count("call") == 5 * 5  # per call: the draw (cuRAND's, then 1 -> 0), >=, the mask, x*
        assert recorder.count("h2d") == 0 and recorder.count("sync") == 0
        assert len({m.get().tobytes() for m in masks}) == 5  # a stream, not one mask again and again
        minigpt.manual_seed(3)
        numpy.testing.assert_array_equal(F.dropout(x, 0.5).data.get(), masks[0].get())


def test_each_step_reseeds_the_one_device_generator_with_no_device_work():  # counts: the fake only
    """A GPU run starts a stream per step: that re-seeds cuRAND's Philox on the host, never builds
    a generator (an allocation and a set-up kernel) again, and a step's draw depends on nothing
    but (seed, stream)."""
    with fakecupy.installed():
        minigpt.manual_seed(3)
        backend.uniform((4,), numpy.float32, "cuda")  # the generator is built at the first draw
        recorder.reset()
        draws = []
        for it in range(6):
            backend.start_device_stream(it)
            draws.append(backend.uniform((4,), numpy.float32, "cuda").get())
        assert recorder.count("call") == 6 * 2 and recorder.count("h2d") == 0  # a step: the draw's two kernels
        assert len({d.tobytes() for d in draws}) == 6
        backend.uniform((4,), numpy.float32, "cuda")  # stream 5 runs on...
        backend.start_device_stream(3)  # ...and stream 3 starts again from its beginning
        numpy.testing.assert_array_equal(backend.uniform((4,), numpy.float32, "cuda").get(), draws[3])
        minigpt.manual_seed(4)
        backend.start_device_stream(3)
        assert not numpy.array_equal(backend.uniform((4,), numpy.float32, "cuda").get(), draws[3])
        with pytest.raises(TypeError, match="float32 and float64"):  # cuRAND draws floats only, as CuPy
            backend.uniform((4,), numpy.float16, "cuda")


def test_device_draws_keep_their_dtype_and_restart_with_their_stream():
    with fakecupy.installed():
        minigpt.manual_seed(3)
        first = backend.uniform((4,), numpy.float32, "cuda")
        assert first.dtype == numpy.float32 and backend.uniform((4,), numpy.float64, "cuda").dtype == numpy.float64
        state = backend.get_rng_state()
        assert state["device_stream"] == 0
        backend.set_rng_state(state)  # the stream's position cannot be saved: it restarts
        numpy.testing.assert_array_equal(backend.uniform((4,), numpy.float32, "cuda").get(), first.get())
        backend.start_device_stream(1)
        assert not numpy.array_equal(backend.uniform((4,), numpy.float32, "cuda").get(), first.get())
        old = {k: v for k, v in state.items() if k != "device_stream"}  # a checkpoint from before streams
        backend.start_device_stream(5)
        backend.set_rng_state(old)
        numpy.testing.assert_array_equal(backend.uniform((4,), numpy.float32, "cuda").get(), first.get())


def test_interrupted_then_resumed_run_with_dropout_on_the_device_repeats_the_straight_run(tmp_path, gpu):
    """Bit for bit on the fake device; on a GPU to float tolerance (its add.at adds in any order)."""
    kw = dict(dropout=0.2, max_iters=10, lr_decay_iters=10, eval_interval=4)
    calls = iter(range(1000))
    with gpu.on():
        straight = train(tiny(tmp_path / "a", device="cuda", **kw), log=quiet)
        first = train(tiny(tmp_path / "b", device="cuda", **kw), log=quiet, should_stop=lambda: next(calls) == 6)
        assert first.interrupted and first.iterations == 7
        resumed = train(resume_config(tmp_path / "b"), log=quiet)
        a, b = checkpoint.load(tmp_path / "a" / "latest.npz"), checkpoint.load(tmp_path / "b" / "latest.npz")
    assert resumed.iterations == 10
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        numpy.testing.assert_allclose(va, vb, rtol=0 if gpu.exact else 1e-4, atol=0 if gpu.exact else 1e-6, err_msg=ka)
    assert a.state["rng"] == b.state["rng"] and a.state["rng"]["device_stream"] == 9  # the last step's
    same(gpu, resumed.full_val_loss, straight.full_val_loss)
    assert resumed.sample == straight.sample or not gpu.exact


def test_checkpoints_load_onto_the_device(tmp_path, gpu):
    with gpu.on():
        run = train(tiny(tmp_path, device="cuda", max_iters=2, eval_interval=2), log=quiet)
        ck = checkpoint.load(run.out_dir, device="cuda")
        assert all(isinstance(p.data, gpu.xp.ndarray) for p in ck.model.parameters())
        logits, _ = ck.model(numpy.zeros((1, 4), dtype=numpy.int64))
        assert isinstance(logits.data, gpu.xp.ndarray)


# ----------------------------------------------------------------------------- budgets per step
def gpu_shaped(n_layer=6):
    """The GPU preset's depth, heads, dropout and batch structure with small arrays: the number of
    device calls depends on the layers, not on the sizes of the arrays."""
    return TrainConfig.preset(device="cuda", n_layer=n_layer, n_embd=48, block_size=32, batch_size=4)


def steady_step(cfg):
    """The counts of one training step after two warm-up steps."""
    ids = numpy.random.default_rng(0).integers(0, 65, 5000)
    rng = numpy.random.default_rng(0)
    minigpt.manual_seed(0)
    model = build_model(cfg, 65).to("cuda")
    optimizer = build_optimizer(model, cfg)
    for it in range(3):
        recorder.reset()
        backend.start_device_stream(it)  # as the training loop does
        loss = train_step(model, optimizer, *get_batch(ids, cfg.batch_size, cfg.block_size, rng), cfg.grad_clip)
    assert 0 < loss < 10
    return recorder


# Device calls of one step of the GPU preset's shape (6 layers, 6 heads, dropout 0.2, no biases):
# AdamW and clipping run over flat buffers, and the step's dropout masks come from the one device
# generator, re-seeded on the host (a per-parameter AdamW made ~16 calls per parameter, and a
# generator built per step or per mask costs a call each: all would show here).
STEP_CALLS = 1020


def test_a_training_step_reads_back_only_its_loss_and_copies_only_its_batch():
    with fakecupy.installed():
        counts = steady_step(gpu_shaped())
    assert dict(counts.where("sync")) == {f"minigpt/tensor.py:{ITEM_LINE}": 1}  # loss.item(), in train_step
    assert counts.count("h2d") == 2  # x and y
    assert counts.count("call") == STEP_CALLS  # pinned: a change that adds device work shows here


@pytest.mark.parametrize("n_layer", [1, 3])
def test_the_budgets_hold_whatever_the_depth(n_layer):
    with fakecupy.installed():
        counts = steady_step(gpu_shaped(n_layer))
    assert counts.count("sync") == 1 and counts.count("h2d") == 2


def test_clipping_scales_on_the_device_like_the_float_version():
    grads = [numpy.random.default_rng(i).standard_normal(s).astype(numpy.float32) for i, s in enumerate([(3, 4), (5,)])]
    host = [Tensor(numpy.zeros_like(g), requires_grad=True) for g in grads]
    for t, g in zip(host, grads):
        t.grad = g.copy()
    expected = optim.clip_grad_norm_(host, 0.5)
    with fakecupy.installed():
        dev = [Tensor(fakecupy.zeros(g.shape, dtype=numpy.float32), requires_grad=True) for g in grads]
        for t, g in zip(dev, grads):
            t.grad = fakecupy.asarray(g)
        recorder.reset()
        total = optim.clip_grad_norm_(dev, 0.5, read_back=False)
        assert recorder.count("sync") == 0 and isinstance(total, fakecupy.ndarray)
        assert float(total) == expected
        for t, h in zip(dev, host):
            numpy.testing.assert_array_equal(t.grad.get(), h.grad)


# ----------------------------------------------------------------------------- the rest of the library
def small_gpt(device):
    minigpt.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)).to(device).eval()


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_on_the_device_samples_what_the_cpu_samples(use_cache, gpu):
    prompt = numpy.array([[1, 2, 3]])
    cpu = small_gpt("cpu")
    minigpt.manual_seed(5)
    with minigpt.fast.disabled():
        expected = cpu.generate(prompt, 12, top_k=5, use_cache=use_cache)  # beyond block_size: the window slides
    with gpu.on():
        dev = small_gpt("cuda")
        minigpt.manual_seed(5)
        got = dev.generate(prompt, 12, top_k=5, use_cache=use_cache)
    numpy.testing.assert_array_equal(backend.to_numpy(got), expected)


def test_attention_maps_on_the_device_equal_the_cpus(gpu):
    idx = numpy.array([[1, 2, 3, 4, 5]])
    expected = small_gpt("cpu").attention_maps(idx)
    with gpu.on():
        got = small_gpt("cuda").attention_maps(gpu.xp.asarray(idx))
        assert isinstance(got, gpu.xp.ndarray)
        numpy.testing.assert_allclose(got.get(), expected, rtol=1e-5, atol=1e-7)


def test_the_bigram_model_trains_on_the_device_as_on_the_cpu(tmp_path, gpu):
    kw = dict(model="bigram", max_iters=20, lr_decay_iters=20, eval_interval=10, eval_iters=2, sample_chars=20)
    cpu = train(TrainConfig.preset(out_dir=str(tmp_path / "cpu"), device="cpu", **kw), log=quiet)
    with gpu.on():
        dev = train(TrainConfig.preset(out_dir=str(tmp_path / "cuda"), device="cuda", **kw), log=quiet)
    same(gpu, dev.full_val_loss, cpu.full_val_loss)
    assert dev.sample == cpu.sample or not gpu.exact


def test_gradcheck_passes_and_fails_on_the_device(gpu):
    x = numpy.random.default_rng(0).standard_normal((3, 5))
    with gpu.on():
        assert gradcheck(lambda t: F.softmax(t * 2.0), [Tensor(gpu.xp.asarray(x), requires_grad=True)])

        class Wrong(F.Softmax):
            def backward(self, dy):
                return super().backward(dy) * 1.01

        with pytest.raises(GradcheckError):
            gradcheck(lambda t: Wrong.apply(t), [Tensor(gpu.xp.asarray(x), requires_grad=True)])


def test_batches_and_the_split_loss_from_ids_on_the_device(gpu):
    ids = numpy.random.default_rng(0).integers(0, 11, 300)
    model = small_gpt("cpu")
    expected_x, expected_y = get_batch(ids, 4, 8, numpy.random.default_rng(1))
    expected_loss = split_loss(model, ids, 8)
    with gpu.on():
        dev_ids = gpu.xp.asarray(ids)
        x, y = get_batch(dev_ids, 4, 8, numpy.random.default_rng(1))
        assert isinstance(x, gpu.xp.ndarray) and x.dtype == numpy.int64
        numpy.testing.assert_array_equal(x.get(), expected_x)
        numpy.testing.assert_array_equal(y.get(), expected_y)
        assert split_loss(small_gpt("cuda"), dev_ids, 8) == pytest.approx(expected_loss, rel=1e-5)
        assert split_loss(model, dev_ids, 8) == pytest.approx(expected_loss, rel=1e-6)  # a CPU model, device ids


def test_a_bigram_model_forward_on_the_device(gpu):
    minigpt.manual_seed(0)
    idx = numpy.array([[1, 2], [3, 4]])
    expected = BigramLanguageModel(7)(idx, idx)[1].item()
    with gpu.on():
        minigpt.manual_seed(0)
        model = BigramLanguageModel(7).to("cuda")
        same(gpu, model(idx, idx)[1].item(), expected)


def test_bench_gpu_runs_on_the_fake_device(capsys, monkeypatch):
    """benchmarks/bench_gpu.py as a smoke test: on the fake device, a small model, no timing asserted."""
    import runpy
    import sys
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py")
    monkeypatch.setattr(sys, "argv", [script, "--rounds", "1", "--steps", "1", "--warmup", "0", "--batch_size", "2",
                                      "--block_size", "8", "--n_layer", "1", "--n_head", "2", "--n_embd", "16"])
    with fakecupy.installed():
        runpy.run_path(script, run_name="__main__")
    out = capsys.readouterr().out
    assert "fakecupy (NumPy on the CPU)" in out and "minigpt :" in out and "ms/iter" in out


def test_an_index_out_of_range_is_refused_on_the_device_where_cupy_would_wrap_it():
    """The fake wraps out-of-range integer-array indices as CuPy does, so this test would read the
    wrong rows without minigpt's own check."""
    from tests import fakecupy

    with fakecupy.installed() as cp:
        raw = cp.asarray(numpy.arange(6.0).reshape(3, 2))
        assert float(raw[cp.asarray(numpy.array([3]))][0, 0].get()) == 0.0  # CuPy's wrap: row 3 is row 0
        x = minigpt.Tensor(raw)
        for index in (cp.asarray(numpy.array([0, 3])), numpy.array([-4]), (slice(None), cp.asarray(numpy.array([2]))),
                      (Ellipsis, cp.asarray(numpy.array([5])))):
            with pytest.raises(IndexError, match="out of bounds"):
                x[index]
        numpy.testing.assert_array_equal(x[cp.asarray(numpy.array([2, -1, 0]))].data.get(),
                                         numpy.arange(6.0).reshape(3, 2)[[2, -1, 0]])
