"""Tokenizers: the plain BPE and its fast twin agree, and both equal tiktoken with the same ranks.

tiktoken (the test extra) is the independent reference: an Encoding built in memory from our
rank table (no download), and, for GPT-2's file format, tiktoken's own reader of GPT-2's files.
"""

import contextlib
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigpt.data import load_text
from minigpt.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, bpe, bpe_fast, from_dict, gpt2

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (the test extra) is the reference BPE")
import tiktoken.load  # noqa: E402, F811 - its GPT-2 file reader, a submodule

# pieces hypothesis strings together from: the edges of GPT-2's pattern, and any character
FRAGMENTS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " 's", " ", "  ", "   ", "\n", "\n\n", "\t",
             "\r\n", " \n", "123", " 4567", "3.14", "😀", "👍🏽", "👨‍👩‍👧", "é", "e\u0301", "漢字", " 日本語",
             "ñ", "ß", "Σσς", "<|endoftext|>", "<|end", "of", " the", "THE", "!!", " ...", "\u00a0", "\u2028",
             "\x1c", "\x85", "\u3000", "\ufeff", "a" * 40, "0" * 30]
# Characters are those assigned in this Python's Unicode version: a character assigned later is a
# letter to an engine with newer tables and unassigned to one with older, and `regex` (ours) and
# tiktoken's Rust engine update their tables at different times
assigned = st.characters(exclude_categories=("Cs", "Cn"))
texts = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(assigned, max_size=6)), max_size=24).map("".join)
SPECIAL = "<|endoftext|>"


def tiktoken_of(tok: BPETokenizer, name="minigpt"):
    """tiktoken's Encoding with ``tok``'s ranks: a token's rank is its id."""
    ranks = {token: i for i, token in tok.vocab.items() if i not in tok.special_tokens.values()}
    return tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens)


@pytest.fixture(scope="module")
def shakespeare():
    return load_text()


@pytest.fixture(scope="module")
def trained(shakespeare):
    """BPE trained on Tiny Shakespeare to 1,024 tokens, one of them <|endoftext|>."""
    return BPETokenizer.train(shakespeare, 1024, special_tokens=[SPECIAL])


def gpt2_ordered(tok: BPETokenizer) -> BPETokenizer:
    """The same tokenizer with GPT-2's order of the byte tokens (printable bytes first, as in its
    vocab.json): what real GPT-2 files look like."""
    order = sorted(range(256), key=lambda b: (not (chr(b).isprintable() and b != 32), b))
    byte_ids = [order.index(b) for b in range(256)]
    relabel = lambda i: byte_ids[i] if i < 256 else i  # noqa: E731
    return BPETokenizer([(relabel(a), relabel(b)) for a, b in tok.merges], tok.special_tokens, byte_ids=byte_ids)


# ----------------------------------------------------------------------------- the twins agree
@given(texts, st.integers(0, 40))
def test_fast_training_learns_the_reference_merges(text, n):
    assert bpe_fast.train_merges(text, n) == bpe.train_merges(text, n)


def test_fast_training_learns_the_reference_merges_on_shakespeare(shakespeare):
    part = shakespeare[:30_000]
    assert bpe_fast.train_merges(part, 120) == bpe.train_merges(part, 120)


def test_ties_go_to_the_smallest_pair():
    # every pair occurs once: (a, b), (' ', c), (c, d); the smallest ids are (32, 99)
    assert bpe.train_merges("ab cd", 1) == [(32, 99)] == bpe_fast.train_merges("ab cd", 1)
    # the most frequent pair wins over smaller ids: in "ab", " cdcd", (c, d) occurs twice
    assert bpe.train_merges("ab cdcd", 1) == [(99, 100)] == bpe_fast.train_merges("ab cdcd", 1)


def test_merges_never_cross_a_chunk():
    # "a b" is the chunks "a", " b": the only pair is (' ', b)
    assert bpe.train_merges("a b", 5) == [(32, 98)] == bpe_fast.train_merges("a b", 5)


