"""Tokenizers: round trips, nanoGPT's char vocabulary, unknown characters, JSON save/load, eos ids, special tokens
and vocabulary extension."""

import hashlib
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
    tokenizer_from_json,
    train_tokenizer,
)

# The shared data folder sits next to the repository (see SOURCES.md there); tests needing it skip without it.
SHAKESPEARE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinyshakespeare.txt"

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


# ---------------------------------------------------------------------------------------------------------
# Special tokens and vocabulary extension

CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]


def test_special_tokens_every_kind(bpe: BPETokenizer, tmp_path: Path) -> None:
    for tok in all_kinds(bpe):
        text = "abcab" if tok.kind == "char" and tok.vocab_size < 10 else "To be, or not"
        chat = tok.with_special_tokens(CHAT_TOKENS)
        old = tok.vocab_size
        assert chat.vocab_size == old + 4 and chat.special_tokens == tuple(CHAT_TOKENS)
        assert chat.special_ids == {t: old + i for i, t in enumerate(CHAT_TOKENS)}  # appended, in order
        assert [chat.token_id(t) for t in CHAT_TOKENS] == list(range(old, old + 4))
        assert tok.special_ids == {} and tok.special_tokens == ()  # the original is unchanged
        assert chat.encode(text).tolist() == tok.encode(text).tolist()  # existing ids unchanged
        assert chat.eos_id == tok.eos_id
        user, end = chat.token_id("<|user|>"), chat.token_id("<|end|>")
        ids = chat.encode(f"<|user|>{text}<|end|>")
        assert ids.dtype == np.int32 and ids.tolist() == [user, *tok.encode(text).tolist(), end]
        assert chat.decode(ids) == f"<|user|>{text}<|end|>"
        assert chat.decode([end, end, user]) == "<|end|><|end|><|user|>"
        assert chat.encode("<|end|>").tolist() == [end] and chat.encode("").tolist() == []
        # Adding existing tokens is a no-op; a new one gets the next id.
        assert chat.with_special_tokens(CHAT_TOKENS[:2]) is chat
        more = chat.with_special_tokens(["<|end|>", "<|tool|>"])
        assert more.vocab_size == old + 5 and more.token_id("<|tool|>") == old + 4
        assert more.special_ids.items() >= chat.special_ids.items()
        # Saved and loaded: equal, same ids; the fingerprint tells them apart.
        chat.save(tmp_path / "chat.json")
        loaded = load_tokenizer(tmp_path / "chat.json")
        assert loaded == chat and loaded.special_ids == chat.special_ids and loaded.vocab_size == chat.vocab_size
        assert loaded.encode(f"<|user|>{text}<|end|>").tolist() == ids.tolist()
        assert len({tok.fingerprint(), chat.fingerprint(), more.fingerprint(), loaded.fingerprint()}) == 3
        with pytest.raises(ValueError, match="not a special token"):
            chat.token_id("<|nope|>")


def test_special_tokens_longest_match_first() -> None:
    tok = ByteTokenizer().with_special_tokens(["<|a", "<|a|>", "|"])
    a, a_full, bar = (tok.token_id(t) for t in ("<|a", "<|a|>", "|"))
    assert tok.encode("<|a|>").tolist() == [a_full]
    assert tok.encode("<|a|").tolist() == [a, bar]
    assert tok.encode("x<|ab").tolist() == [ord("x"), a, ord("b")]
    assert tok.decode(tok.encode("<|a|><|a|||")) == "<|a|><|a|||"


@FEW
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(CHAT_TOKENS)), max_size=6))
def test_special_tokens_round_trip(bpe: BPETokenizer, pieces: list[str]) -> None:
    text = "".join(pieces)
    for tok in (ByteTokenizer().with_special_tokens(CHAT_TOKENS), bpe.with_special_tokens(CHAT_TOKENS)):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert ids.tolist().count(tok.token_id("<|end|>")) == text.count("<|end|>")


