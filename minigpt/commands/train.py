"""Train a character-level GPT (or the bigram model) on Tiny Shakespeare or your own text.

    minigpt train                          # the CPU recipe: 1 layer, 128 wide, 2800 steps of 24 x 64
    minigpt train --preset nanogpt         # nanoGPT's CPU recipe: 4 layers, 2000 steps of 12 x 64
    minigpt train --device cuda            # the GPU preset: 6 layers, 384 wide, 5000 steps of 64 x 256
    minigpt train --model bigram           # the lecture's first model
    minigpt train --tokenizer bpe          # subword tokens: a byte-level BPE trained on the text
    minigpt train --init_from gpt2 --data my_text.txt   # fine-tune GPT-2 (124M) on your text
    minigpt train --data my_text.txt       # your own text (a file or an http(s) URL)
    minigpt train --resume                 # continue the run in --out_dir
    mpiexec -n 2 minigpt train             # data parallel: 2 processes share each batch

Every setting is a flag with nanoGPT's name; a flag given beside a preset overrides it. The run
writes best.npz, latest.npz, metrics.csv and loss.png into --out_dir. Ctrl-C saves a checkpoint
to --resume from and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from typing import Any

from minigpt import cli, distributed
from minigpt.train import train
from minigpt.training.config import (BIGRAM_PRESET, GPU_PRESET, NANOGPT_CPU_PRESET, TrainConfig, ignored_settings,
                                     resume_config)
from minigpt.training.metrics import warn_on_stderr

# one line per setting; the defaults of each preset are added from the presets themselves
FLAG_HELP = {
    "device": "where to train: cpu; cuda (a GPU through CuPy, with its own preset); auto (cuda where a GPU runs, "
              "else cpu)",
    "data": "text file or http(s) URL to train on (default: $MINIGPT_DATA, else the Tiny Shakespeare shipped "
            "with minigpt; a URL is downloaded once into the cache)",
    "out_dir": "folder for the checkpoints (best.npz, latest.npz), metrics.csv and loss.png",
    "resume": "continue the run in --out_dir from its latest.npz, with its settings (flags given again, such "
              "as a larger --max_iters, override them)",
    "model": "gpt (GPT-2's architecture) or bigram (the lecture's first model: a table of next-character logits)",
    "init_from": "scratch (a new model), or fine-tune pretrained weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl (the "
                 "Hugging Face Hub's, downloaded once into the cache) or a folder holding config.json + "
                 "model.safetensors; the shape, vocabulary and tokenizer are the weights', and the fine-tuning "
                 "recipe (4 x 64 tokens, 200 steps, lr 3e-5 constant) the defaults",
    "tokenizer": "char (one token per character, the lecture's), bpe (byte-level BPE trained on the training "
                 "split, GPT-2's algorithm) or gpt2 (GPT-2's own, 50257 tokens: downloaded once from the Hugging Face "
                 "Hub, or read from the cache)",
    "vocab_size": "tokens in the BPE (--tokenizer bpe; default: 512)",
    "n_layer": "transformer blocks",
    "n_head": "attention heads per block (must divide --n_embd)",
    "n_embd": "width of the residual stream, C",
    "block_size": "context length in tokens (characters for --tokenizer char), T",
    "batch_size": "sequences per step, B (under mpiexec the global batch, split over the ranks)",
    "dropout": "dropout probability on the embeddings, attention weights and residual branches",
    "bias": "biases in the linear and layer-norm layers (--no-bias: none, as nanoGPT's train.py)",
    "max_iters": "training steps",
    "learning_rate": "peak learning rate, reached after --warmup_iters; --min_lr follows it (a tenth) unless given",
    "min_lr": "the learning rate the cosine schedule decays to",
    "warmup_iters": "steps of linear warmup from 0 to --learning_rate",
    "lr_decay_iters": "the step at which the cosine decay reaches --min_lr",
    "weight_decay": "AdamW's decoupled weight decay, applied to the 2-D weights only",
    "beta1": "AdamW's decay of the gradient's running mean",
    "beta2": "AdamW's decay of the squared gradient's running mean",
    "grad_clip": "clip the gradients' global norm to this (0: no clipping)",
    "eval_interval": "steps between evaluations (each writes the checkpoints and a row of metrics.csv)",
    "eval_iters": "batches averaged for each evaluation's train and val loss",
    "log_interval": "steps between progress lines when the output is not a terminal",
    "seed": "seed of every random choice (init, batches, dropout, the sample): a CPU run repeats exactly",
    "dtype": "floating-point type of the weights and activations",
    "sample_chars": "characters of text generated at the end (0: none)",
    "reference": "train with the plain reference ops (minigpt.functional, minigpt.optim) instead of their fast "
                 "twins: the same math, the code you read, for stepping through",
}
CHOICES = {"device": ["cpu", "cuda", "auto"], "model": ["gpt", "bigram"], "tokenizer": ["char", "bpe", "gpt2"],
           "dtype": ["float32", "float64"]}


def defaults_text(name: str, default: Any) -> str:
    """"default: 1; --preset nanogpt: 4; GPU: 6": the value of each preset where they differ."""
    parts = [f"default: {default}"]
    for label, preset in (("--preset nanogpt", NANOGPT_CPU_PRESET), ("GPU", GPU_PRESET),
                          ("bigram", BIGRAM_PRESET)):
        if name in preset and preset[name] != default:
            parts.append(f"{label}: {preset[name]}")
    return "; ".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; a flag left out stays None, so that the preset decides."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the defaults are written out below
    p.add_argument("--preset", choices=["nanogpt"], default=None,
                   help="nanogpt: nanoGPT's CPU recipe exactly (4 layers, 128 wide, block 64, batch 12, 2000 "
                        "iterations, lr 1e-3 -> 1e-4); other flags still override it (default: none, the CPU "
                        "recipe, or the GPU preset with --device cuda)")
    for f in dataclasses.fields(TrainConfig):
        flag, text = f"--{f.name}", FLAG_HELP[f.name]
        if f.name == "resume":
            p.add_argument(flag, action="store_true", help=text + " (default: a new run)")
        elif f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{text} ({defaults_text(f.name, f.default)})")
        else:
            kind = {"int": int, "float": float}.get(str(f.type).removesuffix(" | None"), str)
            shown = "" if f.default is None else f" ({defaults_text(f.name, f.default)})"
            p.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name), help=text + shown)


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The run's settings: the preset (or, with --resume, the run's own), then the flags given."""
    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    resume = given.pop("resume")
    if resume:
        if args.preset:
            raise ValueError("--resume continues a run with the settings it was started with: --preset does not apply")
        return resume_config(given.pop("out_dir") or "out", **given)
    return TrainConfig.preset(preset=args.preset, **given)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    cfg.validate()  # a bad flag is an error before anything is said about the others
    ignored = ignored_settings(cfg.model, {k: getattr(args, k, None) for k in TrainConfig.__dataclass_fields__})
    if ignored and distributed.launched_rank() == 0:
        warn_on_stderr(f"{', '.join('--' + k for k in ignored)}: the {cfg.model} model has no use for "
                       f"{'this setting' if len(ignored) == 1 else 'these settings'} (ignored)")
    stop: dict[str, Any] = {"signal": None, "set_up": False}

    def request_stop(signum: int, frame: Any) -> None:  # Ctrl-C / SIGTERM: finish the step, save, exit 130
        if stop["signal"] is not None or not stop["set_up"]:
            raise KeyboardInterrupt  # a second one, or one during set-up (nothing to save yet): stop at once
        stop["signal"] = signal.Signals(signum).name
        if distributed.launched_rank() == 0:  # under mpiexec every rank gets the signal; one says so
            print(f"\n{stop['signal']}: stopping after this step, with a checkpoint to --resume from "
                  f"(again to stop at once)", file=sys.stderr)

    before = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = train(cfg, should_stop=lambda: stop["signal"] is not None,
                       on_set_up=lambda: stop.update(set_up=True))
    finally:  # called from Python (a test, a notebook), the caller's handlers come back
        for s, handler in before.items():
            signal.signal(s, handler)
    return cli.EXIT_INTERRUPTED if result.interrupted else 0
