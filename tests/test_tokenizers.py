"""Tokenizers: round trips, nanoGPT's char vocabulary, unknown characters, JSON save/load, eos ids."""

import json
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm.tokenizers import (
    EOS_TEXT,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    from_hf_file,
    load_tokenizer,
    train_tokenizer,
)

# The shared data folder sits next to the repository (see SOURCES.md there); tests needing it skip without it.
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

# A small, always-available training text: a few pydoc topics (ships with CPython).
SMALL_TEXT = "\n\n".join(topics[k] for k in sorted(topics)[:6])
FEW = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    tok = train_tokenizer("bpe", SMALL_TEXT, vocab_size=512)
    assert isinstance(tok, BPETokenizer)
    return tok


def all_kinds(bpe: BPETokenizer) -> list[Tokenizer]:
    return [
        ByteTokenizer(),
        train_tokenizer("char", SMALL_TEXT),
        train_tokenizer("char", "abc", unk=True),
        bpe,
    ]


# ---------------------------------------------------------------------------------------------------------
# Round trips


@FEW
@given(st.text())
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@FEW
@given(text=st.text())
def test_bpe_round_trip(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert ids.dtype == np.int32
    assert ((ids >= 0) & (ids < bpe.vocab_size)).all()
    assert bpe.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        " leading space",
        "tabs\tand\r\nCRLF  ",
        "naïve café 😀 日本語 x\u0301",
        f"a{EOS_TEXT}b",
        "\x00\x7f",
    ],
)
def test_bpe_round_trip_examples(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_and_respects_vocab_size(bpe: BPETokenizer) -> None:
    assert 257 <= bpe.vocab_size <= 512
    assert len(bpe.encode(SMALL_TEXT)) < len(SMALL_TEXT.encode("utf-8")) / 2


@FEW
@given(st.data())
def test_char_round_trip_within_vocab(data: st.DataObject) -> None:
    tok = train_tokenizer("char", SMALL_TEXT)
    text = data.draw(st.text(alphabet=sorted(set(SMALL_TEXT))))
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_ids_are_sorted_order() -> None:
    tok = train_tokenizer("char", "hello world")
    assert tok.vocab_size == 8 and tok.eos_id is None
    assert tok.encode("hello").tolist() == [sorted(set("hello world")).index(c) for c in "hello"]


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} not present")
def test_char_vocab_on_tiny_shakespeare_matches_nanogpt() -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tok = train_tokenizer("char", text)
    assert tok.vocab_size == 65
    assert list(tok.chars) == sorted(set(text))
    # nanoGPT's stoi: '\n' -> 0, ' ' -> 1, 'a' -> 39
    assert tok.encode("\n a").tolist() == [0, 1, 39]
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


# ---------------------------------------------------------------------------------------------------------
# Characters outside the char vocabulary


def test_char_unknown_characters_error_names_them() -> None:
    tok = train_tokenizer("char", "abc")
    with pytest.raises(ValueError) as err:
        tok.encode("abcxyz\n")
    message = str(err.value)
    for c in "xyz\n":
        assert repr(c) in message
    assert "training text" in message and "byte" in message and "BPE" in message
    assert "'a'" not in message


