"""GPT-2's tokenizer files, read and written, and ``GPT2Tokenizer``.

GPT-2 is a byte-level BPE (``byte_level.py``) whose tables are stored as text. Its files name
tokens by strings, and a byte such as a space or a newline would be awkward to read in them, so
every byte is first shown as a printable character (``bytes_to_unicode``): the printable ASCII
and Latin-1 bytes stand for themselves, the others (space, control bytes...) are shifted to
U+0100 and above, so " the" is written "Ġthe" (Ġ is U+0120, 256 + 32: the space).

    vocab.json   {"!": 0, ..., "Ġthe": 262, ..., "<|endoftext|>": 50256}   (OpenAI: encoder.json)
    merges.txt   "#version: 0.2", then one merge per line in rank order:  "Ġ t", "Ġt he", ...
                                                                          (OpenAI: vocab.bpe)
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from minigpt import hub
from minigpt.tokenizers.byte_level import BPETokenizer

ENDOFTEXT = "<|endoftext|>"
NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # the four sizes share one tokenizer:
TOKENIZER_REPO = "openai-community/gpt2"  # it is fetched once, from the smallest model's repository
GPT2_VOCAB_SIZE = 50257  # 256 bytes, 50,000 merges, <|endoftext|>


class TokenizerFileError(ValueError):
    """A vocab.json / merges.txt that is not GPT-2's format; the message names the file and line."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> the printable character that stands for it in GPT-2's files (see the module's docstring)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def _token_string(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def read_files(vocab_path: str | os.PathLike, merges_path: str | os.PathLike,
               cls: type[BPETokenizer] = BPETokenizer) -> BPETokenizer:
    """A tokenizer from GPT-2's ``vocab.json`` + ``merges.txt`` (or ``encoder.json`` + ``vocab.bpe``).

    Tokens in vocab.json that are neither a byte nor made by a merge are special tokens. A
    malformed file is a ``TokenizerFileError`` naming the file and, for merges, the line.
    """
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerFileError(f"{vocab_path} is not a readable vocabulary (JSON): {e}") from e
    try:
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerFileError(f"{merges_path} is not a readable merges file: {e}") from e
    skip_header = bool(lines) and lines[0].startswith("#version")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip() and not (n == 1 and skip_header)]
    return from_tables(vocab, numbered, str(vocab_path), str(merges_path), cls)