def encoders_agree(text, merge_ids):
    """The fast encoder (every chunk through the long-chunk heap) against the plain loop."""
    plain = [t for chunk in bpe.split_chunks(text) for t in bpe.encode_chunk(list(chunk.encode()), merge_ids)]
    return bpe_fast.ChunkEncoder(list(range(256)), merge_ids).encode(text) == plain


@given(texts)
def test_long_chunk_encoder_equals_the_plain_loop(trained, text):
    with every_chunk_long():
        assert encoders_agree(text, dict(zip(trained.merges, trained.merged_ids)))
    assert bpe_fast.LONG_CHUNK > 0  # and the patch is gone


def test_the_short_chunk_path_and_the_cache_equal_tiktoken(trained, shakespeare):
    assert bpe_fast.LONG_CHUNK >= 64  # the default path: short chunks by the loop, remembered
    fresh = from_dict(trained.to_dict())
    first = fresh.encode(shakespeare[:50_000]).tolist()
    assert len(fresh._encoder.cache) > 100
    assert fresh.encode(shakespeare[:50_000]).tolist() == first == tiktoken_of(trained).encode_ordinary(shakespeare[:50_000])


@contextlib.contextmanager
def every_chunk_long():
    """Every chunk takes the long-chunk heap path, inside the block only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bpe_fast, "LONG_CHUNK", 0)
        yield


def test_the_encoder_comparison_catches_a_planted_mistake(monkeypatch):
    merge_ids = {(97, 97): 256}
    monkeypatch.setattr(bpe_fast, "LONG_CHUNK", 0)
    assert encoders_agree("aaa aaaa", merge_ids)

    def rightmost_first(ids, merge_ids):  # the heap ordered rightmost-first among equal ranks
        out = list(ids)
        i = len(out) - 2
        while i >= 0:
            if (out[i], out[i + 1]) in merge_ids:
                out[i:i + 2] = [merge_ids[out[i], out[i + 1]]]
            i -= 1
        return out

    monkeypatch.setattr(bpe_fast, "encode_long_chunk", rightmost_first)
    assert not encoders_agree("aaa", merge_ids)  # a, aa instead of aa, a


def test_the_training_comparison_catches_a_planted_mistake(monkeypatch):
    text = "ab cd ab cd xy"
    assert bpe_fast.train_merges(text, 3) == bpe.train_merges(text, 3)
    monkeypatch.setattr(bpe_fast.heapq, "heapify", lambda heap: heap.sort(key=lambda e: (e[0], e[1][::-1])))
    monkeypatch.setattr(bpe_fast.heapq, "heappop", lambda heap: heap.pop(0))  # ties: smallest second id
    assert bpe_fast.train_merges(text, 3) != bpe.train_merges(text, 3)


# ----------------------------------------------------------------------------- equal to tiktoken
@given(texts)
def test_encode_equals_tiktoken(trained, text):
    ref = tiktoken_of(trained)
    assert trained.encode(text).tolist() == ref.encode_ordinary(text)
    assert trained.encode(text, allowed_special="all").tolist() == ref.encode(text, allowed_special="all")
    assert trained.decode(trained.encode(text)) == text


@given(texts, st.integers(257, 400))
def test_a_bpe_trained_on_any_text_encodes_as_tiktoken(text, vocab_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short texts give fewer merges than asked
        tok = BPETokenizer.train(text * 3, vocab_size)
    probe = text + " " + text[::-1]
    assert tok.encode(probe).tolist() == tiktoken_of(tok).encode_ordinary(probe)
    assert tok.decode(tok.encode(probe)) == probe


def test_encode_equals_tiktoken_on_the_whole_of_tiny_shakespeare(trained, shakespeare):
    ids = trained.encode(shakespeare)
    assert ids.dtype == np.int64
    assert ids.tolist() == tiktoken_of(trained).encode_ordinary(shakespeare)
    assert trained.decode(ids) == shakespeare
    assert len(ids) < 0.5 * len(shakespeare)  # 1,024 tokens: under half a token per character


def test_gpt2_files_read_as_tiktoken_reads_them(trained, shakespeare, tmp_path, monkeypatch):
    """Files in GPT-2's format (its byte order, its alphabet): tiktoken's own GPT-2 reader and ours agree."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files, not a cache
    gpt2.write_files(gpt2_ordered(trained), tmp_path)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(tmp_path / "merges.txt"), str(tmp_path / "vocab.json"))
    ref = tiktoken.Encoding("files", pat_str=bpe.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={SPECIAL: 1023})
    ours = GPT2Tokenizer.from_pretrained(tmp_path)
    assert ours.special_tokens == {SPECIAL: 1023}
    assert ours.encode(shakespeare).tolist() == ref.encode_ordinary(shakespeare)
    text = "Hello <|endoftext|> wörld 's 123 😀"
    assert ours.encode(text, allowed_special={SPECIAL}).tolist() == ref.encode(text, allowed_special={SPECIAL})
    # OpenAI's names for the same files
    (tmp_path / "vocab.json").rename(tmp_path / "encoder.json")
    (tmp_path / "merges.txt").rename(tmp_path / "vocab.bpe")
    assert GPT2Tokenizer.from_pretrained(tmp_path).encode(shakespeare[:5000]).tolist() == \
        ref.encode_ordinary(shakespeare[:5000])


