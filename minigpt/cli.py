"""What the command lines share: bad input ends with ONE clear line on stderr and exit status 2.

The library raises exceptions with useful messages (ValueError for bad settings, DataError,
CheckpointError, DeviceError, TrainingError, OSError...); only this layer turns them into
an exit status, so the library stays usable from Python. A bug (any other exception) still
shows its traceback: that one is for us to fix.

Under ``mpiexec -n N`` every rank runs this code. An error that every rank meets alike (a bad
flag, raised before the ranks talk to each other, or one marked ``every_rank``) is reported once,
by rank 0, and every rank exits 2. An error of one rank alone, once the ranks have started
talking, is reported by that rank, which then aborts the run: the other ranks would otherwise
wait for it forever in their next all-reduce.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from minigpt import distributed

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (not usage plus message) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n" if distributed.launched_rank() == 0 else None)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run(main: Callable[[], int]) -> int:
    """Run a command's main, mapping the library's errors to one line on stderr and exit 2."""
    try:
        return main()
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED, every_rank=False)
    except (ValueError, RuntimeError, OSError) as e:  # DataError, CheckpointError, DeviceError... subclass these
        return fail(f"error: {one_line(e)}", EXIT_BAD_INPUT, every_rank=getattr(e, "every_rank", False))


def fail(message: str, status: int, every_rank: bool) -> int:
    """Print ``message`` on stderr and return ``status``; in a run of N ranks, see the module's docstring."""
    world = distributed.started_world()
    if world is None or every_rank:
        if distributed.launched_rank() == 0:
            print(message, file=sys.stderr)
        return status
    print(f"{message} (on rank {world.rank} of {world.size}: stopping every rank)", file=sys.stderr)
    world.abort(status)