def test_special_eos_and_existing_tokens(bpe: BPETokenizer) -> None:
    byte = ByteTokenizer().with_special_tokens(CHAT_TOKENS)
    assert byte.eos_id == 256  # unchanged unless asked
    chat = byte.with_special_tokens([], eos="<|end|>")
    assert chat.eos_id == chat.token_id("<|end|>") == 259 and chat.to_json()["eos_token"] == "<|end|>"
    assert tokenizer_from_json(chat.to_json()).eos_id == 259
    assert train_tokenizer("char", "abc").with_special_tokens(["<|end|>"], eos="<|end|>").eos_id == 3
    # A marker that already is one base token keeps its id.
    eot = ByteTokenizer().with_special_tokens([EOS_TEXT])
    assert eot.vocab_size == 257 and eot.token_id(EOS_TEXT) == 256 and eot.encode(f"a{EOS_TEXT}").tolist() == [97, 256]
    assert ByteTokenizer().encode(EOS_TEXT).tolist() == list(EOS_TEXT.encode())  # not without asking
    assert ByteTokenizer().token_id(EOS_TEXT) == 256
    assert bpe.with_special_tokens([EOS_TEXT]).vocab_size == bpe.vocab_size
    assert bpe.with_special_tokens([EOS_TEXT]).token_id(EOS_TEXT) == bpe.eos_id
    chat = bpe.with_special_tokens(CHAT_TOKENS, eos="<|end|>")
    assert chat.eos_id == chat.token_id("<|end|>") and chat.eos_token == "<|end|>"
    assert bpe.eos_id == bpe.token_id(EOS_TEXT)  # the original keeps its own
    with pytest.raises(ValueError, match=r"eos='<\|nope\|>'"):
        ByteTokenizer().with_special_tokens(CHAT_TOKENS, eos="<|nope|>")
    with pytest.raises(TypeError, match="list"):
        ByteTokenizer().with_special_tokens("<|user|>")
    with pytest.raises(ValueError, match="non-empty"):
        ByteTokenizer().with_special_tokens([""])


def test_bpe_special_tokens_live_in_the_hf_tokenizer(bpe: BPETokenizer, tmp_path: Path) -> None:
    chat = bpe.with_special_tokens(CHAT_TOKENS)
    assert bpe.hf.token_to_id("<|user|>") is None  # the original HF tokenizer is untouched
    assert chat.hf.token_to_id("<|user|>") == chat.token_id("<|user|>")
    chat.hf.save(str(tmp_path / "tokenizer.json"))  # what an HF export writes: it knows them too
    reloaded = from_hf_file(tmp_path / "tokenizer.json")
    assert reloaded.encode("<|user|>hi").tolist() == chat.encode("<|user|>hi").tolist()
    assert reloaded.with_special_tokens(CHAT_TOKENS).vocab_size == chat.vocab_size  # existing HF tokens: reused


def test_specials_make_tokenizers_unchunkable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from llm.data import Corpus
    from llm.data.corpora import prepare as prepare_module
    from llm.data.corpora.prepare import prepare_corpus
    from llm.data.corpora.prepared import PreparedData

    tok = ByteTokenizer().with_special_tokens(CHAT_TOKENS)
    assert ByteTokenizer().chunkable and train_tokenizer("char", "ab").chunkable and not tok.chunkable
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 3)  # cuts inside every marker, were the text cut
    text = "<|user|>hello<|end|>" * 3
    prepare_corpus(Corpus.from_text("t", text, "a test"), tok, tmp_path, 0.0)
    assert PreparedData.open(tmp_path).tokens("train")[:].tolist() == tok.encode(text).tolist()