def test_char_unknown_characters_error_lists_at_most_ten() -> None:
    tok = train_tokenizer("char", "a")
    with pytest.raises(ValueError, match=r"26 character\(s\)") as err:
        tok.encode("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert "'J'" in str(err.value) and "'K'" not in str(err.value) and "..." in str(err.value)


def test_char_unk_mode(tmp_path: Path) -> None:
    tok = train_tokenizer("char", "abc", unk=True)
    assert isinstance(tok, CharTokenizer)
    assert tok.vocab_size == 4 and tok.unk_id == 3
    assert tok.encode("aXbY").tolist() == [0, 3, 1, 3]
    assert tok.decode([0, 3, 1]) == "a\ufffdb"
    tok.save(tmp_path / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer.json").read_text())["unk"] is True
    assert load_tokenizer(tmp_path / "tokenizer.json").encode("aXbY").tolist() == [0, 3, 1, 3]


# ---------------------------------------------------------------------------------------------------------
# Special ids, decode of arbitrary ids


def test_eos_ids(bpe: BPETokenizer) -> None:
    assert ByteTokenizer().eos_id == 256 and ByteTokenizer().vocab_size == 257
    assert train_tokenizer("char", "abc").eos_id is None
    assert bpe.eos_id == bpe.hf.token_to_id(EOS_TEXT)
    assert bpe.encode(EOS_TEXT).tolist() == [bpe.eos_id]
    assert bpe.decode([bpe.eos_id]) == EOS_TEXT
    assert ByteTokenizer().decode([104, 256, 105]) == f"h{EOS_TEXT}i"


def test_byte_decode_of_invalid_utf8_replaces() -> None:
    tok = ByteTokenizer()
    snowman = list("☃".encode())
    assert tok.decode([*snowman[:2], ord("x")]) == "\ufffdx"  # a character cut short, as sampling may
    assert tok.decode([0xFF]) == "\ufffd"


def test_decode_rejects_out_of_range_ids(bpe: BPETokenizer) -> None:
    for tok in all_kinds(bpe):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([0, tok.vocab_size])
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([-1])
        assert tok.decode([]) == ""


# ---------------------------------------------------------------------------------------------------------
# Save / load


def test_save_load_equality(bpe: BPETokenizer, tmp_path: Path) -> None:
    probe = SMALL_TEXT[:2000]
    for tok in all_kinds(bpe):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, with the kind to dispatch on
        assert data["kind"] == tok.kind
        loaded = load_tokenizer(path)
        assert type(loaded) is type(tok) and loaded == tok
        assert loaded.fingerprint() == tok.fingerprint()
        assert loaded.vocab_size == tok.vocab_size and loaded.eos_id == tok.eos_id
        assert loaded.encode(probe).tolist() == tok.encode(probe).tolist()


def test_fingerprint_distinguishes_tokenizers(bpe: BPETokenizer) -> None:
    prints = {tok.fingerprint() for tok in all_kinds(bpe)}
    assert len(prints) == 4
    assert (
        train_tokenizer("char", "ab").fingerprint() != train_tokenizer("char", "ab", unk=True).fingerprint()
    )


def test_from_hf_file(bpe: BPETokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    bpe.hf.save(str(path))  # the file Hugging Face itself writes
    tok = from_hf_file(path)
    assert tok.eos_id == bpe.eos_id and tok.vocab_size == bpe.vocab_size
    assert tok.encode(SMALL_TEXT[:1000]).tolist() == bpe.encode(SMALL_TEXT[:1000]).tolist()
    assert load_tokenizer(path) == tok  # load_tokenizer recognises an HF file too
    assert from_hf_file(path, eos_token=None).eos_id == bpe.eos_id


def test_from_hf_file_other_eos_and_no_template_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<s>": 0, "</s>": 1, "hello": 2, "world": 3, "[UNK]": 4}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_special_tokens(["<s>", "</s>"])
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = from_hf_file(tmp_path / "tokenizer.json")
    assert tok.eos_id == 1
    assert tok.encode("hello world").tolist() == [2, 3]  # encode adds no BOS even though the file would
    with pytest.raises(ValueError, match="not in the HF tokenizer"):
        from_hf_file(tmp_path / "tokenizer.json", eos_token="<|nope|>")


# ---------------------------------------------------------------------------------------------------------
# Argument errors


def test_train_tokenizer_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", "abc")
    with pytest.raises(ValueError, match="vocab_size 3, not the requested 10"):
        train_tokenizer("char", "abc", vocab_size=10)
    assert train_tokenizer("byte", "", vocab_size=257).vocab_size == 257
    with pytest.raises(ValueError, match="only to the char"):
        train_tokenizer("byte", "abc", unk=True)
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer("bpe", "abc", vocab_size=100)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer("char", "")


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer JSON"):
        load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_tokenizer(tmp_path / "missing.json")
