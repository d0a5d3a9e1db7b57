"""What the command lines share: bad input ends with ONE clear line on stderr and exit status 2.

The library raises exceptions with useful messages (ValueError for bad settings, DataError,
CheckpointError, DeviceError, TrainingError, OSError...); only this layer turns them into
an exit status, so the library stays usable from Python. A bug (any other exception) still
shows its traceback: that one is for us to fix.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (not usage plus message) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see --help)\n")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run(main: Callable[[], int]) -> int:
    """Run a command's main, mapping the library's errors to one line on stderr and exit 2."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, RuntimeError, OSError) as e:  # DataError, CheckpointError, DeviceError... subclass these
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
