"""The settings of a training run: nanoGPT's recipes and ours, ``TrainConfig``, and resuming them.

A run's settings are one dataclass, ``TrainConfig``, whose field names are nanoGPT's and the
command line's flags. Its defaults are the command's (the CPU recipe); ``TrainConfig.preset``
gives the others: nanoGPT's CPU recipe, the GPU preset, the bigram model's.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from minigpt import backend, checkpoint
from minigpt.nn.config import check_settings

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
# Fine-tuning pretrained weights (--init_from gpt2 or a folder) on a CPU: 200 steps of 4 x 64 tokens,
# sized so that GPT-2 124M's whole run on Tiny Shakespeare fits in 10 minutes on 2 cores (measured in
# docs/performance.md; the recipe in docs/gpt2.md). A constant small rate (nanoGPT's finetune_shakespeare: 3e-5, no decay): the weights
# already know English, and a large step would undo it. block_size is capped by the weights' context.
FINETUNE_PRESET = dict(block_size=64, batch_size=4, max_iters=200, lr_decay_iters=200, learning_rate=3e-5,
                       min_lr=3e-5, warmup_iters=0, weight_decay=0.1, dropout=0.0, eval_interval=100,
                       eval_iters=10, grad_clip=1.0)
# what pretrained weights decide, so that --init_from refuses them as flags
PRETRAINED_DECIDES = ("model", "n_layer", "n_head", "n_embd", "bias", "vocab_size")
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
    init_from: str = "scratch"  # scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a Hugging Face GPT-2 folder
    tokenizer: str = "char"  # char | bpe | gpt2
    vocab_size: int | None = None  # the BPE's vocabulary (--tokenizer bpe); None: 512
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
        """The CPU recipe (CPU_PRESET, the defaults), the GPU preset (device "cuda", or "auto" where
        it resolves to CUDA), or with ``preset="nanogpt"`` nanoGPT's CPU recipe exactly; then the
        bigram preset's values for the bigram model; then the ``overrides`` that are not None."""
        device, model = device or "cpu", model or "gpt"
        if preset not in (None, "nanogpt"):
            raise ValueError(f"--preset must be nanogpt, got {preset!r}")
        if overrides.get("init_from") not in (None, "scratch"):
            if preset is not None:
                raise ValueError("--init_from fine-tunes with its own recipe: --preset does not apply")
            return cls.pretrained(device=device, model=model if model != "gpt" else None, **overrides)
        runs_on = resolve_device(device) if device == "auto" else device
        values: dict[str, Any] = dict(NANOGPT_CPU_PRESET if preset == "nanogpt" else
                                      GPU_PRESET if runs_on == "cuda" else CPU_PRESET)
        if model == "bigram":
            values.update(BIGRAM_PRESET)
        values.update(device=device, model=model)
        given = {k: v for k, v in overrides.items() if v is not None}
        floor_follows_rate(given, fine_tuning=False)
        values.update(given)
        return cls(**values)

    @classmethod
    def pretrained(cls, init_from: str, device: str = "cpu", **overrides: Any) -> TrainConfig:
        """The fine-tuning recipe (FINETUNE_PRESET) for the weights ``init_from`` (a GPT-2 name or a
        Hugging Face GPT-2 folder): their shape, vocabulary and tokenizer, a block_size up to their
        context, then the ``overrides`` that are not None. A flag that would change what the weights
        decide (the shape, the model, another tokenizer) is a ValueError."""
        from minigpt import pretrained  # noqa: PLC0415 - reads the weights' config.json (downloads for a name)

        given = {k: v for k, v in overrides.items() if v is not None}
        decided = [k for k in PRETRAINED_DECIDES if k in given]
        if decided:
            raise ValueError(f"--init_from {init_from} takes the model's shape and vocabulary from the weights: "
                             f"{', '.join('--' + k for k in decided)} cannot be given with it")
        weights = pretrained.read_config(init_from)
        kind = pretrained.tokenizer_kind(init_from)
        if given.get("tokenizer", kind) != kind:
            raise ValueError(f"--tokenizer {given['tokenizer']}: the weights of {init_from} were trained with the "
                             f"{kind} tokenizer, which they keep")
        if given.get("block_size", 0) > weights.block_size:
            raise ValueError(f"--block_size {given['block_size']} is larger than the weights' context "
                             f"({weights.block_size}): the position table has no rows beyond it")
        floor_follows_rate(given, fine_tuning=True)
        values: dict[str, Any] = dict(CPU_PRESET, **FINETUNE_PRESET)
        values.update(n_layer=weights.n_layer, n_head=weights.n_head, n_embd=weights.n_embd, bias=weights.bias,
                      block_size=min(FINETUNE_PRESET["block_size"], weights.block_size), tokenizer=kind,
                      device=device, init_from=str(init_from))
        values.update(given)
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range or inconsistent."""
        shape = {k: v for k, v in dataclasses.asdict(self).items() if k != "vocab_size"}  # the BPE's, checked below
        check_settings(shape, prefix="--")  # the model's settings, as GPTConfig checks them
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
        for name in ("weight_decay", "grad_clip"):  # `not >= 0` also refuses NaN (dropout: check_settings)
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be a non-negative number, got {getattr(self, name)}")
        if int(self.seed) < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.tokenizer not in ("char", "bpe", "gpt2"):
            raise ValueError(f"--tokenizer must be char, bpe or gpt2, got {self.tokenizer!r}")
        if self.init_from != "scratch" and self.model != "gpt":
            raise ValueError("--init_from loads GPT weights: --model bigram cannot be given with it")
        if self.vocab_size is not None:
            if self.tokenizer != "bpe":
                raise ValueError(f"--vocab_size sets the size of a BPE trained on the text (--tokenizer bpe); "
                                 f"the {self.tokenizer} tokenizer's vocabulary is given by "
                                 f"{'the text' if self.tokenizer == 'char' else 'its files'}")
            if int(self.vocab_size) < 257:
                raise ValueError(f"--vocab_size must be at least 257 (the 256 bytes and <|endoftext|>), "
                                 f"got {self.vocab_size}")
        if self.model not in ("gpt", "bigram"):
            raise ValueError(f"--model must be gpt or bigram, got {self.model!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")


MODEL_SHAPE_FLAGS = ("model", "init_from", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "bias", "dtype")


def ignored_settings(model: str | None, given: dict[str, Any]) -> list[str]:
    """The settings in ``given`` (those set, not None) that ``model`` has no use for, such as
    ``n_layer`` for the bigram model: the run goes on without them, and the command says so."""
    if (model or "gpt") != "bigram":
        return []
    return [k for k in BIGRAM_IGNORES if given.get(k) is not None]


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


def saved_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields a checkpoint's state recorded (those this version knows)."""
    return {k: v for k, v in state.get("train_config", {}).items() if k in TrainConfig.__dataclass_fields__}