def read_tokenizer_json(path: str | os.PathLike, cls: type[BPETokenizer] = BPETokenizer) -> BPETokenizer:
    """A tokenizer from Hugging Face's ``tokenizer.json`` (what transformers 5 saves): a byte-level
    BPE's ``model.vocab`` and ``model.merges`` (``"a b"`` strings or ``[a, b]`` pairs), its
    ``added_tokens`` as special tokens."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        model = d["model"]
        if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(d.get("pre_tokenizer")):
            raise TokenizerFileError(f"{path} is not a byte-level BPE (GPT-2's kind of tokenizer)")
        vocab = dict(model["vocab"])
        for added in d.get("added_tokens") or []:
            vocab.setdefault(added["content"], added["id"])
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise TokenizerFileError(f"{path} is not a readable tokenizer.json: {e}") from e
    numbered = [(n, " ".join(m) if all(isinstance(x, str) for x in m) else repr(m)) for n, m in enumerate(merges, 1)]
    return from_tables(vocab, numbered, str(path), f"{path} merge", cls)


def from_tables(vocab: Any, merge_lines: list[tuple[int, str]], vocab_where: str, merges_where: str,
                cls: type[BPETokenizer] = BPETokenizer) -> BPETokenizer:
    """The tokenizer (a ``cls``) of GPT-2's tables: ``vocab`` (token string -> id) and the merges as
    numbered ``"a b"`` lines. Tokens that are neither a byte nor made by a merge are special tokens."""
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise TokenizerFileError(f"{vocab_where} must map token strings to integer ids")
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    try:
        byte_ids = [vocab[bytes_to_unicode()[b]] for b in range(256)]
    except KeyError as e:
        raise TokenizerFileError(f"{vocab_where} lacks the token of a byte ({e.args[0]!r})") from None
    merges, merged_ids = [], []
    for number, line in merge_lines:
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerFileError(f"{merges_where} line {number}: expected two tokens separated by one space, "
                                     f"got {line!r}")
        a, b = parts
        for token in (a, b, a + b):
            if token not in vocab:
                raise TokenizerFileError(f"{merges_where} line {number}: {token!r} is not in {Path(vocab_where).name}")
            if any(ch not in byte_of for ch in token):
                raise TokenizerFileError(f"{merges_where} line {number}: {token!r} is not written in GPT-2's "
                                         "byte alphabet")
        merges.append((vocab[a], vocab[b]))
        merged_ids.append(vocab[a + b])
    made = set(byte_ids) | set(merged_ids)
    special = {s: i for s, i in vocab.items() if i not in made}
    try:
        return cls(merges, special, byte_ids=byte_ids, merged_ids=merged_ids)
    except ValueError as e:
        raise TokenizerFileError(f"{vocab_where} and {merges_where} do not fit together: {e}") from e


def write_files(tokenizer: BPETokenizer, folder: str | os.PathLike) -> None:
    """Write ``tokenizer`` as ``vocab.json`` + ``merges.txt`` into ``folder`` (transformers'
    ``GPT2Tokenizer`` loads them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special_ids = set(tokenizer.special_tokens.values())
    vocab = {_token_string(token): i for i, token in sorted(tokenizer.vocab.items()) if i not in special_ids}
    vocab.update(tokenizer.special_tokens)  # special tokens are written as they are
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{_token_string(tokenizer.vocab[a])} {_token_string(tokenizer.vocab[b])}"
                                 for a, b in tokenizer.merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def has_files(folder: Path) -> bool:
    """Whether ``folder`` holds a GPT-2 tokenizer's files in one of the forms read below."""
    return _files_in(folder) is not None or (folder / "tokenizer.json").is_file()


def _files_in(folder: Path) -> tuple[Path, Path] | None:
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (folder / vocab).is_file() and (folder / merges).is_file():
            return folder / vocab, folder / merges
    return None


def _check_gpt2(tokenizer: BPETokenizer, where: str) -> None:
    if tokenizer.vocab_size != GPT2_VOCAB_SIZE or tokenizer.special_tokens.get(ENDOFTEXT) != GPT2_VOCAB_SIZE - 1:
        raise TokenizerFileError(f"{where} is not GPT-2's tokenizer: {tokenizer.vocab_size} tokens, "
                                 f"<|endoftext|> = {tokenizer.special_tokens.get(ENDOFTEXT)} (GPT-2: 50257, 50256)")


class GPT2Tokenizer(BPETokenizer):
    """GPT-2's tokenizer (``<|endoftext|>`` is id 50256), or any tokenizer in its file format."""

    kind = "gpt2"

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike) -> GPT2Tokenizer:
        return read_files(vocab_path, merges_path, cls)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> GPT2Tokenizer:
        """From a folder holding ``vocab.json`` + ``merges.txt`` (or ``encoder.json`` + ``vocab.bpe``, or
        Hugging Face's ``tokenizer.json``),
        or by name ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl": one tokenizer) from the Hub,
        downloaded once into the cache (see ``minigpt.hub``) and checked to be GPT-2's."""
        folder = Path(name_or_dir)
        if str(name_or_dir) not in NAMES or folder.is_dir():
            files = _files_in(folder) if folder.is_dir() else None
            if files is not None:
                return cls.from_files(*files)
            if (folder / "tokenizer.json").is_file():
                return read_tokenizer_json(folder / "tokenizer.json", cls)
            raise hub.HubError(f"{name_or_dir} is neither a folder holding vocab.json and merges.txt (or "
                               f"encoder.json and vocab.bpe, or tokenizer.json) nor one of {', '.join(NAMES)}")

        def check(path: Path) -> None:  # a download is kept only once it reads as GPT-2's
            if path.name.startswith("merges"):
                read = read_files(path.with_name("vocab.json"), path)
                _check_gpt2(read, f"the file downloaded as {path.name}")
            else:
                vocab = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(vocab, dict) or len(vocab) != GPT2_VOCAB_SIZE or vocab.get(ENDOFTEXT) != GPT2_VOCAB_SIZE - 1:
                    raise TokenizerFileError("not GPT-2's vocabulary (50257 tokens, <|endoftext|> = 50256)")

        folder = hub.fetch(TOKENIZER_REPO, ["vocab.json", "merges.txt"], cache_dir,
                           checks={"vocab.json": check, "merges.txt": check})
        tokenizer = cls.from_files(folder / "vocab.json", folder / "merges.txt")
        _check_gpt2(tokenizer, str(folder))
        return tokenizer
