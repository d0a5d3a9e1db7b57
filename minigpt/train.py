"""Training a language model on a text, nanoGPT's way: the loop.

    text -> 90/10 split -> tokenizer (characters by default, or BPE) -> ids
    repeat max_iters times:
        lr  = warmup + cosine schedule
        x, y = random (batch_size, block_size) chunks of the training ids
        loss = model(x, y); backward; clip the gradient norm; AdamW step
        every eval_interval: mean train/val loss over eval_iters batches, checkpoints, metrics row
    finally: the loss over the WHOLE validation split, and a sample of generated text.

The loop is here; its pieces are in minigpt/training/: the settings (config.py), the text and
its tokenizer (text.py), one step (steps.py), the losses and the sample (evaluate.py), what is
shown and written (metrics.py).

The model and the optimizer are built once, here: the fast twins (``fast.GPT``, ``fast.AdamW``)
unless ``cfg.reference``, which builds the plain reference (``nn.GPT``, ``optim.AdamW``), the same
math and the code a learner reads. Under ``mpiexec -n N`` every rank runs this same loop
(minigpt/distributed.py): each step is then a data-parallel step (training/steps.py), and rank 0
alone prints and writes files.

A run writes into ``out_dir``: ``best.npz`` (lowest val loss so far), ``latest.npz`` (where to
resume from), ``metrics.csv`` (one row per evaluation) and ``loss.png``. A resumed run restores the
weights, the optimizer, the iteration and every random generator, so it ends exactly where an
uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy

import minigpt
from minigpt import backend, checkpoint, distributed, fast, files, nn, optim, pretrained
from minigpt.tokenizers import CharTokenizer, Tokenizer
from minigpt.data import get_batch
from minigpt.nn.gpt import check_vocabulary
from minigpt.training import expected, text
from minigpt.training.config import (CPU_PRESET, GPU_PRESET, NANOGPT_CPU_PRESET, TrainConfig, resolve_device,
                                     resume_config)
from minigpt.training.evaluate import default_prompt, estimate_loss, generate_text, split_loss
from minigpt.training.metrics import (Progress, can_plot, fmt_time, overfitting, plot_metrics, read_metrics,
                                      warn_on_stderr, write_metrics)
from minigpt.training.steps import (TrainingError, asked_to_stop, data_parallel_step, parallel_train_step,
                                    train_step, training_step)

__all__ = ["train", "TrainConfig", "TrainResult", "TrainingError", "build_model", "build_optimizer",
           # the rooms' names a training script reaches for, also here as before the loop had rooms
           "resolve_device", "resume_config", "split_loss", "generate_text", "read_metrics", "train_step",
           "data_parallel_step", "parallel_train_step", "CPU_PRESET", "NANOGPT_CPU_PRESET", "GPU_PRESET"]


BIGRAM_MAX = 1 << 26  # entries of the bigram's (V, V) table: a vocabulary of 8,192 at most


@dataclass
class TrainResult:
    iterations: int
    best_val_loss: float
    full_val_loss: float | None  # nats per token over the whole validation split
    full_val_bpc: float | None  # the same in bits per character of the validation text
    wall_time_s: float
    sample: str
    interrupted: bool
    out_dir: Path


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The bigram model, or the GPT: ``fast.GPT`` (the reference's twin), or with ``cfg.reference`` ``nn.GPT``;
    with ``cfg.init_from``, holding pretrained weights (GPT-2's, or a Hugging Face GPT-2 folder's)."""
    if cfg.model == "bigram":
        if vocab_size ** 2 > BIGRAM_MAX:
            raise ValueError(f"the bigram model's table would be {vocab_size:,} x {vocab_size:,} numbers: too big for "
                             f"this vocabulary (use --model gpt, or a smaller --vocab_size)")
        return nn.BigramLanguageModel(vocab_size)
    cls = nn.GPT if cfg.reference else fast.GPT
    if cfg.init_from != "scratch" and not cfg.resume:  # a resumed run's weights come from its checkpoint
        return cls.from_pretrained(cfg.init_from, block_size=cfg.block_size, dropout=cfg.dropout).train()
    config = nn.GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    return cls(config)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> optim.AdamW:
    """nanoGPT's AdamW: weight decay on the 2-D weights (matmuls, embeddings), none on biases
    and layer-norm gains. ``fast.AdamW`` (the reference's twin), or with ``cfg.reference`` ``optim.AdamW``."""
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    adamw = optim.AdamW if cfg.reference else fast.AdamW
    return adamw(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


@dataclass
class Run:
    """Everything a run carries from step to step (and what a checkpoint restores)."""

    cfg: TrainConfig
    out_dir: Path
    tokenizer: Tokenizer
    train_ids: Any
    val_ids: Any
    bits_per_char: float  # nats per token -> bits per character of the validation text
    chars_per_token: float
    model: nn.Module
    optimizer: optim.AdamW
    batch_rng: numpy.random.Generator
    it: int = 0
    best_val: float = math.inf
    evaluated_at: int = -1  # the iteration whose evaluation is done (and saved)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    clock: float = 0.0  # time.time() when training started, resumes included
    warned_overfitting: bool = False
    preset: str | None = None  # the preset whose expected curve the run should follow (training/expected.py)
    lock: Any = None  # rank 0's hold on out_dir (files.hold_folder): one run per folder


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, log: Callable[[str], None] = print, warn: Callable[[str], None] = warn_on_stderr,
          should_stop: Callable[[], bool] = lambda: False, on_set_up: Callable[[], None] = lambda: None) -> TrainResult:
    """Train as ``cfg`` says, writing checkpoints and metrics into ``cfg.out_dir``.

    ``log`` gets the progress report, ``warn`` what the user should know although the run goes on
    (no matplotlib, so no loss.png; the val loss rising while the train loss falls). ``should_stop``
    is asked after every step, and during the final evaluation; when it says True the run saves
    ``latest.npz`` and returns (``interrupted=True``); ``--resume`` continues from there.
    ``on_set_up`` is called once the text, the model and the optimizer are ready (before that there
    is nothing to save: the command lets a signal then end the run at once).
    """
    cfg.validate()
    ranks = distributed.launched_ranks()
    if cfg.batch_size % ranks:
        raise ValueError(f"--batch_size {cfg.batch_size} is the global batch and must split evenly over the "
                         f"{ranks} ranks (each trains on batch_size / {ranks} rows)")
    start = time.time()
    world = distributed.world()  # one process, or N ranks under mpiexec -n N
    if world.rank != 0:  # rank 0 alone prints and writes files
        log = warn = _silent
    run = _set_up(cfg, world, log, warn)
    on_set_up()
    try:
        return _run(run, world, start, log, warn, should_stop)
    finally:
        if run.lock is not None:  # the folder is free for the next run
            run.lock.close()


