"""``python -m minigpt``: the ``minigpt`` command (minigpt/commands/)."""

from minigpt.commands import entry

entry()
