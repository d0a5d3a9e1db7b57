"""GPT-2's weights in minigpt: Hugging Face's GPT-2 folders, read and written.

minigpt's GPT is GPT-2's architecture with nanoGPT's names, so a Hugging Face GPT-2 folder
(``config.json`` + ``model.safetensors``) maps onto it tensor by tensor:

    Hugging Face GPT2LMHeadModel                     minigpt GPT (nanoGPT's names)
    [transformer.]wte.weight          (V, C)         transformer.wte.weight, tied to lm_head.weight
    [transformer.]wpe.weight          (n_positions, C)  transformer.wpe.weight (block_size rows)
    [transformer.]h.{i}.ln_1.weight/.bias            transformer.h.{i}.ln_1.weight/.bias (and ln_2, ln_f)
    [transformer.]h.{i}.attn.c_attn.weight (C, 3C)   transformer.h.{i}.attn.c_attn.weight (3C, C)  <- transposed
    ... attn.c_proj, mlp.c_fc, mlp.c_proj: the same  (GPT-2's "Conv1D" layers store (in, out);
                                                      a Linear stores (out, in))
    [transformer.]h.{i}.attn.bias, .masked_bias      the causal mask as a buffer: not a parameter, skipped
    lm_head.weight                                   tied to wte (Hugging Face's own files leave it out)

The Hub's original ``gpt2`` file names its tensors without the ``transformer.`` prefix that
transformers' ``save_pretrained`` writes today: both are read. GPT-2's GELU is the tanh form and
its layer norms use eps 1e-5, as minigpt's. Only safetensors files are read: a pickled
``pytorch_model.bin`` can run code when loaded, so it is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from minigpt import backend, hub, safetensors
from minigpt.tokenizers import BPETokenizer, GPT2Tokenizer, Tokenizer, from_dict, gpt2


@dataclass(frozen=True)
class Pretrained:
    repo: str  # on the Hugging Face Hub
    sha256: str | None  # of model.safetensors, pinned where known
    n_layer: int
    n_head: int
    n_embd: int


MODELS = {
    "gpt2": Pretrained("openai-community/gpt2", "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
                       12, 12, 768),  # 124M
    "gpt2-medium": Pretrained("openai-community/gpt2-medium", None, 24, 16, 1024),  # 350M
    "gpt2-large": Pretrained("openai-community/gpt2-large", None, 36, 20, 1280),  # 774M
    "gpt2-xl": Pretrained("openai-community/gpt2-xl", None, 48, 25, 1600),  # 1558M
}
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "minigpt_tokenizer.json"


@dataclass(frozen=True)
class Shape:
    """A GPT-2's shape as its config.json gives it: GPTConfig's fields, dropout aside."""

    block_size: int
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    bias: bool = True

    @classmethod
    def of(cls, config: Any) -> Shape:
        """The shape of a GPTConfig (or anything with its fields)."""
        return cls(config.block_size, config.vocab_size, config.n_layer, config.n_head, config.n_embd, config.bias)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFERS = (".attn.bias", ".attn.masked_bias")  # the causal masks older files carry


class PretrainedError(ValueError):
    """A folder or file that is not a GPT-2 model minigpt can load; the message says why."""


# ----------------------------------------------------------------------------- config.json
def config_from_hf(d: dict[str, Any], where: str) -> Shape:
    """The shape a Hugging Face GPT-2 ``config.json`` gives; settings minigpt's GPT does not have
    (another activation, layer-norm eps, MLP width) are refused, not silently ignored."""
    if not isinstance(d, dict):
        raise PretrainedError(f"{where} is not a JSON object of settings")
    if d.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"{where} describes a {d.get('model_type')!r} model, not GPT-2")
    rules = [("activation_function", d.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
              "GPT-2's GELU, the tanh form (gelu_new)"),
             ("layer_norm_epsilon", abs(float(d.get("layer_norm_epsilon", 1e-5)) - 1e-5) < 1e-12, "1e-5"),
             ("n_inner", d.get("n_inner") in (None, 4 * int(d.get("n_embd", 768))), "4 × n_embd (or null)"),
             ("scale_attn_by_inverse_layer_idx", not d.get("scale_attn_by_inverse_layer_idx", False), "false"),
             ("scale_attn_weights", d.get("scale_attn_weights", True), "true"),
             ("tie_word_embeddings", d.get("tie_word_embeddings", True), "true (lm_head is wte)")]
    for key, ok, wanted in rules:
        if not ok:
            raise PretrainedError(f"{where}: {key} is {d.get(key)!r}; minigpt's GPT has {wanted}")
    try:
        shape = Shape(block_size=int(d.get("n_positions", d.get("n_ctx", 1024))), vocab_size=int(d["vocab_size"]),
                      n_layer=int(d["n_layer"]), n_head=int(d["n_head"]), n_embd=int(d["n_embd"]), bias=True)
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(f"{where} lacks or garbles a GPT-2 setting: {e}") from e
    if min(shape.block_size, shape.vocab_size, shape.n_layer, shape.n_head, shape.n_embd) < 1 or shape.n_embd % shape.n_head:
        raise PretrainedError(f"{where}: {shape} is not a shape a GPT can have")
    return shape


def config_to_hf(config: Any, tokenizer: Tokenizer | None = None, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` transformers' GPT2LMHeadModel needs for ``config`` (weights of ``dtype``)."""
    eot = tokenizer.special_tokens.get(gpt2.ENDOFTEXT) if isinstance(tokenizer, BPETokenizer) else None
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
            "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot,  # null without <|endoftext|>
            "dtype": dtype, "torch_dtype": dtype}  # transformers 5 reads dtype, earlier versions torch_dtype


