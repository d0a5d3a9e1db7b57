"""The GPT's settings: nanoGPT's GPTConfig (its field names and defaults), and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GPTConfig:
    """nanoGPT's model settings (its field names and defaults)."""

    block_size: int = 256
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        check_settings(vars(self))


def check_settings(settings: dict[str, Any], prefix: str = "") -> None:
    """Raise ValueError naming the first of the model's settings (GPTConfig's fields, those of
    them present in ``settings``) that is out of range; names are written ``prefix + name``
    (the training command line's flags pass "--")."""
    for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
        if name in settings and int(settings[name]) < 1:
            raise ValueError(f"{prefix}{name} must be a positive integer, got {settings[name]}")
    if settings["n_embd"] % settings["n_head"]:
        raise ValueError(f"{prefix}n_embd ({settings['n_embd']}) must be divisible by "
                         f"{prefix}n_head ({settings['n_head']})")
    if not 0.0 <= settings["dropout"] < 1.0:
        raise ValueError(f"{prefix}dropout must lie in [0, 1), got {settings['dropout']}")