def _run(run: Run, world: distributed.World, start: float, log: Callable[[str], None],
         warn: Callable[[str], None], should_stop: Callable[[], bool]) -> TrainResult:
    """The loop, the whole-split loss and the sample, for a run that is set up."""
    cfg = run.cfg
    model, optimizer = run.model, run.optimizer
    progress = Progress(cfg.max_iters, cfg.batch_size * cfg.block_size, cfg.log_interval,
                        stream=None if world.rank == 0 else io.StringIO())
    interrupted = False
    # a diverging run is caught by its loss, below, with a clear message: no NumPy overflow warnings
    with numpy.errstate(all="ignore"), training_step(model, optimizer, cfg.grad_clip, world, should_stop) as (step, how):
        if world.size > 1:
            log(f"data parallel: {world.size} ranks, {cfg.batch_size // world.size} of the {cfg.batch_size} rows of "
                f"each batch per rank, {distributed.blas_threads} BLAS thread(s) each, gradients summed by {how}")
        while True:
            lr = optim.cosine_lr(run.it, lr=cfg.learning_rate, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters,
                                 lr_decay_iters=cfg.lr_decay_iters)
            if (run.it % cfg.eval_interval == 0 or run.it == cfg.max_iters) and run.evaluated_at != run.it:
                progress.end_line()
                _evaluate(run, world, lr, progress, log, warn)
            if run.it >= cfg.max_iters:
                break

            t0 = time.time()
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(run.train_ids, cfg.batch_size, cfg.block_size, run.batch_rng)
            backend.start_device_stream(run.it * world.size + world.rank)  # a GPU's dropout masks of step it
            lossf, stop = step(run.it, x, y)  # forward, backward, clip, AdamW (training/steps.py)
            if not math.isfinite(lossf):
                progress.end_line()
                raise TrainingError(f"the loss became {lossf} at iteration {run.it}; stopping. The last good "
                                    f"checkpoints are kept in {run.out_dir}")
            progress.update(run.it, lossf, time.time() - t0)
            run.it += 1
            if stop:  # after the last step too: the final evaluation is then the resumed run's to do
                progress.end_line()
                _save(run, world, checkpoint.LATEST, evaluated=False)
                log(f"stopped at iteration {run.it}: saved {run.out_dir / checkpoint.LATEST}; continue with --resume")
                interrupted = True
                break

    def stopped_in_the_final_evaluation() -> bool:  # collective: every rank stops, or none
        if interrupted or not asked_to_stop(world, should_stop):
            return interrupted
        log(f"stopped at iteration {run.it}, in the final evaluation: {run.out_dir / checkpoint.LATEST} is saved; "
            f"--resume finishes the run")
        return True

    full_val = full_bpc = sample = None
    interrupted = stopped_in_the_final_evaluation()
    if not interrupted:
        # rows of block_size tokens per forward: at most 2^26 logits (256 MB in float32) at once
        rows = max(1, min(64, (1 << 26) // (cfg.block_size * run.tokenizer.vocab_size)))
        full_val = split_loss(model, run.val_ids, cfg.block_size, batch_rows=rows, world=world)
        full_bpc = full_val * run.bits_per_char
        log(f"val loss over the whole validation split ({len(run.val_ids) - 1:,} tokens): {full_val:.4f} nats per "
            f"token, {full_bpc:.4f} bits per character")
        interrupted = stopped_in_the_final_evaluation()
    if not interrupted:
        # as many tokens as hold sample_chars characters on average, then cut to sample_chars
        n_tokens = math.ceil(cfg.sample_chars / run.chars_per_token) if world.rank == 0 else 0
        prompt = default_prompt(run.tokenizer)
        sample = generate_text(model, run.tokenizer, prompt, n_tokens)[:len(prompt) + cfg.sample_chars]
        if cfg.sample_chars:
            log("sample:\n" + sample)
        interrupted = stopped_in_the_final_evaluation()
    wall = time.time() - start
    log(f"done in {fmt_time(wall)}; checkpoints and metrics in {run.out_dir}")
    return TrainResult(run.it, run.best_val, full_val, full_bpc, wall, sample or "", interrupted, run.out_dir)


def _evaluate(run: Run, world: distributed.World, lr: float, progress: Progress, log: Callable[[str], None],
              warn: Callable[[str], None]) -> None:
    """The mean train and val loss over eval_iters batches: logged, a row of metrics.csv, the
    checkpoints (best.npz when the val loss is the lowest yet), loss.png."""
    cfg = run.cfg
    losses = {s: estimate_loss(run.model, ids, cfg, run.batch_rng, world)
              for s, ids in (("train", run.train_ids), ("val", run.val_ids))}
    if not all(math.isfinite(v) for v in losses.values()) or not _finite(run.model):
        progress.end_line()  # weights or losses gone to inf or NaN: nothing of this is saved
        raise TrainingError(f"the model diverged by iteration {run.it} (train loss {losses['train']:.4g}, val loss "
                            f"{losses['val']:.4g}); stopping. The last good checkpoints are kept in {run.out_dir}")
    val_bpc = losses["val"] * run.bits_per_char
    verdict = expected.judge(run.preset, run.it, losses["val"]) if run.preset else None  # is my loss right?
    log(f"step {run.it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} ({val_bpc:.3f} bits per "
        f"character{'; ' + verdict + ' for ' + expected.NAMES[run.preset] if verdict else ''})")
    run.metrics.append({"iter": run.it, "train_loss": f"{losses['train']:.6f}", "val_loss": f"{losses['val']:.6f}",
                        "val_bpc": f"{val_bpc:.6f}", "lr": f"{lr:.6g}", "elapsed_s": f"{time.time() - run.clock:.1f}",
                        "tokens_per_s": f"{cfg.batch_size * cfg.block_size / progress.step_time:.0f}"
                        if progress.step_time else ""})
    run.evaluated_at = run.it
    if losses["val"] < run.best_val:
        run.best_val = losses["val"]
        _save(run, world, checkpoint.BEST, evaluated=True)
    _save(run, world, checkpoint.LATEST, evaluated=True)
    if world.rank == 0:
        write_metrics(run.out_dir / "metrics.csv", run.metrics)
        plot_metrics(run.metrics, run.out_dir / "loss.png")
    if not run.warned_overfitting and overfitting(run.metrics):
        run.warned_overfitting = True
        warn(f"the val loss rose at each of the last 3 evaluations (to {losses['val']:.4f}) while the train loss "
             f"fell: the model is overfitting, {len(run.train_ids):,} training tokens are few for "
             f"{run.model.num_params():,} parameters (fewer --max_iters, a smaller model or --dropout help)")


def _finite(model: nn.Module) -> bool:
    """Whether every weight is a finite number (one pass over them: a diverged run's never reach a file)."""
    return all(bool(p.xp.isfinite(p.data).all()) for p in model.parameters())


def _save(run: Run, world: distributed.World, name: str, evaluated: bool) -> None:
    """Write checkpoint ``name`` (rank 0 alone): the weights, the optimizer and everything --resume needs."""
    if world.rank != 0:
        return
    if not _finite(run.model):  # never over a good checkpoint (the stop after a step saves here too)
        raise TrainingError(f"the weights are not finite at iteration {run.it}: nothing was saved; the last good "
                            f"checkpoints are kept in {run.out_dir}")
    checkpoint.save(run.out_dir / name, run.model, optimizer=run.optimizer, tokenizer=run.tokenizer,
                    iter_num=run.it, best_val_loss=run.best_val, evaluated=evaluated,
                    rng=backend.get_rng_state(), batch_rng=run.batch_rng.bit_generator.state,
                    train_config=dataclasses.asdict(run.cfg), ranks=world.size, elapsed_s=time.time() - run.clock,
                    expected_preset=run.preset or "",  # decided with the run's own text (MINIGPT_DATA)
                    data_source=run.cfg.data or os.environ.get("MINIGPT_DATA") or None)  # what --resume reads


# ----------------------------------------------------------------------------- set-up and resume
def _set_up(cfg: TrainConfig, world: distributed.World, log: Callable[[str], None],
            warn: Callable[[str], None]) -> Run:
    """The text, the tokenizer, the split, the model and the optimizer (restored with --resume).
    An error here is usually every rank's alike: the ranks agree on it and report it once."""
    run: Run | None = None
    failure: BaseException | None = None
    lock = None
    try:
        lock = files.hold_folder(Path(cfg.out_dir)) if world.rank == 0 else None  # one run per out_dir
        if lock is not None:
            files.remove_leftovers(Path(cfg.out_dir))  # an interrupted save's temporary files
        device = resolve_device(cfg.device, warn)
        if device == "cpu" and not cfg.reference:
            fast.keep_freed_memory()  # each step reuses the last one's freed memory: no page faults
        # a resumed BPE run keeps the tokenizer it was trained with (a char one is rebuilt and compared);
        # fine-tuning keeps the weights' own
        keep = None
        if cfg.resume:
            keep = checkpoint.read_tokenizer(Path(cfg.out_dir) / checkpoint.LATEST)
            keep = None if isinstance(keep, CharTokenizer) and cfg.init_from == "scratch" else keep
        elif cfg.init_from != "scratch":
            keep = pretrained.load_tokenizer(cfg.init_from)
        data = text.prepare(cfg, log, warn, keep)
        minigpt.manual_seed(cfg.seed)
        outputs = data.tokenizer.vocab_size
        if cfg.resume and cfg.init_from != "scratch":  # pretrained weights may have more outputs than tokens
            outputs = int(checkpoint.read_model_spec(Path(cfg.out_dir) / checkpoint.LATEST)["config"]["vocab_size"])
        model = build_model(cfg, outputs).to(device, numpy.dtype(cfg.dtype))
        if isinstance(model, nn.GPT):
            check_vocabulary(data.tokenizer.vocab_size, model.config.vocab_size)
        run = Run(cfg, Path(cfg.out_dir), data.tokenizer, data.train_ids, data.val_ids, data.bits_per_char,
                  data.chars_per_token, model, build_optimizer(model, cfg), numpy.random.default_rng(cfg.seed),
                  clock=time.time(), lock=lock)
        run.preset = expected.preset_of(cfg)
        if cfg.resume:
            _restore(run, device, log, warn, world.size)
    except (ValueError, RuntimeError, OSError) as e:
        failure = e
        if lock is not None:
            lock.close()
    world.raise_if_any_failed(failure)  # one process: re-raises it; N ranks: every rank raises one error
    assert run is not None
    world.check_same_parameters(run.model.parameters())
    if not can_plot():
        warn(f"matplotlib is not installed, so {run.out_dir / 'loss.png'} will not be drawn "
             f"(pip install matplotlib: minigpt's plot extra)")
    run.model.train()
    n_params = run.model.num_params()
    runs_twin = isinstance(run.model, fast.GPT) and fast.enabled(next(run.model.parameters()))
    ops = "fast twins" if runs_twin else "reference ops"  # on CuPy fast.GPT runs the reference forward
    log(f"model: {cfg.model}, {n_params:,} parameters ({n_params / 1e6:.2f}M), device {device}, {cfg.dtype}, {ops}")
    per_token = "" if isinstance(run.tokenizer, CharTokenizer) else f" ({run.chars_per_token:.2f} characters each)"
    log(f"data: {len(run.train_ids):,} training and {len(run.val_ids):,} validation tokens, vocabulary "
        f"{run.tokenizer.vocab_size}{per_token}")
    return run


def _restore(run: Run, device: str, log: Callable[[str], None], warn: Callable[[str], None], ranks: int) -> None:
    """Put ``run`` back exactly as its ``latest.npz`` left it."""
    path = run.out_dir / checkpoint.LATEST
    ckpt = checkpoint.load(path, device=device)
    if ckpt.tokenizer is not None and ckpt.tokenizer != run.tokenizer:
        raise checkpoint.CheckpointError(f"{path} was trained on a text with another vocabulary")
    try:
        run.model.load_state_dict(ckpt.model.state_dict())
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"{path} does not fit the model these flags describe: {e}") from e
    if ckpt.optimizer_state is not None:
        run.optimizer.load_state_dict(ckpt.optimizer_state)
    st = ckpt.state
    backend.set_rng_state(st["rng"])
    run.batch_rng.bit_generator.state = st["batch_rng"]
    run.it = int(st["iter_num"])
    run.best_val = float(st["best_val_loss"])
    run.evaluated_at = run.it if st.get("evaluated") else -1
    log(f"resuming from {path} at iteration {run.it}")
    if int(st.get("ranks", 1)) != ranks:
        log(f"note: {path} was written by a run of {st.get('ranks', 1)} rank(s), this one has {ranks}: the same "
            f"global batches follow, but sums split another way round differently, so the run is not bit-identical")
    try:
        run.metrics = [r for r in read_metrics(run.out_dir / "metrics.csv") if int(r["iter"]) <= run.it]
    except (KeyError, ValueError, TypeError, OSError) as e:  # a side file, not the run: start it afresh
        run.metrics = []
        warn(f"{run.out_dir / 'metrics.csv'} is damaged ({type(e).__name__}: {e}); it starts afresh from "
             f"iteration {run.it}")
    run.warned_overfitting = overfitting(run.metrics)  # a run that already was has been told
    # metrics.csv's elapsed_s goes on from the time already trained (saved in the checkpoint; an
    # older checkpoint lacks it, and then the last evaluation's time is the best estimate)
    run.clock -= float(st.get("elapsed_s", run.metrics[-1]["elapsed_s"] if run.metrics else 0.0))


def _silent(message: str) -> None:
    """The log of ranks other than 0."""