# ----------------------------------------------------------------------------- the tensors
def expected_shapes(c: Shape | Any) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of minigpt's GPT of shape ``c`` (lm_head.weight, tied, left out)."""
    C = c.n_embd
    shapes = {"transformer.wte.weight": (c.vocab_size, C), "transformer.wpe.weight": (c.block_size, C)}
    layer = {"ln_1.weight": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_proj.weight": (C, C),
             "ln_2.weight": (C,), "mlp.c_fc.weight": (4 * C, C), "mlp.c_proj.weight": (C, 4 * C)}
    if c.bias:
        layer |= {"ln_1.bias": (C,), "attn.c_attn.bias": (3 * C,), "attn.c_proj.bias": (C,), "ln_2.bias": (C,),
                  "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.bias": (C,)}
    for i in range(c.n_layer):
        shapes |= {f"transformer.h.{i}.{k}": v for k, v in layer.items()}
    shapes["transformer.ln_f.weight"] = (C,)
    if c.bias:
        shapes["transformer.ln_f.bias"] = (C,)
    return shapes


def minigpt_name(name: str) -> str | None:
    """A Hugging Face GPT-2 tensor's name in minigpt (None for the causal-mask buffers)."""
    if name.endswith(BUFFERS):
        return None
    return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


def check_layout(shapes: dict[str, tuple[int, ...]], config: Shape, where: str) -> None:
    """Raise PretrainedError unless ``shapes`` (minigpt's names and orientation) are exactly those
    of ``config``'s GPT: every tensor there, none extra, each of the right shape."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{k} {tuple(shapes[k])} (expected {expected[k]})" for k in expected
             if k in shapes and tuple(shapes[k]) != expected[k]]
    problems = [f"{what} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                for what, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    if problems:
        raise PretrainedError(f"{where} does not fit its config.json: " + "; ".join(problems))


def state_from_hf(tensors: dict[str, numpy.ndarray], config: Shape, where: str) -> dict[str, numpy.ndarray]:
    """Hugging Face GPT-2 tensors -> minigpt's state_dict (nanoGPT's names, Linear weights (out, in))."""
    out: dict[str, numpy.ndarray] = {}
    for name, array in tensors.items():
        key = minigpt_name(name)
        if key is not None:
            out[key] = numpy.ascontiguousarray(array.T if key.endswith(CONV1D) else array)
    head = out.pop("lm_head.weight", None)
    if head is not None and "transformer.wte.weight" in out and not numpy.array_equal(head, out["transformer.wte.weight"]):
        raise PretrainedError(f"{where}: lm_head.weight differs from wte.weight; minigpt's GPT ties them")
    check_layout({k: v.shape for k, v in out.items()}, config, where)
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def hf_from_state(model: Any) -> dict[str, numpy.ndarray]:
    """minigpt's GPT -> Hugging Face GPT-2 tensors (``transformer.`` names, Conv1D weights (in, out)).
    A model without biases gets zero biases: GPT-2 always has them, and adding zero changes nothing."""
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte, as transformers writes it
        array = backend.to_numpy(value)
        out[key] = numpy.ascontiguousarray(array.T if key.endswith(CONV1D) else array)
    if not model.config.bias:
        dtype = out["transformer.wte.weight"].dtype
        with_bias = dataclasses.replace(Shape.of(model.config), bias=True)
        for key, shape in expected_shapes(with_bias).items():
            if key.endswith(".bias"):
                out[key] = numpy.zeros(shape, dtype=dtype)
    return out


# ----------------------------------------------------------------------------- folders and the Hub
def read_folder(folder: str | os.PathLike) -> tuple[Shape, dict[str, numpy.ndarray]]:
    """The shape and minigpt state_dict of a Hugging Face GPT-2 folder."""
    folder = Path(folder)
    weights, config_path = folder / WEIGHTS, folder / CONFIG
    if not weights.is_file() and (folder / "model.safetensors.index.json").is_file():
        raise PretrainedError(f"{folder} holds a sharded model (model.safetensors.index.json); minigpt reads one "
                              f"{WEIGHTS}: save it unsharded (transformers' save_pretrained(dir, max_shard_size=\"100GB\"))")
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if pickled:
            raise PretrainedError(f"{folder} holds {', '.join(pickled)} but no {WEIGHTS}: minigpt reads only "
                                  "safetensors (a pickled file can run code when loaded); convert it with "
                                  "transformers' save_pretrained(dir, safe_serialization=True)")
        raise PretrainedError(f"{folder} holds no {WEIGHTS}")
    try:
        config = config_from_hf(json.loads(config_path.read_text(encoding="utf-8")), str(config_path))
    except FileNotFoundError:
        raise PretrainedError(f"{folder} holds no {CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{config_path} is not a readable config: {e}") from e
    return config, state_from_hf(safetensors.load(weights), config, str(weights))


def fetch(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached folder of GPT-2 ``name`` (config.json, model.safetensors), downloaded once; the
    weights are checked against their pinned sha256 where minigpt knows it, and by form always."""
    spec = MODELS[name]

    def check_config(path: Path) -> None:  # GPT-2 settings, and the shape this name has
        shape = config_from_hf(json.loads(path.read_text(encoding="utf-8")), name + "'s config.json")
        if (shape.n_layer, shape.n_head, shape.n_embd) != (spec.n_layer, spec.n_head, spec.n_embd):
            raise PretrainedError(f"the config.json downloaded for {name} describes {shape.n_layer} layers of "
                                  f"{shape.n_embd} ({shape.n_head} heads), not {name}'s {spec.n_layer} of {spec.n_embd}")

    def check_weights(path: Path) -> None:  # the header's names and shapes fit the config
        config = config_from_hf(json.loads((path.parent / CONFIG).read_text(encoding="utf-8")), name)
        header = safetensors.read_header(path)[0]
        shapes = {minigpt_name(k): tuple(v["shape"])[::-1] if k.endswith(CONV1D) else tuple(v["shape"])
                  for k, v in header.items() if k != "__metadata__"}
        shapes.pop(None, None)
        shapes.pop("lm_head.weight", None)
        check_layout(shapes, config, f"the downloaded {name} {WEIGHTS}")
        safetensors.check(path)  # every tensor's offsets inside the file

    try:
        return hub.fetch(spec.repo, [CONFIG, WEIGHTS], cache_dir, checks={CONFIG: check_config, WEIGHTS: check_weights},
                         sha256={WEIGHTS: spec.sha256} if spec.sha256 else None)
    except hub.HubError as e:  # say everything a machine without the Hub needs, in one message
        tokenizer = hub.repo_cache(gpt2.TOKENIZER_REPO, cache_dir)
        if gpt2.has_files(tokenizer):
            raise
        raise hub.HubError(f"{e}; and GPT-2's tokenizer, vocab.json and merges.txt (from the Hub's "
                           f"{gpt2.TOKENIZER_REPO}), into {tokenizer}") from e


