"""``minigpt train``, under the name nanoGPT's users know: the same flags, the same code.

    python examples/train_shakespeare.py --preset nanogpt     # = minigpt train --preset nanogpt

See minigpt/commands/train.py, or ``minigpt train --help``.
"""

import sys

from minigpt import cli, commands

if __name__ == "__main__":
    sys.exit(cli.run(lambda: commands.main(["train", *sys.argv[1:]])))