def test_the_tiktoken_comparison_catches_a_planted_mistake(trained):
    wrong = BPETokenizer(trained.merges[:-1], trained.special_tokens)  # the last merge lost
    text = "First Citizen: " + trained.decode([trained.merged_ids[-1]])
    assert trained.encode(text).tolist() == tiktoken_of(trained).encode_ordinary(text)
    assert wrong.encode(text).tolist() != tiktoken_of(trained).encode_ordinary(text)


# ----------------------------------------------------------------------------- special tokens, decode
def test_special_tokens_only_when_allowed(trained):
    text = "a<|endoftext|>b"
    assert SPECIAL not in trained.decode(trained.encode(text)[1:2])  # ordinary text: several tokens
    assert 1023 not in trained.encode(text).tolist()
    assert trained.encode(text, allowed_special={SPECIAL}).tolist().count(1023) == 1
    assert trained.encode(text, allowed_special="all").tolist() == trained.encode(text, allowed_special=[SPECIAL]).tolist()
    with pytest.raises(ValueError, match="not special tokens"):
        trained.encode(text, allowed_special={"<|pad|>"})
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


def test_special_tokens_in_the_training_text_are_cut_out():
    # each piece between special tokens is chunked alone: no "\n\n" or " \n" is made up where they were
    tok = BPETokenizer.train("<|endoftext|>\n" * 100 + "ab", 258, special_tokens=[SPECIAL])
    assert tok.merges == [(97, 98)]
    with pytest.warns(UserWarning):
        tok = BPETokenizer.train("x <|endoftext|> y", 300, special_tokens=[SPECIAL])
    assert tok.merges == [(32, 121)]  # the chunks "x", " " and " y"
    with pytest.raises(TypeError, match="sequence of strings"):
        BPETokenizer.train("hello", 300, special_tokens=SPECIAL)


def test_lone_surrogates_encode_as_tiktoken_does(trained):
    text = "a\ud800b \udfff"
    assert trained.encode(text).tolist() == tiktoken_of(trained).encode_ordinary(text)
    assert trained.decode(trained.encode(text)) == "a\ufffdb \ufffd"


def test_special_tokens_take_ids_after_the_merges_in_order():
    tok = BPETokenizer.train("hello hello world", 262, special_tokens=["<|a|>", "<|b|>"])
    assert tok.special_tokens == {"<|a|>": 260, "<|b|>": 261} and tok.vocab_size == 262
    assert len(tok.merges) == 4


def test_a_cut_through_a_character_decodes_with_replacement(trained):
    assert trained.decode([0xC3]) == "\ufffd"  # the first byte of "é" alone
    assert trained.decode([0xC3, 0xA9]) == "é"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trained.decode([5000])


def test_decode_takes_lists_arrays_and_tensors(trained):
    import minigpt

    ids = trained.encode("to be or not")
    assert trained.decode(ids) == trained.decode(ids.tolist()) == trained.decode(minigpt.Tensor(ids)) == "to be or not"


