"""The ``minigpt`` command: one entry point, a subcommand per job.

    minigpt train            train a GPT (or the bigram model) on Tiny Shakespeare or your text
    minigpt sample           generate text from a trained run
    minigpt attention-map    draw where each attention head looks
    minigpt exercises        copy the blank exercises out, to write backward passes yourself
    minigpt check            check an exercise, or a finished run against its expected curve

``python -m minigpt`` is the same command. Each subcommand is a module here with
``add_arguments(parser)`` and ``run(args) -> exit status``; this one parses the command line
and hands over. Errors follow minigpt/cli.py: bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

import minigpt
from minigpt import cli
from minigpt.commands import attention_map, check, exercises, sample, train

COMMANDS: dict[str, ModuleType] = {"train": train, "sample": sample, "attention-map": attention_map,
                                   "exercises": exercises, "check": check}
DESCRIPTION = ("minigpt: a from-scratch deep-learning engine that trains a GPT.\n\n"
               "    minigpt train && minigpt sample --start \"ROMEO:\"")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written (their examples keep their lines), and every flag's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="minigpt", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="minigpt COMMAND --help lists a command's flags and their defaults.")
    parser.add_argument("--version", action="version", version=f"minigpt {minigpt.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module in COMMANDS.items():
        summary = module.__doc__.split("\n")[0]
        sub = commands.add_parser(name, help=summary.rstrip("."), description=module.__doc__,
                                  formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the subcommand; its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(f"a command is needed: {', '.join(COMMANDS)}")
    return args.handler(args)


def entry() -> None:
    """The console script ``minigpt`` (and ``python -m minigpt``): errors become one line and exit 2."""
    sys.exit(cli.run(main))
