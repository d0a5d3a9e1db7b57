"""Copy the blank exercise files out, to edit and check (minigpt check NAME).

    minigpt exercises              into ./exercises
    minigpt exercises my_work      into ./my_work

A file already there is kept as it is: an edited exercise is never overwritten.
"""

from __future__ import annotations

import argparse

from minigpt.exercises import copy_blanks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default="exercises", help="where to put the exercise files")


def run(args: argparse.Namespace) -> int:
    for path, what in copy_blanks(args.dir):
        print(f"{what:6s} {path}")
    print(f"edit one, then: minigpt check NAME --dir {args.dir}   (minigpt check --list names them)")
    return 0