def resolve(name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A folder holding the model: ``name_or_dir`` itself, or the cache's copy of a GPT-2 name."""
    if str(name_or_dir) in MODELS and not Path(name_or_dir).is_dir():
        return fetch(str(name_or_dir), cache_dir)
    folder = Path(name_or_dir)
    if not folder.is_dir():
        raise PretrainedError(f"{name_or_dir} is neither a folder nor one of {', '.join(MODELS)}")
    return folder


def read_config(name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Shape:
    """The shape of GPT-2 ``name`` or of a folder's model, from its config.json alone."""
    path = resolve(name_or_dir, cache_dir) / CONFIG
    try:
        return config_from_hf(json.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        raise PretrainedError(f"{path.parent} holds no {CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path} is not a readable config: {e}") from e


def read_pretrained(name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    block_size: int | None = None) -> tuple[Shape, dict[str, numpy.ndarray]]:
    """The shape and state_dict of GPT-2 ``name`` or of a folder (``GPT.from_pretrained`` builds the
    model); ``block_size`` (up to the weights' context) keeps the first rows of the position table."""
    shape, state = read_folder(resolve(name_or_dir, cache_dir))
    if block_size is not None:
        if not 1 <= block_size <= shape.block_size:
            raise PretrainedError(f"block_size {block_size} must lie in [1, {shape.block_size}], the weights' context")
        state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block_size]
        shape = dataclasses.replace(shape, block_size=block_size)
    return shape, state


def tokenizer_kind(name_or_dir: str | os.PathLike) -> str:
    """Which tokenizer goes with the weights ("char", "bpe" or "gpt2"), without building it."""
    if str(name_or_dir) in MODELS and not Path(name_or_dir).is_dir():
        return "gpt2"
    folder = Path(name_or_dir)
    if (folder / TOKENIZER).is_file():
        try:
            kind = json.loads((folder / TOKENIZER).read_text(encoding="utf-8")).get("type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
            raise PretrainedError(f"{folder / TOKENIZER} is damaged: {e}") from e
        if kind in ("char", "bpe", "gpt2"):
            return kind
        raise PretrainedError(f"{folder / TOKENIZER} names an unknown tokenizer type {kind!r}")
    if gpt2.has_files(folder):
        return "gpt2"
    raise PretrainedError(f"{folder} holds no tokenizer ({TOKENIZER}, vocab.json and merges.txt, or tokenizer.json)")


def load_tokenizer(name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer that goes with a model: GPT-2's for a GPT-2 name; in a folder, minigpt's own
    table (``minigpt_tokenizer.json``) if there is one, else ``vocab.json`` + ``merges.txt``."""
    if str(name_or_dir) in MODELS and not Path(name_or_dir).is_dir():
        return GPT2Tokenizer.from_pretrained(str(name_or_dir), cache_dir)
    folder = Path(name_or_dir)
    if (folder / TOKENIZER).is_file():
        try:
            return from_dict(json.loads((folder / TOKENIZER).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            raise PretrainedError(f"{folder / TOKENIZER} is damaged: {e}") from e
    try:
        return GPT2Tokenizer.from_pretrained(folder)
    except hub.HubError as e:
        raise PretrainedError(f"{folder} holds no tokenizer ({TOKENIZER}, vocab.json and merges.txt, or "
                              "tokenizer.json)") from e


def save_pretrained(model: Any, folder: str | os.PathLike, tokenizer: Tokenizer | None = None) -> None:
    """Write ``model`` as a Hugging Face GPT-2 folder: config.json + model.safetensors, and the
    tokenizer beside it (minigpt_tokenizer.json; a BPE or GPT-2 tokenizer also as vocab.json +
    merges.txt, which transformers' GPT2Tokenizer reads)."""
    if not hasattr(getattr(model, "config", None), "n_embd"):
        raise TypeError(f"save_pretrained writes a GPT, got {type(model).__name__}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = hf_from_state(model)
    dtype = str(tensors["transformer.wte.weight"].dtype)  # float32, or float64 for a model trained in it
    (folder / CONFIG).write_text(json.dumps(config_to_hf(model.config, tokenizer, dtype), indent=2) + "\n",
                                 encoding="utf-8")
    safetensors.save(folder / WEIGHTS, tensors, metadata={"format": "pt"})
    if tokenizer is not None:
        (folder / TOKENIZER).write_text(json.dumps(tokenizer.to_dict()), encoding="utf-8")
        if isinstance(tokenizer, BPETokenizer):
            gpt2.write_files(tokenizer, folder)
