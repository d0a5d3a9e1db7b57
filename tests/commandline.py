"""The `minigpt` command run as a user runs it: ``python -m minigpt ARGS`` in a process of its own,
on the packaged Tiny Shakespeare unless a test says otherwise (MINIGPT_DATA is left out)."""

import os
import subprocess
import sys


def run_minigpt(*args, env=None, timeout=300):
    full = dict(os.environ)
    full.pop("MINIGPT_DATA", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "minigpt", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=timeout)
