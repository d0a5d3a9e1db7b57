"""Train a character-level GPT (or the bigram model) on Tiny Shakespeare, then write some.

    python examples/train_shakespeare.py                  # CPU preset: 1 layer, 128 wide, 2800 iters of 24 x 64
    python examples/train_shakespeare.py --preset nanogpt # nanoGPT's CPU recipe: 4 layers, 2000 iters of 12 x 64
    python examples/train_shakespeare.py --device cuda    # GPU preset: 6 layers, 384 wide, 5000 iters
    python examples/train_shakespeare.py --model bigram   # the notebook's first model
    python examples/train_shakespeare.py --resume         # continue the run in --out_dir
    mpiexec -n 2 python examples/train_shakespeare.py     # data parallel: 2 processes share each batch

Every setting is a flag with nanoGPT's name (see minigpt/train.py: TrainConfig). Bad input
ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys

from minigpt import cli, distributed
from minigpt.train import CPU_PRESET, TrainConfig, resume_config, train

FLAG_HELP = {
    "device": "cpu, cuda or auto (default cpu; cuda switches to the GPU preset, unless --preset nanogpt)",
    "data": "text file or http(s) URL to train on (default: $MINIGPT_DATA, else the Tiny Shakespeare "
            "shipped inside minigpt; a URL is downloaded once into the cache)",
    "out_dir": "where checkpoints and metrics.csv go (default out)",
    "model": "gpt or bigram",
    "learning_rate": "peak learning rate (default 0.006, CPU preset); --min_lr then defaults to a tenth of it",
    "reference": "train with the plain reference ops of minigpt.functional / minigpt.optim instead of "
                 "their fast twins (the same math; the code you read, for stepping through)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """One flag per TrainConfig field; flags left out stay None so the preset decides."""
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["nanogpt"], default=None,
                   help="nanogpt: nanoGPT's CPU recipe exactly (4 layers, 128 wide, block 64, batch 12, 2000 "
                        "iterations, lr 1e-3 -> 1e-4); other flags still override it")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "resume":
            p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from latest.npz")
        elif f.type in (bool, "bool"):
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None,
                           help=FLAG_HELP.get(f.name))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(f"--{f.name}", type=kind, default=None,
                           help=FLAG_HELP.get(f.name, f"default {CPU_PRESET.get(f.name, f.default)} (CPU preset)"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    preset = args.pop("preset")
    if args.pop("resume"):
        if preset:
            raise ValueError("--resume continues a run with the settings it was started with: --preset does not apply")
        cfg = resume_config(args.pop("out_dir") or "out", **args)
    else:
        cfg = TrainConfig.preset(preset=preset, **args)
    stop = {"signal": None}

    def request_stop(signum, frame):  # Ctrl-C / SIGTERM: finish the step, save latest.npz, exit
        if stop["signal"] is not None:
            raise KeyboardInterrupt  # a second one: stop at once (checkpoints are written atomically)
        stop["signal"] = signal.Signals(signum).name
        if distributed.launched_rank() == 0:  # under mpiexec every rank gets the signal; one says so
            print(f"\n{stop['signal']}: saving a checkpoint after this step (again to stop at once)", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    result = train(cfg, should_stop=lambda: stop["signal"] is not None)
    return cli.EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
