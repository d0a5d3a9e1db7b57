"""Training a character-level language model on a text, nanoGPT's way.

    text -> CharTokenizer -> ids -> 90/10 split
    repeat max_iters times:
        lr  = warmup + cosine schedule
        x, y = random (batch_size, block_size) chunks of the training ids
        loss = model(x, y); backward; clip the gradient norm; AdamW step
        every eval_interval: mean train/val loss over eval_iters batches, checkpoints, metrics row
    finally: the loss over the WHOLE validation split, and a sample of generated text.

A run writes into ``out_dir``: ``best.npz`` (lowest val loss so far), ``latest.npz`` (where to
resume from) and ``metrics.csv`` (one row per evaluation). A resumed run restores the
weights, the optimizer, the iteration and every random generator, so it ends exactly where
an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy

import minigpt
from minigpt import backend, checkpoint, distributed, fast, optim
from minigpt import functional as F
from minigpt.data import CharTokenizer, atomic_write_bytes, get_batch, load_source, train_val_split
from minigpt.nn import GPT, BigramLanguageModel, GPTConfig, Module
from minigpt.nn.gpt import check_settings
from minigpt.tensor import no_grad

# nanoGPT's recipes. CPU: its README's laptop command for shakespeare_char (--preset nanogpt); GPU:
# config/train_shakespeare_char.py. Neither sets `bias`, so both take nanoGPT train.py's default,
# bias=False (no biases in Linear and LayerNorm), although its GPTConfig dataclass (and ours) defaults to True.
NANOGPT_CPU_PRESET = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
                          lr_decay_iters=2000, dropout=0.0, eval_iters=20, bias=False, learning_rate=1e-3,
                          min_lr=1e-4, warmup_iters=100, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
                          eval_interval=250)
# The default on a CPU (TrainConfig's defaults): our own recipe, found by benchmarks/sweep_recipe.py
# (docs/recipe.md). In the wall time nanoGPT's train.py takes for its recipe, one layer trained for
# 2800 steps of 24 chunks at a higher rate learns more than four layers for 2000 steps of 12.
CPU_PRESET = dict(NANOGPT_CPU_PRESET, n_layer=1, batch_size=24, learning_rate=6e-3, min_lr=6e-4, max_iters=2800,
                  lr_decay_iters=2800, eval_interval=500)
GPU_PRESET = dict(NANOGPT_CPU_PRESET, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
                  max_iters=5000, lr_decay_iters=5000, dropout=0.2, eval_iters=200)
# the notebook's bigram: a (V, V) table, short contexts, a higher rate for a table that starts at N(0, 1)
BIGRAM_PRESET = dict(block_size=8, batch_size=32, max_iters=3000, lr_decay_iters=3000, learning_rate=1e-2,
                     min_lr=1e-3, warmup_iters=0, weight_decay=0.0, eval_iters=50, eval_interval=250)
# the GPT's shape settings, which the bigram model (a table of V x V logits) has no use for
BIGRAM_IGNORES = ("n_layer", "n_head", "n_embd", "dropout", "bias")


@dataclass
class TrainConfig:
    """Every setting of a run; the field names are nanoGPT's (and the command-line flags). The
    defaults are the command's: the CPU recipe (CPU_PRESET); :meth:`preset` gives the others."""

    device: str = "cpu"  # cpu | cuda | auto
    data: str | None = None  # text file or http(s) URL; else $MINIGPT_DATA; else the packaged Tiny Shakespeare
    out_dir: str = "out"
    resume: bool = False
    model: str = "gpt"  # gpt | bigram
    n_layer: int = 1
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    batch_size: int = 24
    dropout: float = 0.0
    bias: bool = False  # nanoGPT train.py's default
    max_iters: int = 2800
    learning_rate: float = 6e-3
    min_lr: float = 6e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2800
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 500
    eval_iters: int = 20
    log_interval: int = 100  # iterations between progress lines when stderr is not a terminal
    seed: int = 1337
    dtype: str = "float32"  # float32 | float64
    sample_chars: int = 500  # characters of text generated at the end
    reference: bool = False  # train with the plain reference ops instead of the fast twins (same math)

    @classmethod
    def preset(cls, device: str | None = None, model: str | None = None, preset: str | None = None,
               **overrides: Any) -> TrainConfig:
        """The CPU preset, the GPU preset (device "cuda", or "auto" where it resolves to CUDA), or
        with ``preset="nanogpt"`` nanoGPT's CPU recipe exactly; then the bigram preset's values for
        the bigram model; then the ``overrides`` that are not None."""
        device, model = device or "cpu", model or "gpt"
        if preset not in (None, "nanogpt"):
            raise ValueError(f"--preset must be nanogpt, got {preset!r}")
        runs_on = resolve_device(device) if device == "auto" else device
        values: dict[str, Any] = dict(NANOGPT_CPU_PRESET if preset == "nanogpt" else
                                      GPU_PRESET if runs_on == "cuda" else CPU_PRESET)
        if model == "bigram":
            values.update(BIGRAM_PRESET)
        values.update(device=device, model=model)
        given = {k: v for k, v in overrides.items() if v is not None}
        if "learning_rate" in given and "min_lr" not in given:  # the floor follows the rate: a tenth of it
            given["min_lr"] = given["learning_rate"] / 10
        values.update(given)
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range or inconsistent."""
        check_settings(dataclasses.asdict(self), prefix="--")  # the model's settings, as GPTConfig checks them
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"--min_lr {self.min_lr} is above --learning_rate {self.learning_rate}: the schedule "
                             f"decays from the rate down to the floor")
        for name in ("warmup_iters", "lr_decay_iters", "sample_chars"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("--weight_decay and --grad_clip must not be negative")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.model not in ("gpt", "bigram"):
            raise ValueError(f"--model must be gpt or bigram, got {self.model!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")


MODEL_SHAPE_FLAGS = ("model", "n_layer", "n_head", "n_embd", "block_size", "bias", "dtype")


def ignored_settings(model: str | None, given: dict[str, Any]) -> list[str]:
    """The settings in ``given`` (those set, not None) that ``model`` has no use for, such as
    ``n_layer`` for the bigram model: the run goes on without them, and the command says so."""
    if (model or "gpt") != "bigram":
        return []
    return [k for k in BIGRAM_IGNORES if given.get(k) is not None]


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


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite...). In a data-parallel run every
    rank sees the same all-reduced loss and raises it at the same step."""

    every_rank = True


