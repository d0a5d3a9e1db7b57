"""Checkpoints that load without executing anything from the file.

One checkpoint is one ``.npz`` file (NumPy's zip of arrays), read with
``allow_pickle=False``. It holds:
    model/<name>            every entry of the model's state_dict
    optimizer/<i>/<buffer>  AdamW's moment buffers, by parameter index
    __meta__                one JSON document (as uint8 bytes): the model's type and config,
                            the tokenizer, the optimizer's steps and param groups, and
                            whatever else the caller passed (iteration, best val loss,
                            random generator states, the training settings)
Files are written to a temporary name and renamed into place, so a crash mid-write leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy

from minigpt import backend
from minigpt import tokenizers
from minigpt.files import atomic_write_bytes
from minigpt.nn import GPT, BigramLanguageModel, GPTConfig, Module
from minigpt.tokenizers import Tokenizer

FORMAT = "minigpt-checkpoint"
VERSION = 1
BEST, LATEST = "best.npz", "latest.npz"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, foreign, or does not fit its own config."""


def _model_meta(model: Module) -> dict[str, Any]:
    if isinstance(model, GPT):
        return {"type": "gpt", "config": dataclasses.asdict(model.config)}
    if isinstance(model, BigramLanguageModel):
        return {"type": "bigram", "vocab_size": model.vocab_size}
    raise TypeError(f"cannot checkpoint a {type(model).__name__}: only GPT and BigramLanguageModel")


def save(path: str | os.PathLike, model: Module, *, optimizer: Any = None,
         tokenizer: Tokenizer | None = None, **state: Any) -> None:
    """Write a checkpoint of ``model`` (and optimizer, tokenizer, and JSON-able ``state``) atomically."""
    arrays = {f"model/{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": _model_meta(model),
                            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
                            "optimizer": None, "state": state}
    if optimizer is not None:
        sd = optimizer.state_dict()
        meta["optimizer"] = {"param_groups": sd["param_groups"],
                             "steps": {str(i): st["step"] for i, st in sd["state"].items()}}
        for i, st in sd["state"].items():
            for name in ("exp_avg", "exp_avg_sq"):
                arrays[f"optimizer/{i}/{name}"] = backend.to_numpy(st[name])
    arrays["__meta__"] = numpy.frombuffer(json.dumps(meta).encode("utf-8"), dtype=numpy.uint8)
    buffer = io.BytesIO()
    numpy.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


@dataclasses.dataclass
class Checkpoint:
    """What :func:`load` returns."""

    model: Module
    tokenizer: Tokenizer | None
    config: GPTConfig | dict[str, Any]
    optimizer_state: dict[str, Any] | None
    state: dict[str, Any]
    path: Path


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run's out_dir (meaning the best-val checkpoint in it)."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def _read(path: Path, meta_only: bool = False) -> tuple[dict[str, numpy.ndarray], dict[str, Any]]:
    """Every array (none with ``meta_only``) and the JSON metadata, or a CheckpointError saying
    what is wrong. An .npz is a zip: reading one entry leaves the others on disk."""
    if not zipfile.is_zipfile(path):  # numpy.load would take any other file for a pickle
        raise CheckpointError(f"{path} is not a readable checkpoint (not an .npz archive: "
                              "truncated or damaged, or not a checkpoint)")
    try:
        with numpy.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise CheckpointError(f"{path} is not a minigpt checkpoint (no metadata)")
            names = ["__meta__"] if meta_only else npz.files
            arrays = {k: npz[k] for k in names}
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: loading it would run pickle
            raise CheckpointError(f"{path} holds pickled objects, which minigpt refuses to load") from e
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged?): {e}") from e
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged?): {e}") from e
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} has damaged metadata: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minigpt checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint version {meta.get('version')}, this minigpt reads {VERSION}")
    return arrays, meta


def read_model_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The model a checkpoint holds, as saved: ``{"type": "gpt", "config": {...}}`` or the bigram's
    ``{"type": "bigram", "vocab_size": V}``, read from its JSON metadata alone."""
    path = resolve(path)
    spec = _read(path, meta_only=True)[1].get("model")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path} has damaged metadata: no model description")
    return spec


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``**state`` a checkpoint was saved with (iteration, settings, ...), read from its
    JSON metadata alone: no arrays are loaded and no model is built."""
    path = resolve(path)
    state = _read(path, meta_only=True)[1].get("state") or {}
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has damaged metadata: its state is not a mapping")
    return state


def _tokenizer(meta: dict[str, Any], path: Path) -> Tokenizer | None:
    if not meta.get("tokenizer"):
        return None
    try:
        return tokenizers.from_dict(meta["tokenizer"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has a damaged tokenizer: {e}") from e


def read_tokenizer(path: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer a checkpoint holds (None for one saved without), read from its JSON metadata alone."""
    path = resolve(path)
    return _tokenizer(_read(path, meta_only=True)[1], path)


def _build_model(meta: dict[str, Any], path: Path) -> tuple[Module, Any]:
    spec = meta.get("model") or {}
    try:
        if spec.get("type") == "gpt":
            config = GPTConfig(**spec["config"])
            return GPT(config), config
        if spec.get("type") == "bigram":
            return BigramLanguageModel(spec["vocab_size"]), {"vocab_size": spec["vocab_size"]}
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from e
    raise CheckpointError(f"{path}: unknown model type {spec.get('type')!r}")


def load(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint file (or a run's out_dir: its best-val checkpoint).

    Returns a :class:`Checkpoint` whose ``.model`` is on ``device``, in eval mode.
    Raises ``CheckpointError`` for a missing, damaged or foreign file, or one whose arrays
    do not fit its own config. Nothing in the file is executed.
    """
    path = resolve(path)
    try:
        return _load(path, device)
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # well-formed zip, malformed content
        raise CheckpointError(f"{path} is damaged: missing or malformed entry ({type(e).__name__}: {e})") from e


def _load(path: Path, device: str) -> Checkpoint:
    arrays, meta = _read(path)
    model, config = _build_model(meta, path)
    weights = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match its own config: {e}") from e
    model.to(device).eval()

    optimizer_state = None
    if meta.get("optimizer") is not None:
        opt = meta["optimizer"]
        optimizer_state = {"param_groups": opt["param_groups"], "state": {
            int(i): {"step": step, "exp_avg": arrays[f"optimizer/{i}/exp_avg"],
                     "exp_avg_sq": arrays[f"optimizer/{i}/exp_avg_sq"]}
            for i, step in opt["steps"].items()}}
    tokenizer = _tokenizer(meta, path)
    outputs = model.config.vocab_size if isinstance(model, GPT) else model.vocab_size
    if tokenizer is not None and tokenizer.vocab_size > outputs:
        raise CheckpointError(f"{path} has a tokenizer of {tokenizer.vocab_size} tokens for a model of {outputs} "
                              "outputs: damaged, or pieced together from two runs")
    return Checkpoint(model, tokenizer, config, optimizer_state, meta.get("state") or {}, path)
