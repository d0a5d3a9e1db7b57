"""Exercises that check themselves: write a backward pass, and be told precisely what is wrong.

    minigpt exercises            copy the blank exercise files into ./exercises (never over an edited one)
    minigpt check --list         the track, in the lecture's order
    minigpt check linear         check ./exercises/linear.py

Each exercise is a file the learner edits (minigpt/exercises/blanks/, shipped in the package): its
docstring says what to compute, with shapes; the body to write is marked. ``check`` runs it
against minigpt's reference op and the project's gradcheck (checking.py, track.py) and names the
first thing wrong; when everything passes it says where to compare with the reference code.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from minigpt.exercises.checking import BadInput, Mistake, load
from minigpt.exercises.track import TRACK, Exercise

BLANKS = Path(__file__).resolve().parent / "blanks"

__all__ = ["TRACK", "Exercise", "Result", "check", "copy_blanks", "BadInput", "BLANKS"]


@dataclass
class Result:
    name: str
    passed: bool
    message: str


def copy_blanks(dest: str | Path) -> list[tuple[str, str]]:
    """Copy every blank exercise into ``dest``; (file, "copied" or "kept") for each: a file already
    there is kept as it is, edited or not, so that no learner's work is ever overwritten."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for name in TRACK:
        target = dest / f"{name}.py"
        if target.exists():
            done.append((str(target), "kept"))
        else:
            shutil.copyfile(BLANKS / f"{name}.py", target)
            done.append((str(target), "copied"))
    return done


def check(name: str, directory: str | Path = "exercises") -> Result:
    """Check ``directory/name.py``: passed, or the first mistake in words. BadInput when there is no
    such exercise or file, or the file does not import."""
    if name not in TRACK:
        raise BadInput(f"no exercise {name!r}: minigpt check --list names them ({', '.join(TRACK)})")
    exercise = TRACK[name]
    module = load(Path(directory) / f"{name}.py")
    try:
        exercise.check(module)
    except Mistake as e:
        return Result(name, False, str(e))
    return Result(name, True, f"all checks pass. Compare with the reference: {exercise.reference}")