# ----------------------------------------------------------------------------- building blocks
def resolve_device(device: str, warn: Callable[[str], None] | None = None) -> str:
    """"auto" -> "cuda" where CuPy finds a GPU that runs its kernels, else "cpu" (and ``warn`` is
    told why); "cuda" where it cannot run -> DeviceError saying why."""
    if device == "auto":
        reason = backend.cuda_unavailable_reason()
        if reason and warn is not None:
            warn(f"--device auto: running on the CPU ({reason})")
        return "cpu" if reason else "cuda"
    backend.xp_for(device)  # a clear DeviceError when cuda is asked for and cannot run
    return device


def warn_on_stderr(message: str) -> None:
    """A warning the run goes on after: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def build_model(cfg: TrainConfig, vocab_size: int) -> Module:
    if cfg.model == "bigram":
        return BigramLanguageModel(vocab_size)
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))


def build_optimizer(model: Module, cfg: TrainConfig) -> optim.AdamW:
    """nanoGPT's AdamW: weight decay on the 2-D weights (matmuls, embeddings), none on biases
    and layer-norm gains."""
    params = list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return fast.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))  # optim.AdamW's twin


def train_step(model: Module, optimizer: optim.AdamW, x: Any, y: Any, grad_clip: float) -> float:
    """One optimisation step on the batch (x, y): forward, backward, clip, AdamW. Returns the loss.

    On a GPU everything stays on the device until the last line: clipping computes its scale there
    (no norm read back), and ``loss.item()``, which the progress line and the NaN check need, is the
    step's one device-to-host synchronisation."""
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    if grad_clip > 0:
        optim.clip_grads_(model.parameters(), grad_clip)  # clip_grad_norm_, without reading the norm back
    optimizer.step()
    return loss.item()