def floor_follows_rate(given: dict[str, Any], fine_tuning: bool) -> None:
    """A --learning_rate given without --min_lr brings its floor along, in ``given``: a tenth of it
    from scratch (the cosine decays to it), the rate itself when fine-tuning (the recipe's rate is
    constant)."""
    if "learning_rate" in given and "min_lr" not in given:
        given["min_lr"] = given["learning_rate"] / (1 if fine_tuning else 10)


def resume_config(out_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The settings a run in ``out_dir`` was started with (from its latest.npz), with
    ``overrides`` (the flags given again, such as a larger --max_iters) on top."""
    state = checkpoint.read_state(Path(out_dir) / checkpoint.LATEST)  # the weights are read later, once
    saved = saved_settings(state)
    if not saved:
        raise checkpoint.CheckpointError(f"{Path(out_dir) / checkpoint.LATEST} holds no training settings to resume")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("block_size") is not None and given["block_size"] > saved.get("block_size", 0):
        raise ValueError(f"--block_size {given['block_size']} is larger than the checkpoint's "
                         f"{saved.get('block_size')}: a model cannot attend further than it was built for")
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # of fields an older run lacks
    changed = [k for k in MODEL_SHAPE_FLAGS if k in given and given[k] != saved.get(k, default[k])]
    if changed:
        raise ValueError("--resume continues the same model; these flags differ from the checkpoint's: " +
                         ", ".join(f"--{k} {given[k]} (checkpoint: {saved.get(k, default[k])})" for k in changed))
    floor_follows_rate(given, fine_tuning=saved.get("init_from", "scratch") != "scratch")  # as a fresh start
    if given.get("data") is None and saved.get("data") is None and state.get("data_source"):
        given["data"] = state["data_source"]  # the text the run was started on ($MINIGPT_DATA then)
    saved.update(given)
    saved.update(out_dir=str(out_dir), resume=True)
    return TrainConfig(**saved)
