"""Data pipeline: corpora and their errors, the split, plain texts prepared into the cache, stateless batches."""

import hashlib
import platform
from pathlib import Path

import numpy as np
import pytest

from llm.data import (
    KNOWN_CORPORA,
    Corpus,
    eval_batches,
    load_corpus,
    pass_batch,
    sample_batch,
    sequential_batch_count,
    sequential_batches,
    split_text,
    token_dtype,
)
from llm.data.corpora import prepare as prepare_module
from llm.data.corpora.corpus import KnownCorpus
from llm.data.corpora.prepare import prepare_corpus
from llm.data.corpora.prepared import PreparedData
from llm.data.corpora.shuffle import shuffled_index
from llm.data.dataset import CorpusDataset
from llm.errors import DataError
from llm.tokenizers import ByteTokenizer, Tokenizer, train_tokenizer

# The shared data folder sits next to the repository (see SOURCES.md there); tests needing it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shakespeare = pytest.mark.skipif(
    not (SHARED_DATA / "tinyshakespeare.txt").is_file(), reason=f"{SHARED_DATA} has no tinyshakespeare.txt"
)

TOKENS = np.arange(1000, dtype=np.uint16)  # distinct values: a window's position is readable from its tokens


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep the user's download cache and LLM_DATA_DIR out of these tests.
    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLM_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def python_docs() -> Corpus:
    return load_corpus("builtin:python_docs")


# ---------------------------------------------------------------------------------------------------------
# Corpora


def test_builtin_corpus_loads(python_docs: Corpus) -> None:
    assert python_docs.name == "python_docs"
    assert len(python_docs.text) > 300_000
    assert "assert" in python_docs.text and "#" * 72 in python_docs.text
    assert python_docs.sha256 == hashlib.sha256(python_docs.text.encode("utf-8")).hexdigest()
    assert platform.python_version() in python_docs.provenance
    assert load_corpus() == python_docs  # the default spec, and deterministic
    assert "text" not in repr(python_docs)  # the repr does not dump half a megabyte


@needs_shakespeare
def test_tiny_shakespeare_nanogpt_split() -> None:
    corpus = load_corpus("tinyshakespeare", data_dir=SHARED_DATA)
    assert corpus.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    train, val = split_text(corpus.text, 0.1)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train + val == corpus.text


def test_split_text_rule() -> None:
    text = "".join(chr(65 + i % 26) for i in range(1001))
    train, val = split_text(text, 0.25)
    assert len(train) == int(1001 * 0.75) and train + val == text
    assert split_text(text, 0.0) == (text, "")
    for bad in (-0.1, 1.0):
        with pytest.raises(DataError, match="val_fraction"):
            split_text(text, bad)


def test_file_corpus(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_bytes("Roses are red,\r\nviolets — blue.\n".encode())
    corpus = load_corpus(str(path))
    assert corpus.name == "poem" and corpus.text == "Roses are red,\r\nviolets — blue.\n"  # bytes kept as-is
    assert str(path) in corpus.provenance


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"PK\x03\x04\x00\x00binary", "binary"),
        (b"caf\xe9 latin-1", "not valid UTF-8"),
        ("dir", "directory"),
    ],
)
def test_file_corpus_errors(tmp_path: Path, content: bytes | str | None, problem: str) -> None:
    path = tmp_path / "corpus.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as err:
        load_corpus(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_named_corpus_checksum_mismatch(tmp_path: Path) -> None:
    (tmp_path / "tinyshakespeare.txt").write_text("First Citizen:\nBefore we proceed any further, hear me.\n")
    with pytest.raises(DataError, match="sha256") as err:
        load_corpus("tinyshakespeare", data_dir=tmp_path)
    message = str(err.value)
    assert "86c4e6aa9db7c042" in message and str(tmp_path) in message and "\n" not in message


def test_named_corpus_missing_without_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"alice\.txt not found") as err:
        load_corpus("alice", data_dir=tmp_path)
    assert "LLM_DATA_DIR" in str(err.value)


def test_named_corpus_from_env_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED_DATA / "alice.txt").is_file():
        pytest.skip(f"{SHARED_DATA} has no alice.txt")
    monkeypatch.setenv("LLM_DATA_DIR", str(SHARED_DATA))
    corpus = load_corpus("alice")
    assert corpus.sha256 == "70f0b8fb6039ea9255ce17f134272677239fa5e0f5b1c3636f437f723919b3af"
    assert "alice.txt" in corpus.provenance