def parallel_train_step(model: Module, optimizer: optim.AdamW, x: Any, y: Any, grad_clip: float,
                        world: distributed.World, should_stop: Callable[[], bool]) -> tuple[float, bool]:
    """:func:`train_step` of a data-parallel run: this rank's forward and backward on its slice of
    the global batch (x, y), then one all-reduce that leaves every rank with the mean gradient
    over the global batch (see minigpt/distributed.py), then the same clipping and AdamW step on
    every rank. Returns the global batch's loss and whether any rank's ``should_stop()`` said True
    (asked just before the all-reduce, so that every rank stops after the same step)."""
    mine = world.shard(len(x))  # (B, T) -> (B/N, T): this rank's contiguous rows
    _, loss = model(x[mine], y[mine])
    optimizer.zero_grad()
    loss.backward()
    lossf, stop = world.average_gradients(optim.optimizer_order(optimizer, model.parameters()), loss, should_stop())
    if grad_clip > 0:
        optim.clip_grads_(model.parameters(), grad_clip)
    optimizer.step()
    return lossf, stop


def data_parallel_step(model: Module, optimizer: optim.AdamW, world: distributed.World
                       ) -> tuple[Callable[[Any, Any, float, Callable[[], bool]], tuple[float, bool]], str]:
    """Collective: the data-parallel step this run takes, ``step(x, y, grad_clip, should_stop)``,
    and how it sums the gradients, in words. Where every rank runs on this machine with the fast
    twins on, :class:`fast.SharedMemoryStep` (the ranks share one copy of the weights and split
    the work after backward; the same numbers, bit for bit with 2 ranks), else
    :func:`parallel_train_step` (and why)."""
    twin = fast.SharedMemoryStep.start(world, model, optimizer)
    if isinstance(twin, fast.SharedMemoryStep):
        return twin, "shared memory"

    def step(x: Any, y: Any, grad_clip: float, should_stop: Callable[[], bool]) -> tuple[float, bool]:
        return parallel_train_step(model, optimizer, x, y, grad_clip, world, should_stop)

    return step, f"MPI all-reduce ({twin})"


@contextlib.contextmanager
def evaluating(model: Module) -> Iterator[Module]:
    """The model in eval mode (no dropout) inside the block, back in its previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@no_grad()
def estimate_loss(model: Module, ids: numpy.ndarray, cfg: TrainConfig, rng: numpy.random.Generator,
                  world: distributed.World = distributed.World()) -> float:
    """Mean loss over ``eval_iters`` random batches (in eval mode: no dropout). In a data-parallel
    run every rank draws the same global batches and scores its slice of each; the N means of a
    batch average to the batch's mean (one all-reduce for all of them)."""
    losses = []
    with evaluating(model):
        for _ in range(cfg.eval_iters):
            x, y = get_batch(ids, cfg.batch_size, cfg.block_size, rng)
            mine = world.shard(len(x))
            losses.append(model(x[mine], y[mine])[1].item())
    return float(numpy.mean(world.sum(numpy.array(losses)) / world.size))  # one process: sum is the identity


@no_grad()
def split_loss(model: Module, ids: Any, block_size: int, batch_rows: int = 64,
               world: distributed.World = distributed.World()) -> float:
    """The mean loss over EVERY token of ``ids``: the text is cut into consecutive chunks of
    block_size (the last may be shorter) and each token is predicted from the tokens before
    it in its chunk, so every one of the len(ids) - 1 targets is scored exactly once.
    In a data-parallel run rank r scores pieces r, r + N, r + 2N... and one all-reduce adds them."""
    ids = backend.to_numpy(ids)  # ids on a GPU: copied to the host once; the model moves each chunk
    n = len(ids) - 1  # number of (input, target) pairs
    full = n // block_size
    starts = numpy.arange(full) * block_size
    pieces = [starts[i:i + batch_rows, None] + numpy.arange(block_size) for i in range(0, full, batch_rows)]  # (rows, T)
    rest = n - full * block_size
    if rest:
        pieces.append(full * block_size + numpy.arange(rest)[None])  # (1, rest)
    total = 0.0
    with evaluating(model):
        for offs in pieces[world.rank::world.size]:
            total += _sum_loss(model, ids[offs], ids[offs + 1])
    return world.sum(total) / n