def test_char_extend_chars() -> None:
    base = train_tokenizer("char", "hello world")
    assert isinstance(base, CharTokenizer)
    ext = base.extend_chars("wörld!é")
    assert ext.vocab_size == base.vocab_size + 3 and ext.extra_chars == {"!": 8, "é": 9, "ö": 10}  # sorted
    assert ext.encode("hello world").tolist() == base.encode("hello world").tolist()
    assert ext.encode("hé!").tolist() == [base.encode("h")[0], 9, 8] and ext.decode([9, 10, 8]) == "éö!"
    assert ext.extend_chars("hello") is ext and ext.missing_chars("héllo ÿ?") == "?ÿ"
    with pytest.raises(ValueError, match="extend_chars") as err:
        base.encode("é")
    assert "'é'" in str(err.value)
    # Interleaved with special tokens, every id stays where it was, through JSON too.
    a = base.with_special_tokens(["<|user|>"])
    b = a.extend_chars("é")
    c = b.with_special_tokens(["<|end|>"], eos="<|end|>")
    d = c.extend_chars("!")
    assert (a.token_id("<|user|>"), b.extra_chars["é"], c.token_id("<|end|>"), d.extra_chars["!"]) == (8, 9, 10, 11)
    assert d.special_ids == {"<|user|>": 8, "<|end|>": 10} and d.eos_id == 10 and d.vocab_size == 12
    data = json.loads(json.dumps(d.to_json()))
    assert data["extra_chars"] == [["é", 9], ["!", 11]] and data["special_tokens"] == ["<|user|>", "<|end|>"]
    loaded = tokenizer_from_json(data)
    assert loaded == d and loaded.encode("<|user|>hé!<|end|>").tolist() == [8, 3, 9, 11, 10]
    assert loaded.decode(loaded.encode("<|user|>hé!<|end|>")) == "<|user|>hé!<|end|>"
    assert len({base.fingerprint(), a.fingerprint(), b.fingerprint(), c.fingerprint(), d.fingerprint()}) == 5
    # With unk: the extension takes ids after unk, and extended characters are no longer unknown.
    unk = train_tokenizer("char", "ab", unk=True).extend_chars("c")
    assert unk.encode("abcd").tolist() == [0, 1, 3, 2] and unk.decode([0, 1, 2, 3]) == "ab\ufffdc"


def test_old_json_loads_with_unchanged_fingerprints(bpe: BPETokenizer, tmp_path: Path) -> None:
    """Files written before special tokens existed: same tokenizer, same fingerprint, no special tokens."""

    def digest(data: dict) -> str:
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    old_bpe = {"kind": "bpe", "eos_token": EOS_TEXT, "hf_tokenizer": json.loads(bpe.hf.to_str())}
    for data in ({"kind": "byte"}, {"kind": "char", "chars": "\n !abc", "unk": False},
                 {"kind": "char", "chars": "ab", "unk": True}, old_bpe):
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        tok = load_tokenizer(path)
        assert tok.to_json() == data and tok.fingerprint() == digest(data)
        assert tok.special_tokens == () and tok.special_ids == {}
    assert ByteTokenizer().to_json() == {"kind": "byte"} and "special_tokens" not in bpe.to_json()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "byte", "special_tokens": "<|user|>"}, "special_tokens must be a list"),
        ({"kind": "byte", "special_tokens": ["<|a|>", "<|a|>"]}, "distinct"),
        ({"kind": "byte", "eos_token": "<|end|>"}, "not a special token"),
        ({"kind": "char", "chars": "ab", "unk": False, "extra_chars": [["c", 7]]}, r"id 7, not in \[2, 3\)"),
        ({"kind": "char", "chars": "ab", "unk": False, "extra_chars": [["a", 2]]}, "outside the alphabet"),
        ({"kind": "char", "chars": "ab", "unk": False, "extra_chars": "c"}, "extra_chars must be a list"),
    ],
)
def test_damaged_special_token_json(tmp_path: Path, data: dict, message: str) -> None:
    (tmp_path / "tok.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        load_tokenizer(tmp_path / "tok.json")
    assert "tok.json: not a usable tokenizer" in str(err.value)