@pytest.mark.parametrize("tampered", [False, True])
def test_named_corpus_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tampered: bool) -> None:
    # A file:// URL stands in for the network: same code path as an http download, no network needed.
    published = tmp_path / "published.txt"
    published.write_text("Before we proceed any further, hear me speak.\n")
    pinned = hashlib.sha256(published.read_bytes()).hexdigest()
    if tampered:
        published.write_text("Before we proceed any further, hear me speak!\n")
    known = KnownCorpus("tinyshakespeare.txt", pinned, published.as_uri())
    monkeypatch.setitem(KNOWN_CORPORA, "tinyshakespeare", known)
    empty = tmp_path / "empty"
    empty.mkdir()
    if tampered:
        with pytest.raises(DataError, match="sha256"):
            load_corpus("tinyshakespeare", data_dir=empty)
        assert not (tmp_path / "cache" / "tinyshakespeare.txt").exists()  # nothing unverified is kept
        return
    corpus = load_corpus("tinyshakespeare", data_dir=empty)
    assert corpus.sha256 == pinned and "downloaded" in corpus.provenance
    published.unlink()  # the second load comes from the cache
    assert load_corpus("tinyshakespeare", data_dir=empty).text == corpus.text


def test_unknown_builtin() -> None:
    with pytest.raises(DataError, match="builtin:python_docs"):
        load_corpus("builtin:wikipedia")


# ---------------------------------------------------------------------------------------------------------
# Token cache