def _sum_loss(model: Module, x: numpy.ndarray, y: numpy.ndarray) -> float:
    logits, _ = model(x)  # (rows, T, V); cross-entropy checks y on the host, then copies it over
    return float(F.cross_entropy(logits, y.reshape(logits.shape[:-1]), reduction="sum").item())


class Progress:
    """One status line: iteration, loss, tokens/s and time left (redrawn on a terminal,
    printed every log_interval iterations otherwise)."""

    def __init__(self, total: int, tokens_per_iter: int, log_interval: int, stream: Any = None) -> None:
        self.total, self.tokens_per_iter, self.log_interval = total, tokens_per_iter, log_interval
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.step_time: float | None = None
        self.last_draw = 0.0

    def update(self, it: int, loss: float, dt: float) -> None:
        self.step_time = dt if self.step_time is None else 0.9 * self.step_time + 0.1 * dt
        now = time.time()
        if self.tty and now - self.last_draw < 0.1 and it + 1 < self.total:
            return
        if not self.tty and (it + 1) % self.log_interval and it + 1 < self.total:
            return
        self.last_draw = now
        done = (it + 1) / self.total
        bar = "#" * int(20 * done) + "." * (20 - int(20 * done))
        left = self.step_time * (self.total - it - 1)
        line = (f"[{bar}] iter {it + 1}/{self.total} | loss {loss:.4f} | "
                f"{self.tokens_per_iter / self.step_time:,.0f} tok/s | {_fmt_time(left)} left")
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end_line(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


METRICS_FIELDS = ["iter", "train_loss", "val_loss", "val_bpc", "lr", "elapsed_s", "tokens_per_s"]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_FIELDS, lineterminator="\n", restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def can_plot() -> bool:
    """Whether matplotlib, which draws loss.png, is installed (the ``plot`` extra)."""
    try:
        import matplotlib  # noqa: F401, PLC0415 - optional
    except ImportError:
        return False
    return True


def overfitting(rows: list[dict[str, Any]], evaluations: int = 3) -> bool:
    """Whether the val loss rose at each of the last ``evaluations`` evaluations of ``rows``
    (metrics.csv's) while the train loss fell at each: the model learns its training text by
    heart instead of the language, as a big model on a small text does."""
    last = rows[-(evaluations + 1):]
    if len(last) < evaluations + 1:
        return False
    pairs = [(float(a["train_loss"]), float(a["val_loss"]), float(b["train_loss"]), float(b["val_loss"]))
             for a, b in zip(last, last[1:])]
    return all(val_b > val_a and train_b < train_a for train_a, val_a, train_b, val_b in pairs)


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> bool:
    """Draw the train and val loss curves into a PNG at ``path``; False (and nothing written)
    when matplotlib is not installed (pip install matplotlib: the plot extra)."""
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    its = [int(r["iter"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(its, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax.plot(its, [float(r["val_loss"]) for r in rows], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (mean of eval_iters batches)")
    ax.set_title("minigpt on Tiny Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, *, log: Callable[[str], None] = print, warn: Callable[[str], None] = warn_on_stderr,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train as ``cfg`` says, writing checkpoints and metrics into ``cfg.out_dir``.

    ``log`` gets the progress report, ``warn`` what the user should know although the run goes on
    (no matplotlib, so no loss.png; the val loss rising while the train loss falls). ``should_stop``
    is asked after every step, and once more before the final whole-split loss and sample; when it
    says True the run saves ``latest.npz`` and returns (``interrupted=True``); ``--resume``
    continues from there. With ``cfg.reference`` every step runs the plain reference ops
    (``minigpt.fast.disabled()``).
    """
    cfg.validate()
    ranks = distributed.launched_ranks()
    if cfg.batch_size % ranks:
        raise ValueError(f"--batch_size {cfg.batch_size} is the global batch and must split evenly over the "
                         f"{ranks} ranks (each trains on batch_size / {ranks} rows)")
    with fast.disabled() if cfg.reference else contextlib.nullcontext():
        return _train(cfg, log, warn, should_stop)


def _train(cfg: TrainConfig, log: Callable[[str], None], warn: Callable[[str], None],
           should_stop: Callable[[], bool]) -> TrainResult:
    start = time.time()
    world = distributed.world()  # one process, or N ranks under mpiexec -n N
    if world.rank != 0:  # rank 0 alone prints and writes files
        log = warn = _silent
    failure: BaseException | None = None
    try:  # the set-up: an error here is usually every rank's alike; the ranks agree on it below
        out_dir = Path(cfg.out_dir)
        device = resolve_device(cfg.device, warn)
        dtype = numpy.dtype(cfg.dtype)
        if device == "cpu" and not cfg.reference:
            fast.keep_freed_memory()  # each step reuses the last one's freed memory: no page faults

        text = load_source(cfg.data)
        tokenizer = CharTokenizer.from_text(text)
        train_ids, val_ids = train_val_split(tokenizer.encode(text))
        if len(val_ids) <= cfg.block_size:
            raise ValueError(f"the text is too short for block_size {cfg.block_size}: its validation split "
                             f"has {len(val_ids)} characters, it needs more than {cfg.block_size}")
        # nats per token -> bits per character of the validation text: / ln 2, / characters per token
        bits_per_char = 1 / (math.log(2) * len(tokenizer.decode(val_ids)) / len(val_ids))

        minigpt.manual_seed(cfg.seed)
        batch_rng = numpy.random.default_rng(cfg.seed)
        model = build_model(cfg, tokenizer.vocab_size).to(device, dtype)
        optimizer = build_optimizer(model, cfg)
        it, best_val, evaluated_at, metrics, elapsed_before = 0, math.inf, -1, [], 0.0

        if cfg.resume:
            it, best_val, evaluated_at, metrics, elapsed_before = _restore(
                out_dir / checkpoint.LATEST, model, optimizer, tokenizer, batch_rng, device, log, world.size)
    except (ValueError, RuntimeError, OSError) as e:
        failure = e
    world.raise_if_any_failed(failure)  # one process: re-raises it; N ranks: every rank raises one error
    world.check_same_parameters(model.parameters())
    clock = start - elapsed_before  # metrics.csv's elapsed_s goes on from where a resumed run stopped
    if not can_plot():
        warn(f"matplotlib is not installed, so {out_dir / 'loss.png'} will not be drawn "
             f"(pip install matplotlib: minigpt's plot extra)")
    warned_overfitting = overfitting(metrics)  # a resumed run that already was: warned before
    model.train()
    n_params = model.num_params()
    ops = "fast twins" if fast.enabled(next(model.parameters())) else "reference ops"
    log(f"model: {cfg.model}, {n_params:,} parameters ({n_params / 1e6:.2f}M), device {device}, {cfg.dtype}, {ops}")
    log(f"data: {len(train_ids):,} training and {len(val_ids):,} validation tokens, vocabulary {tokenizer.vocab_size}")
    parallel_step = None
    if world.size > 1:
        parallel_step, how = data_parallel_step(model, optimizer, world)
        log(f"data parallel: {world.size} ranks, {cfg.batch_size // world.size} of the {cfg.batch_size} rows of each "
            f"batch per rank, {distributed.blas_threads} BLAS thread(s) each, gradients summed by {how}")

    def save(name: str, evaluated: bool) -> None:
        if world.rank != 0:
            return
        checkpoint.save(out_dir / name, model, optimizer=optimizer, tokenizer=tokenizer,
                        iter_num=it, best_val_loss=best_val, evaluated=evaluated,
                        rng=backend.get_rng_state(), batch_rng=batch_rng.bit_generator.state,
                        train_config=dataclasses.asdict(cfg), ranks=world.size, elapsed_s=time.time() - clock)

    progress = Progress(cfg.max_iters, cfg.batch_size * cfg.block_size, cfg.log_interval,
                        stream=None if world.rank == 0 else io.StringIO())
    interrupted = False
    # a diverging run is caught by its loss, below, with a clear message: no NumPy overflow warnings
    with numpy.errstate(all="ignore"), _freed_at_the_end(parallel_step):
        while True:
            lr = optim.cosine_lr(it, lr=cfg.learning_rate, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters,
                                 lr_decay_iters=cfg.lr_decay_iters)
            if (it % cfg.eval_interval == 0 or it == cfg.max_iters) and evaluated_at != it:
                losses = {s: estimate_loss(model, ids, cfg, batch_rng, world) for s, ids in (("train", train_ids), ("val", val_ids))}
                progress.end_line()
                elapsed = time.time() - clock
                val_bpc = losses["val"] * bits_per_char
                log(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                    f"({val_bpc:.3f} bits per character)")
                metrics.append({"iter": it, "train_loss": f"{losses['train']:.6f}", "val_loss": f"{losses['val']:.6f}",
                                "val_bpc": f"{val_bpc:.6f}", "lr": f"{lr:.6g}", "elapsed_s": f"{elapsed:.1f}",
                                "tokens_per_s": f"{cfg.batch_size * cfg.block_size / progress.step_time:.0f}"
                                if progress.step_time else ""})
                evaluated_at = it
                if losses["val"] < best_val:
                    best_val = losses["val"]
                    save(checkpoint.BEST, evaluated=True)
                save(checkpoint.LATEST, evaluated=True)
                if world.rank == 0:
                    write_metrics(out_dir / "metrics.csv", metrics)
                    plot_metrics(metrics, out_dir / "loss.png")
                if not warned_overfitting and overfitting(metrics):
                    warned_overfitting = True
                    warn(f"the val loss rose at each of the last 3 evaluations (to {losses['val']:.4f}) while the "
                         f"train loss fell: the model is overfitting, {len(train_ids):,} training tokens are few for "
                         f"{n_params:,} parameters (fewer --max_iters, a smaller model or --dropout help)")
            if it >= cfg.max_iters:
                break

            t0 = time.time()
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, batch_rng)
            backend.start_device_stream(it * world.size + world.rank)  # a GPU's dropout masks of step it, resumed or not
            if world.size == 1:
                lossf = train_step(model, optimizer, x, y, cfg.grad_clip)
                stop = should_stop()
            else:
                backend.start_host_stream(it, world.rank)  # this rank's own dropout masks of step it
                lossf, stop = parallel_step(x, y, cfg.grad_clip, should_stop)
            if not math.isfinite(lossf):
                progress.end_line()
                raise TrainingError(f"the loss became {lossf} at iteration {it}; stopping. The last good "
                                    f"checkpoints are kept in {out_dir}")
            progress.update(it, lossf, time.time() - t0)
            it += 1
            if stop:  # after the last step too: the final evaluation is then the resumed run's to do
                progress.end_line()
                save(checkpoint.LATEST, evaluated=False)
                log(f"stopped at iteration {it}: saved {out_dir / checkpoint.LATEST}; continue with --resume")
                interrupted = True
                break

    def stopped_in_the_final_evaluation() -> bool:  # collective: every rank stops, or none
        if interrupted or world.sum(float(should_stop())) == 0:
            return interrupted
        log(f"stopped at iteration {it}, in the final evaluation: {out_dir / checkpoint.LATEST} is saved; "
            f"--resume finishes the run")
        return True

    full_val = full_bpc = sample = None
    interrupted = stopped_in_the_final_evaluation()
    if not interrupted:
        full_val = split_loss(model, val_ids, cfg.block_size, world=world)
        full_bpc = full_val * bits_per_char
        log(f"val loss over the whole validation split ({len(val_ids) - 1:,} tokens): {full_val:.4f} nats per "
            f"token, {full_bpc:.4f} bits per character")
        interrupted = stopped_in_the_final_evaluation()
    if not interrupted:
        sample = generate_text(model, tokenizer, "\n", cfg.sample_chars if world.rank == 0 else 0)
        if cfg.sample_chars:
            log("sample:\n" + sample)
        interrupted = stopped_in_the_final_evaluation()
    wall = time.time() - start
    log(f"done in {_fmt_time(wall)}; checkpoints and metrics in {out_dir}")
    return TrainResult(it, best_val, full_val, full_bpc, wall, sample or "", interrupted, out_dir)


def resume_config(out_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The settings a run in ``out_dir`` was started with (from its latest.npz), with
    ``overrides`` (the flags given again, such as a larger --max_iters) on top."""
    state = checkpoint.read_state(Path(out_dir) / checkpoint.LATEST)  # the weights are read later, once
    saved = {k: v for k, v in state.get("train_config", {}).items() if k in TrainConfig.__dataclass_fields__}
    if not saved:
        raise checkpoint.CheckpointError(f"{Path(out_dir) / checkpoint.LATEST} holds no training settings to resume")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("block_size") is not None and given["block_size"] > saved.get("block_size", 0):
        raise ValueError(f"--block_size {given['block_size']} is larger than the checkpoint's "
                         f"{saved.get('block_size')}: a model cannot attend further than it was built for")
    changed = [k for k in MODEL_SHAPE_FLAGS if k in given and given[k] != saved.get(k)]
    if changed:
        raise ValueError("--resume continues the same model; these flags differ from the checkpoint's: " +
                         ", ".join(f"--{k} {given[k]} (checkpoint: {saved.get(k)})" for k in changed))
    saved.update(given)
    saved.update(out_dir=str(out_dir), resume=True)
    return TrainConfig(**saved)


def _restore(path: Path, model: Module, optimizer: optim.AdamW, tokenizer: CharTokenizer,
             batch_rng: numpy.random.Generator, device: str, log: Callable[[str], None], ranks: int) -> tuple:
    """Put a run back exactly as ``latest.npz`` left it."""
    ckpt = checkpoint.load(path, device=device)
    if ckpt.tokenizer is not None and ckpt.tokenizer != tokenizer:
        raise checkpoint.CheckpointError(f"{path} was trained on a text with another vocabulary")
    try:
        model.load_state_dict(ckpt.model.state_dict())
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"{path} does not fit the model these flags describe: {e}") from e
    if ckpt.optimizer_state is not None:
        optimizer.load_state_dict(ckpt.optimizer_state)
    st = ckpt.state
    backend.set_rng_state(st["rng"])
    batch_rng.bit_generator.state = st["batch_rng"]
    it = int(st["iter_num"])
    log(f"resuming from {path} at iteration {it}")
    if int(st.get("ranks", 1)) != ranks:
        log(f"note: {path} was written by a run of {st.get('ranks', 1)} rank(s), this one has {ranks}: the same "
            f"global batches follow, but sums split another way round differently, so the run is not bit-identical")
    metrics = [r for r in read_metrics(path.parent / "metrics.csv") if int(r["iter"]) <= it]
    # time already trained: saved since metrics' elapsed_s continues across resumes; older checkpoints
    # lack it, and then the last evaluation's time is the best estimate
    elapsed = float(st.get("elapsed_s", metrics[-1]["elapsed_s"] if metrics else 0.0))
    return it, float(st["best_val_loss"]), it if st.get("evaluated") else -1, metrics, elapsed


@contextlib.contextmanager
def _freed_at_the_end(step: Any) -> Iterator[None]:
    """Close a shared-memory step (collective: the weights private again, the shared block freed)
    when the training loop ends, or stops on an error every rank meets at the same step (a NaN
    loss, a parameter that stopped being shared). An error of one rank alone aborts the run."""
    if not isinstance(step, fast.SharedMemoryStep):
        yield
        return
    try:
        yield
    except (TrainingError, distributed.EveryRankError):
        step.close()
        raise
    step.close()


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def generate_text(model: Module, tokenizer: CharTokenizer, prompt: str, n_chars: int,
                  temperature: float = 0.8, top_k: int | None = 200) -> str:
    """``prompt`` followed by ``n_chars`` sampled characters (in eval mode: no dropout)."""
    if n_chars <= 0:
        return prompt
    idx = tokenizer.encode(prompt)[None, :]  # (1, T)
    with evaluating(model):
        out = model.generate(idx, n_chars, temperature=temperature, top_k=top_k)
    return tokenizer.decode(backend.to_numpy(out)[0])
