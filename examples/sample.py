"""``minigpt sample``, under the name nanoGPT's users know: the same flags, the same code.

    python examples/sample.py --out_dir out --start "ROMEO:"   # = minigpt sample --out_dir out ...

See minigpt/commands/sample.py, or ``minigpt sample --help``.
"""

import sys

from minigpt import cli, commands

if __name__ == "__main__":
    sys.exit(cli.run(lambda: commands.main(["sample", *sys.argv[1:]])))