class CountingTokenizer(ByteTokenizer):
    """A byte tokenizer that counts encode calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> np.ndarray:
        self.calls += 1
        return super().encode(text)


def _prepared(text: str, tok: Tokenizer, out: Path, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    prepare_corpus(Corpus.from_text("t", text, "a test"), tok, out, val_fraction)
    data = PreparedData.open(out)
    return {split: data.tokens(split)[:] if data.manifest["splits"][split]["tokens"] else np.zeros(0, np.uint16)
            for split in ("train", "val")}


def test_prepared_corpus_cache_hit(tmp_path: Path) -> None:
    text = "To be, or not to be — that is the question.\n" * 50
    tok = CountingTokenizer()
    first = _prepared(text, tok, tmp_path)
    calls = tok.calls
    shard = tmp_path / "train-00000.npy"
    mtime = shard.stat().st_mtime_ns
    second = _prepared(text, tok, tmp_path)
    assert tok.calls == calls  # no re-tokenising
    assert shard.stat().st_mtime_ns == mtime
    assert np.load(shard, mmap_mode="r").dtype == np.uint16
    train, val = split_text(text, 0.1)
    for split, part in (("train", train), ("val", val)):
        np.testing.assert_array_equal(first[split], second[split])
        assert first[split].tolist() == list(part.encode())  # bytes: independent of the tokenizer's code
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind


def test_prepared_corpus_key_depends_on_text_tokenizer_and_fraction(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from llm.data.build import prepared_corpus_splits

    def config(fraction):
        return SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(cache_dir=str(tmp_path),
                                                                    val_fraction=fraction)))

    for text, tok, fraction in (("abcabc", ByteTokenizer(), 0.5), ("abcabd", ByteTokenizer(), 0.5),
                                ("abcabc", train_tokenizer("char", "abc"), 0.5), ("abcabc", ByteTokenizer(), 0.25)):
        splits = prepared_corpus_splits(config(fraction), Corpus.from_text("t", text, "a test"), tok)
        cut = int(len(text) * (1 - fraction))
        assert tok.decode(splits["train"][:]) == text[:cut] and tok.decode(splits["val"][:]) == text[cut:]
    assert len([d for d in tmp_path.iterdir() if (d / "manifest.json").is_file()]) == 4


def test_prepared_corpus_pieces_match_direct_encode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 7)  # many cuts, next to multi-byte characters too
    text = "naïve café 😀 日本語, and plain ascii. " * 20
    train, val = split_text(text, 0.1)
    for tok in (ByteTokenizer(), train_tokenizer("char", text)):
        tokens = _prepared(text, tok, tmp_path / tok.kind)
        np.testing.assert_array_equal(tokens["train"], tok.encode(train))
        np.testing.assert_array_equal(tokens["val"], tok.encode(val))
    assert list(_prepared(text, ByteTokenizer(), tmp_path / "b")["val"]) == list(val.encode())


def test_prepared_corpus_bpe_equals_encode(tmp_path: Path, python_docs: Corpus) -> None:
    text = python_docs.text[:20_000]
    tok = train_tokenizer("bpe", text, vocab_size=400)
    train, val = split_text(text, 0.1)
    tokens = _prepared(text, tok, tmp_path)
    np.testing.assert_array_equal(tokens["train"], tok.encode(train))
    np.testing.assert_array_equal(tokens["val"], tok.encode(val))


def test_prepared_corpus_without_validation(tmp_path: Path) -> None:
    tokens = _prepared("hello", ByteTokenizer(), tmp_path, val_fraction=0.0)
    assert tokens["train"].tolist() == list(b"hello") and tokens["val"].shape == (0,)


def test_token_dtype() -> None:
    assert token_dtype(257) == np.uint16 and token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32 and token_dtype(128_256) == np.uint32


# ---------------------------------------------------------------------------------------------------------
# Random batches


def test_sample_batch_shapes_and_shift() -> None:
    x, y = sample_batch(TOKENS, seed=0, step=3, batch_size=8, seq_len=16)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y, x + 1)  # each row a contiguous window of TOKENS = arange


def test_sample_batch_determinism() -> None:
    a = sample_batch(TOKENS, seed=1, step=5, batch_size=8, seq_len=16)
    b = sample_batch(TOKENS, seed=1, step=5, batch_size=8, seq_len=16)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], sample_batch(TOKENS, seed=1, step=6, batch_size=8, seq_len=16)[0])
    assert not np.array_equal(a[0], sample_batch(TOKENS, seed=2, step=5, batch_size=8, seq_len=16)[0])


def corpus_dataset(tokens, seq_len: int, split: str = "train") -> CorpusDataset:
    return CorpusDataset(Corpus.from_text("t", "t", "test"), ByteTokenizer(), seq_len, {split: tokens})


def test_resume_gives_the_batches_of_an_unbroken_run() -> None:
    train = corpus_dataset(TOKENS, 16)
    unbroken = [train.batch(7, s, 4)["inputs"] for s in range(10)]
    # "Restart" at step 6: a fresh dataset object; nothing but (seed, step) carries over.
    resumed = [corpus_dataset(TOKENS, 16).batch(7, s, 4)["inputs"] for s in range(6, 10)]
    for a, b in zip(unbroken[6:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_offsets_cover_the_nanogpt_range() -> None:
    tokens = np.arange(20, dtype=np.uint16)  # seq_len 16: offsets 0..3, as torch.randint(len - 16)
    starts = {
        int(x[0])
        for s in range(50)
        for x in sample_batch(tokens, seed=0, step=s, batch_size=4, seq_len=16)[0]
    }
    assert starts == {0, 1, 2, 3}


def test_per_process_rows_concatenate_to_the_global_batch() -> None:
    global_x, global_y = sample_batch(TOKENS, seed=3, step=2, batch_size=8, seq_len=16)
    for count in (2, 4, 8):
        parts = [
            sample_batch(
                TOKENS, seed=3, step=2, batch_size=8, seq_len=16, process_index=i, process_count=count
            )
            for i in range(count)
        ]
        assert all(p[0].shape == (8 // count, 16) for p in parts)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), global_x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), global_y)
    with pytest.raises(ValueError, match="not divisible"):
        sample_batch(TOKENS, seed=0, step=0, batch_size=6, seq_len=16, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        sample_batch(TOKENS, seed=0, step=0, batch_size=8, seq_len=16, process_index=2, process_count=2)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65, 1000, 4099])
def test_shuffled_index_is_a_permutation(n: int) -> None:
    p = shuffled_index(np.arange(n), n, (5, 0))
    assert sorted(p.tolist()) == list(range(n))
    np.testing.assert_array_equal(shuffled_index(np.arange(n)[::-1], n, (5, 0)), p[::-1])  # entry by entry
    if n >= 64:  # another key, another order; and not close to the identity
        assert (shuffled_index(np.arange(n), n, (5, 1)) != p).mean() > 0.9
        assert (p == np.arange(n)).mean() < 0.1 and abs(np.corrcoef(p, np.arange(n))[0, 1]) < 0.2


def test_passes_visit_every_window_once_per_pass() -> None:
    seq_len, batch_size = 16, 4
    n = (len(TOKENS) - 1) // seq_len  # 62 windows: a pass ends inside batch 15
    steps = 2 * n // batch_size + 1
    rows = np.concatenate([pass_batch(TOKENS, seed=1, step=s, batch_size=batch_size, seq_len=seq_len)[0]
                           for s in range(steps)])
    starts = rows[:, 0].astype(int)  # TOKENS[i] == i: a row's first token is its offset
    for p in range(2):
        assert sorted(starts[p * n:(p + 1) * n]) == list(range(0, n * seq_len, seq_len))
    assert starts[:n].tolist() != starts[n:2 * n].tolist()  # each pass in its own order
    np.testing.assert_array_equal(rows, TOKENS[starts[:, None] + np.arange(seq_len)])
    x, y = pass_batch(TOKENS, seed=1, step=3, batch_size=batch_size, seq_len=seq_len)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(x, rows[3 * batch_size:4 * batch_size])  # a function of (seed, step)
    parts = [pass_batch(TOKENS, seed=1, step=3, batch_size=batch_size, seq_len=seq_len, process_index=i,
                        process_count=2)[0] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), x)


def test_eval_batches_fixed_and_separate_from_training() -> None:
    first = list(eval_batches(TOKENS, seed=0, n_batches=3, batch_size=4, seq_len=16))
    again = list(eval_batches(TOKENS, seed=0, n_batches=3, batch_size=4, seq_len=16))
    assert len(first) == 3
    for (a, _), (b, _) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    train0 = sample_batch(TOKENS, seed=0, step=0, batch_size=4, seq_len=16)[0]
    assert not np.array_equal(first[0][0], train0)
    halves = [
        list(
            eval_batches(
                TOKENS, seed=0, n_batches=3, batch_size=4, seq_len=16, process_index=i, process_count=2
            )
        )
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([halves[0][2][0], halves[1][2][0]]), first[2][0])


# ---------------------------------------------------------------------------------------------------------
# Sequential batches (exact full-split evaluation)


@pytest.mark.parametrize(("n", "batch_size", "seq_len"), [(101, 4, 10), (100, 4, 10), (41, 2, 10), (2, 3, 8)])
def test_sequential_batches_cover_each_target_once(n: int, batch_size: int, seq_len: int) -> None:
    tokens = np.arange(n, dtype=np.uint16) + 1  # + 1: padding (0) differs from every real token
    got = list(sequential_batches(tokens, batch_size=batch_size, seq_len=seq_len))
    assert len(got) == sequential_batch_count(n, batch_size=batch_size, seq_len=seq_len)
    inputs = np.concatenate([x[w > 0] for x, _, w in got])
    targets = np.concatenate([y[w > 0] for _, y, w in got])
    np.testing.assert_array_equal(inputs, tokens[:-1])
    np.testing.assert_array_equal(targets, tokens[1:])
    assert sum(float(w.sum()) for *_, w in got) == n - 1
    for x, y, w in got:
        assert x.shape == y.shape == w.shape == (batch_size, seq_len) and w.dtype == np.float32
        assert not x[w == 0].any() and not y[w == 0].any()


def test_sequential_batches_per_process() -> None:
    full = list(sequential_batches(TOKENS, batch_size=4, seq_len=30))
    halves = [
        list(sequential_batches(TOKENS, batch_size=4, seq_len=30, process_index=i, process_count=2))
        for i in (0, 1)
    ]
    for b, (x, y, w) in enumerate(full):
        for part, whole in enumerate((x, y, w)):
            np.testing.assert_array_equal(np.concatenate([halves[0][b][part], halves[1][b][part]]), whole)


# ---------------------------------------------------------------------------------------------------------
# Splits too short for a window


def test_too_short_split_errors() -> None:
    short = np.arange(16, dtype=np.uint16)
    with pytest.raises(DataError, match="16 tokens") as err:
        sample_batch(short, seed=0, step=0, batch_size=2, seq_len=16)
    assert "17" in str(err.value) and "shorter context" in str(err.value)
    with pytest.raises(DataError, match="16 tokens"):
        corpus_dataset(short, 16, "val").eval_batches("val", seed=0, n_batches=1, batch_size=2)
    with pytest.raises(DataError):
        eval_batches(short, seed=0, n_batches=1, batch_size=2, seq_len=16)  # fails at the call, not later
    assert corpus_dataset(short, 15).batch(0, 0, 2)["inputs"].shape == (2, 15)
    assert len(list(sequential_batches(short, batch_size=2, seq_len=64))) == 1  # a partial window is fine
    with pytest.raises(DataError, match="no next-token targets"):
        sequential_batches(short[:1], batch_size=2, seq_len=64)


def test_end_to_end_char_pipeline(tmp_path: Path, python_docs: Corpus) -> None:
    train_text, val_text = split_text(python_docs.text, 0.1)
    tok: Tokenizer = train_tokenizer("char", python_docs.text)
    prepare_corpus(python_docs, tok, tmp_path, 0.1)
    prepared = PreparedData.open(tmp_path)
    data = CorpusDataset(python_docs, tok, 64, {split: prepared.tokens(split) for split in ("train", "val")})
    batch = data.batch(0, 0, 4)
    x, y = batch["inputs"], batch["targets"]
    assert tok.decode(x[0])[1:] == tok.decode(y[0])[:-1]
    assert tok.decode(x[0]) in train_text
    assert sum(float(b["weights"].sum()) for b in data.full_batches("val", batch_size=8)) == len(val_text) - 1