# ----------------------------------------------------------------------------- saving
def test_to_dict_is_json_and_rebuilds_the_same_tokenizer(trained):
    d = json.loads(json.dumps(trained.to_dict()))
    again = from_dict(d)
    assert isinstance(again, BPETokenizer) and again == trained
    assert again.encode("O Romeo, Romeo!").tolist() == trained.encode("O Romeo, Romeo!").tolist()
    char = CharTokenizer.from_text("hello")
    assert from_dict(json.loads(json.dumps(char.to_dict()))) == char


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("merges"),
    lambda d: d.update(merges=[[1, 2, 3]]),
    lambda d: d.update(merges=[[1, 9999]]),  # a token no merge makes
    lambda d: d.update(merges=d["merges"][::-1]),  # merges that use tokens made later
    lambda d: d.update(pattern="(unclosed"),
    lambda d: d.update(type="wordpiece"),
    lambda d: d["merges"].__setitem__(0, [116.7, 104]),  # not an integer
])
def test_a_damaged_table_is_one_clear_error(trained, damage):
    d = trained.to_dict()
    damage(d)
    with pytest.raises(ValueError, match="tokenizer"):
        from_dict(d)


# ----------------------------------------------------------------------------- bad input
def test_vocab_size_below_the_bytes_is_refused():
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("text", 255)
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("text", 256, special_tokens=[SPECIAL])
    with pytest.raises(ValueError, match="integer"):
        BPETokenizer.train("text", 300.5)


def test_a_vocabulary_larger_than_the_text_gives_is_capped_with_a_warning():
    with pytest.warns(UserWarning, match="gives only 3 merges"):
        tok = BPETokenizer.train("abcd", 1000)
    assert tok.vocab_size == 259
    with pytest.warns(UserWarning, match="gives only 0 merges"):
        assert BPETokenizer.train("", 300).vocab_size == 256
    assert BPETokenizer.train("", 256).encode("").tolist() == []


def test_one_repeated_byte_merges_by_doubling():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = BPETokenizer.train("a" * 5000, 300)
    assert tok.merges[:3] == [(97, 97), (256, 256), (257, 257)]  # a+a, aa+aa, aaaa+aaaa
    assert tok.decode(tok.encode("a" * 777)) == "a" * 777


def test_a_long_line_without_spaces(trained):
    rng = np.random.default_rng(0)
    line = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 200_000))
    tok = BPETokenizer.train(line, 400)
    assert bpe_fast.train_merges(line[:20_000], 60) == bpe.train_merges(line[:20_000], 60)
    assert tok.encode(line).tolist() == tiktoken_of(tok).encode_ordinary(line)
    assert trained.encode(line).tolist() == tiktoken_of(trained).encode_ordinary(line)


@pytest.mark.parametrize("line, says", [
    ("Ġ", "line 3: expected two tokens"),
    ("Ġ t x", "line 3: expected two tokens"),
    ("Ġ  t", "line 3: expected two tokens"),
    ("q z", "line 3: 'qz' is not in vocab.json"),
])
def test_a_malformed_merges_file_names_the_line(trained, tmp_path, line, says):
    gpt2.write_files(trained, tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[2] = line
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(gpt2.TokenizerFileError, match=says):
        GPT2Tokenizer.from_pretrained(tmp_path)


def test_a_damaged_vocab_file_is_one_clear_error(trained, tmp_path):
    gpt2.write_files(trained, tmp_path)
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(gpt2.TokenizerFileError, match="vocab.json is not a readable vocabulary"):
        GPT2Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(Exception, match="neither a folder"):
        GPT2Tokenizer.from_pretrained(tmp_path / "nothing-here")


def test_byte_alphabet_is_gpt2s():
    table = gpt2.bytes_to_unicode()
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert len(set(table.values())) == 256


def test_the_docs_example_prints_what_the_docs_show(capsys):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "tokenizers.md").read_text(encoding="utf-8")
    code, shown = re.search(r"```python\n# example: merges\n(.*?)```\n\n```\n(.*?)```", doc, flags=re.S).groups()
    exec(code, {})  # our own documentation
    assert capsys.readouterr().out == shown
