"""`llm prepare`: sources of every kind to token shards, checked against a from-scratch computation with the byte
tokenizer (ids are UTF-8 bytes); the same shards whatever the number of workers; resuming after a kill; and
training, evaluating and resuming a run on a prepared directory."""

import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_corpus

from llm.cli import main
from llm.data.corpora.prepare import PrepareSettings, prepare, sample_texts
from llm.data.corpora.prepared import PreparedData, ShardedTokens
from llm.data.corpora.sources import expand_sources
from llm.runs.workdir import load_config

EOT = 256  # the byte tokenizer's end-of-text id


def documents(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "δέλτα", "epsilon", "zeta", "ηta", "theta"]
    return [f"doc {i}: " + " ".join(rng.choice(words, size=rng.integers(3, 40))) for i in range(n)]


def write_sources(root: Path, docs: list[str]) -> list[str]:
    """The documents spread over a JSONL file, a gzipped JSONL file (field `body`), a zstd-compressed JSONL file,
    a Parquet file and two text files in a directory; returns them in the order prepare reads them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root.mkdir(parents=True, exist_ok=True)
    (root / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:10]))
    with gzip.open(root / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[10:20]))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d}) + "\n" for d in docs[20:30]).encode()))
    pq.write_table(pa.table({"text": docs[30:38]}), root / "d.parquet", row_group_size=3)
    (root / "texts").mkdir(exist_ok=True)
    (root / "texts" / "e.txt").write_text(docs[38])
    (root / "texts" / "f.txt").write_text(docs[39])
    return docs


def expected_split(docs: list[str], fraction: float, split: str) -> np.ndarray:
    """Byte ids of the documents the split holds, each followed by the end-of-text id, written independently of
    llm/data/corpora/prepare.py: document i is held out when floor((i + 1) f) > floor(i f)."""
    out = []
    for i, d in enumerate(docs):
        held_out = math.floor((i + 1) * fraction) > math.floor(i * fraction)
        if held_out == (split == "val"):
            out += [*d.encode("utf-8"), EOT]
    return np.array(out, np.uint16)


def concat(data: PreparedData, split: str) -> np.ndarray:
    return np.concatenate([np.load(data.path / s["file"]) for s in data.manifest["splits"][split]["shards"]])


def test_every_source_kind_gives_the_documents_bytes(tmp_path):
    docs = write_sources(tmp_path / "src", documents())
    s = PrepareSettings(sources=[str(tmp_path / "src")], out=str(tmp_path / "out"), tokenizer="byte",
                        val_fraction=0.2, unit_chars=300, workers=1)
    manifest = prepare(s, log=lambda m: None, progress=False)
    data = PreparedData.open(tmp_path / "out")
    for split in ("train", "val"):
        want = expected_split(docs, 0.2, split)
        np.testing.assert_array_equal(concat(data, split), want)
        assert manifest["splits"][split]["documents"] == int((want == EOT).sum())
        # Document starts: the first token, and every token after an end-of-text id.
        starts = np.concatenate([np.load(data.path / sh["documents_file"]) + off for sh, off in zip(
            manifest["splits"][split]["shards"],
            np.cumsum([0] + [sh["tokens"] for sh in manifest["splits"][split]["shards"]]), strict=False)])
        np.testing.assert_array_equal(starts, np.flatnonzero(np.r_[EOT, want[:-1]] == EOT))
    assert manifest["dtype"] == "uint16" and len(manifest["splits"]["train"]["shards"]) > 3
    assert [x["path"] for x in manifest["sources"]] == [str(f.path) for f in expand_sources([str(tmp_path / "src")])]


def test_a_text_file_without_newlines_is_still_read_in_pieces(tmp_path):
    from llm.data.corpora.sources import PIECE_CHARS, iter_documents

    text = "word " * (PIECE_CHARS // 2)  # 2.5 pieces' worth on one line
    (tmp_path / "long.txt").write_text(text)
    pieces = list(iter_documents(expand_sources([str(tmp_path / "long.txt")])[0]))
    assert "".join(p.text for p in pieces) == text
    assert len(pieces) == 3 and max(len(p.text) for p in pieces) == PIECE_CHARS
    assert [p.continues for p in pieces] == [False, True, True]


def test_sharded_tokens_read_windows_across_shards():
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 1000, n).astype(np.uint16) for n in (5, 1, 17, 3)]
    whole = np.concatenate(shards)
    tokens = ShardedTokens(shards)
    index = rng.integers(0, len(whole), size=(6, 9))
    np.testing.assert_array_equal(tokens[index], whole[index])
    np.testing.assert_array_equal(tokens[3:21], whole[3:21])
    with pytest.raises(IndexError):
        tokens[np.array([len(whole)])]


@pytest.fixture(scope="module")
def bpe_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    (root / "src").mkdir()
    corpus = make_corpus(root / "src" / "corpus.txt", n_chars=120_000)
    with (root / "src" / "more.jsonl").open("w") as f:
        for i, d in enumerate(documents(200, seed=1)):
            f.write(json.dumps({"text": d, "n": i}) + "\n")
    return root, corpus


def bpe_settings(root: Path, out: Path, **kw) -> PrepareSettings:
    return PrepareSettings(sources=[str(root / "src")], out=str(out), tokenizer="bpe", vocab_size=400,
                           val_fraction=0.05, unit_chars=20_000, sample_chars=50_000, **kw)


def dataset_files(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in [*sorted(path.glob("*.npy")), path / "tokenizer.json"]}


def test_shards_are_the_same_for_any_number_of_workers(bpe_source):
    root, _ = bpe_source
    prepare(bpe_settings(root, root / "one", workers=1), log=lambda m: None, progress=False)
    prepare(bpe_settings(root, root / "two", workers=2), log=lambda m: None, progress=False)
    one, two = dataset_files(root / "one"), dataset_files(root / "two")
    assert len(one) > 6 and one == two
    data = PreparedData.open(root / "one")
    assert data.tokenizer.kind == "bpe" and 257 < data.tokenizer.vocab_size <= 400  # fewer: merges ran out
    # The shards decode back to the documents, end-of-text ids between them.
    text = data.tokenizer.decode(concat(data, "train")[:2000])
    assert text.startswith(Path(root / "src" / "corpus.txt").read_text()[:500])


def test_the_tokenizer_sample_is_bounded_and_spread(bpe_source):
    root, _ = bpe_source
    sources = expand_sources([str(root / "src")])
    sample = list(sample_texts(sources, "text", 10_000))
    assert 0 < sum(map(len, sample)) <= 10_000 and sample == list(sample_texts(sources, "text", 10_000))
    assert any(t.startswith("doc ") for t in sample)  # reaches the second source, not only the first file's head


def test_killed_preparation_resumes_to_the_same_shards(bpe_source, tmp_path):
    root, _ = bpe_source
    if not (root / "one" / "manifest.json").exists():
        prepare(bpe_settings(root, root / "one", workers=1), log=lambda m: None, progress=False)
    out = tmp_path / "killed"
    # SIGKILL once unit 1 is on disk, from inside the process (a deterministic point; the writes are atomic, so a
    # kill inside a write leaves what the lines below make by hand).
    kill_after_unit_1 = (
        "import os, signal, sys; sys.path[:0] = sys.argv[1].split(os.pathsep); from test_prepare import bpe_settings; "
        "from pathlib import Path; from llm.data.corpora.prepare import prepare; "
        "s = bpe_settings(Path(sys.argv[2]), Path(sys.argv[3]), workers=1); "
        "prepare(s, progress=False, on_unit=lambda u: u == 1 and os.kill(os.getpid(), signal.SIGKILL))")
    here = os.pathsep.join(str(p) for p in (Path(__file__).parent, Path(__file__).parents[1]))  # conftest.py's too
    proc = subprocess.run([sys.executable, "-c", kill_after_unit_1, here, str(root), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "units" / "00001.json").exists() and not (out / "units" / "00002.json").exists()
    assert not (out / "manifest.json").exists()
    # A half-written shard of the next unit, and a finished unit's shard damaged after its record was written.
    (out / "train-00002.npy").write_bytes(b"\x93NUMPY half")
    damaged = out / "train-00000.npy"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    args = [sys.executable, "-m", "llm.cli", "prepare", str(root / "src"), "--out", str(out), "--tokenizer", "bpe",
            "--vocab_size", "400", "--val_fraction", "0.05", "--unit_chars", "20000", "--sample_chars", "50000",
            "--workers", "2", "--no_progress"]
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert dataset_files(out) == dataset_files(root / "one")
    assert json.loads((out / "manifest.json").read_text())["splits"] == \
        json.loads((root / "one" / "manifest.json").read_text())["splits"]


def test_a_run_trains_evaluates_and_resumes_on_a_prepared_dataset(bpe_source, tmp_path, capsys):
    root, _ = bpe_source
    if not (root / "one" / "manifest.json").exists():
        prepare(bpe_settings(root, root / "one", workers=1), log=lambda m: None, progress=False)
    flags = [f"--config.data.corpus={root / 'one'}", "--config.data.pack_documents=True", "--config.data.order=passes",
             "--config.model.n_layers=1",
             "--config.model.d_model=32",
             "--config.model.max_len=32", "--config.train.eval_every=3", "--config.train.eval_batches=1",
             "--config.train.batch_size=4", "--config.train.checkpoint_every=3", "--config.train.progress=False",
             "--config.sample.num_samples=0"]
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--config.train.steps=3", *flags]) == 0
    assert "prepared dataset" in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["tokens"]["train"] == json.loads((root / "one" / "manifest.json").read_text())[
        "splits"]["train"]["tokens"]
    assert main(["train", "--workdir", str(run), "--config.train.steps=6", "--resume_anyway", *flags]) == 0
    assert main(["eval", "--workdir", str(run)]) == 0
    assert "bits per byte" in capsys.readouterr().out


@pytest.mark.parametrize("make, args, message", [
    (lambda r: None, ["missing.txt"], "no such file"),
    (lambda r: (r / "x.jsonl").write_text('{"body": "hi"}\n'), ["x.jsonl"], "--text_field"),
    (lambda r: (r / "x.jsonl").write_text("not json\n"), ["x.jsonl"], "x.jsonl:1: not valid JSON"),
    (lambda r: (r / "x.txt").write_bytes(b"ok \xff\xfe"), ["x.txt"], "not UTF-8"),
    (lambda r: (r / "x.txt").write_text("hi"), ["x.txt", "--tokenizer", "wordpiece"], "neither a kind"),
    (lambda r: (r / "x.txt").write_text("hi"), ["x.txt", "--val_fraction", "1.5"], "val_fraction"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, make, args, message):
    make(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *args, "--out", str(tmp_path / "out"), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_output_directory_with_other_files_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("some text\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    assert main(["prepare", str(tmp_path / "x.txt"), "--out", str(out), "--tokenizer", "byte"]) == 2
    assert "choose another output directory" in capsys.readouterr().err
    assert [f.name for f in out.iterdir()] == ["notes.md"]
    shutil.rmtree(out)
    assert main(["prepare", str(tmp_path / "x.txt"), "--out", str(out), "--tokenizer", "byte", "--no_progress",
                 "--val_fraction", "0"]) == 0
    # Run again with other settings: refused, the dataset kept.
    before = dataset_files(out)
    assert main(["prepare", str(tmp_path / "x.txt"), "--out", str(out), "--tokenizer", "char"]) == 2
    assert dataset_files(out) == before


def naive_segments(row: np.ndarray, eos: int) -> tuple[list[int], list[int]]:
    segments, positions, segment, position = [], [], 1, 0
    for token in row:
        segments.append(segment)
        positions.append(position)
        position += 1
        if token == eos:
            segment, position = segment + 1, 0
    return segments, positions


def test_document_segments_match_a_loop():
    from llm.data.corpora.batches import document_segments

    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 5, size=(6, 17))  # id 0 plays end-of-text, about one token in five
    got = document_segments(inputs, 0)
    for row, seg, pos in zip(inputs, got["segment_ids"], got["positions"], strict=True):
        assert (list(seg), list(pos)) == naive_segments(row, 0)


def byte_dataset(root: Path, name: str, alphabet: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    src = root / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"text": "".join(rng.choice(list(alphabet), size=rng.integers(5, 60)))}) + "\n"
                           for _ in range(400)))
    prepare(PrepareSettings(sources=[str(src)], out=str(root / name), tokenizer="byte", val_fraction=0.1,
                            unit_chars=3000, workers=1), log=lambda m: None, progress=False)
    return root / name


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    return byte_dataset(root, "low", "abcdefghijklm", 0), byte_dataset(root, "high", "nopqrstuvwxyz", 1)


def mixture_config(tmp_path, spec: str, pack: bool):
    from conftest import tiny_config

    c = tiny_config(tmp_path)
    c.data.mixture, c.data.pack_documents = spec, pack
    return c


def test_a_mixture_draws_rows_by_weight_from_its_components(two_datasets, tmp_path):
    from llm.config import resolve
    from llm.data.build import build_dataset

    low, high = two_datasets
    dataset = build_dataset(resolve(mixture_config(tmp_path, f"{low}:3,{high}:1", pack=True)))
    streams = {p: concat(PreparedData.open(p), "train").tobytes() for p in (low, high)}
    from_low = 0
    for step in range(40):
        batch = dataset.batch(0, step, 8)
        for row, seg, pos in zip(batch["inputs"], batch["segment_ids"], batch["positions"], strict=True):
            letters = set(bytes(int(t) for t in row if t < 256).decode())
            source = low if letters <= set("abcdefghijklm") else high
            assert letters <= set("abcdefghijklm") or letters <= set("nopqrstuvwxyz")
            # Each row is a window of its component's token stream.
            assert np.asarray(row, np.uint16).tobytes() in streams[source]
            assert (list(seg), list(pos)) == naive_segments(row, EOT)
            from_low += source == low
    # 320 rows, p = 0.75: the count is within 4 standard deviations (7.7 rows) of 240.
    assert abs(from_low - 240) < 31


@pytest.mark.parametrize("spec", ["single", "single-passes", "mixture"])
def test_two_processes_get_the_rows_of_one(two_datasets, tmp_path, spec):
    from llm.config import resolve
    from llm.data.build import build_dataset

    low, high = two_datasets
    config = mixture_config(tmp_path, f"{low}:0.5,{high}:0.5" if spec == "mixture" else "", pack=True)
    if spec.startswith("single"):
        config.data.corpus = str(low)
        config.data.order = "passes" if spec == "single-passes" else "random"
    dataset = build_dataset(resolve(config))
    for step in (0, 7):
        whole = dataset.batch(3, step, 8)
        halves = [dataset.batch(3, step, 8, process_index=i, process_count=2) for i in range(2)]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    evals = [list(dataset.eval_batches("val", seed=3, n_batches=2, batch_size=4, process_index=i, process_count=2))
             for i in range(2)]
    whole = list(dataset.eval_batches("val", seed=3, n_batches=2, batch_size=4))
    for n in range(2):
        np.testing.assert_array_equal(np.concatenate([e[n]["inputs"] for e in evals]), whole[n]["inputs"])


def test_bad_mixtures_are_config_errors(two_datasets, tmp_path, capsys):
    low, _ = two_datasets
    for spec, message in [(f"{low}", "PATH:WEIGHT"), (f"{low}:-1", "positive weight"),
                          (f"{tmp_path}:1", "not a prepared dataset"),
                          (f"{low}:1 --config.data.order=passes", "data.order='passes' applies to")]:
        assert main(["train", "--workdir", str(tmp_path / "run"), *f"--config.data.mixture={spec}".split()]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_the_prefetcher_returns_each_steps_batch_across_jumps():
    from llm.data.prefetch import Prefetcher

    made = []

    def make(step):
        made.append(step)
        return {"step": step}

    batches = Prefetcher(make, depth=2)
    got = [batches.get(s)["step"] for s in (0, 1, 2, 3, 1, 2, 10)]  # 1 after 3: a rollback; 10: a jump
    batches.close()
    assert got == [0, 1, 2, 3, 1, 2, 10]
    assert made[:3] == [0, 1, 2] and 10 in made


def test_a_datasets_folder_and_a_hub_name_without_datasets(tmp_path, capsys):
    """A `datasets` save_to_disk folder (state.json listing Arrow IPC streams, written here with pyarrow as
    datasets writes it) is read as its files; hf:NAME needs the `datasets` package, and says so."""
    import pyarrow as pa

    docs = documents(12)
    folder = tmp_path / "hfdata"
    folder.mkdir()
    names = []
    for i, part in enumerate((docs[:7], docs[7:])):
        names.append(f"data-{i:05d}-of-00002.arrow")
        table = pa.table({"id": list(range(len(part))), "text": part})
        with pa.OSFile(str(folder / names[-1]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=3)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (folder / "dataset_info.json").write_text("{}")
    prepare(PrepareSettings(sources=[str(folder)], out=str(tmp_path / "out"), tokenizer="byte", val_fraction=0.25,
                            workers=1), log=lambda m: None, progress=False)
    data = PreparedData.open(tmp_path / "out")
    for split in ("train", "val"):
        np.testing.assert_array_equal(concat(data, split), expected_split(docs, 0.25, split))
    try:
        import datasets  # noqa: F401
    except ImportError:
        assert main(["prepare", "hf:someone/corpus", "--out", str(tmp_path / "hub"), "--tokenizer", "byte"]) == 2
        assert "pip install datasets" in capsys.readouterr().err


def test_the_openwebtext_experiment_on_a_local_parquet_and_jsonl_dataset(tmp_path):
    """experiments/openwebtext.py: the 124m preset validates; the tiny one trains on a dataset prepared (BPE)
    from a Parquet file and a JSONL file written here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm.config import validate_config
    from llm.config.experiments import load_experiment

    docs = documents(300, seed=2)
    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"text": docs[:200]}), tmp_path / "src" / "web.parquet", row_group_size=50)
    (tmp_path / "src" / "more.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[200:]))
    assert main(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "owt"), "--tokenizer", "bpe",
                 "--vocab_size", "300", "--val_fraction", "0.1", "--no_progress"]) == 0
    experiment = str(Path(__file__).parents[2] / "experiments" / "openwebtext.py")
    big = load_experiment(experiment)
    validate_config(big)
    assert (big.model.n_layers, big.model.d_model, big.train.batch_size // big.train.grad_accum) == (12, 768, 12)
    run = tmp_path / "run"
    assert main(["train", "--config", f"{experiment}:tiny", "--workdir", str(run),
                 f"--config.data.corpus={tmp_path / 'owt'}", "--config.train.steps=4",
                 "--config.train.progress=False", "--config.sample.num_samples=0"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [4]


def test_a_text_file_too_large_to_read_whole_is_prepared_into_the_cache(tmp_path, capsys, monkeypatch):
    import llm.data.corpora.corpus
    import llm.data.corpora.sources

    monkeypatch.setattr(llm.data.corpora.corpus, "MAX_WHOLE_FILE_BYTES", 1000)  # stands for 128 MB
    monkeypatch.setattr(llm.data.corpora.sources, "PIECE_CHARS", 100)  # stands for 64 K: 20 pieces, 2 held out
    monkeypatch.setenv("LLM_CACHE_DIR", str(tmp_path / "cache"))
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i}: the cat sat on the mat\n" for i in range(60)))  # 2,050 bytes
    flags = [f"--config.data.corpus={big}", "--config.data.tokenizer=byte", "--config.model.n_layers=1",
             "--config.model.d_model=32", "--config.model.max_len=16", "--config.train.batch_size=4",
             "--config.train.eval_every=2", "--config.train.eval_batches=1", "--config.train.checkpoint_every=2",
             "--config.train.progress=False", "--config.sample.num_samples=0"]
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--config.train.steps=2", *flags]) == 0
    assert "too large to read whole" in capsys.readouterr().out
    [prepared] = [p for p in (tmp_path / "cache" / "prepared").iterdir() if p.is_dir()]
    data = PreparedData.open(prepared)
    train, val = concat(data, "train"), concat(data, "val")
    assert len(train) + len(val) - (train == EOT).sum() - (val == EOT).sum() == big.stat().st_size
    held_out = bytes(val.astype(np.uint8)).decode("latin-1").split(chr(EOT % 256))  # EOT ends each piece
    assert 100 <= sum(map(len, held_out)) < 400 and all(p in big.read_text() for p in held_out)
    assert main(["train", "--workdir", str(run), "--config.train.steps=4", "--resume_anyway", *flags]) == 0
    assert main(["eval", "--workdir", str(run)]) == 0
    assert [p for p in (tmp_path / "cache" / "prepared").iterdir() if p.is_dir()] == [prepared]  # reused


def test_encode_many_equals_encode_one_by_one():
    from llm.tokenizers import train_tokenizer

    texts = [*documents(30), "", "  trailing spaces  \n\n", "<|endoftext|> in the text", "x" * 5000]
    bpe = train_tokenizer("bpe", "\n".join(texts), vocab_size=300)
    for tok in (bpe, bpe.with_special_tokens(["<|user|>"]), train_tokenizer("byte", "")):
        got = tok.encode_many([*texts, "<|user|>hi"])
        want = [tok.encode(t) for t in [*texts, "<|user|>hi"]]
        assert all(np.array_equal(g, w) and g.dtype == np.int32 for g, w in zip(got, want, strict=True))


def test_the_tiktoken_encoder_gives_the_hf_tokenizers_ids():
    """llm prepare encodes a trained BPE through tiktoken (llm/tokenizers/fast_bpe.py): checked against Hugging Face
    tokenizers' own encode on the Python docs (code, prose, punctuation) and text with odd spacing and Unicode."""
    from tokenizers import pre_tokenizers

    from llm.data.corpora.corpus import load_corpus
    from llm.tokenizers import train_tokenizer
    from llm.tokenizers.fast_bpe import tiktoken_encoding

    text = load_corpus("builtin:python_docs").text
    odd = "naïve café 😀 日本語\n\n  x  \t\n's 've  123 4567 foo!!  bar\r\n<|endoftext|>\u00a0\u2028 end " * 20
    for vocab in (300, 4096):
        bpe = train_tokenizer("bpe", text[:200_000], vocab_size=vocab)
        encoding = tiktoken_encoding(bpe.hf)
        assert encoding is not None
        for sample in (text[200_000:], odd):
            assert encoding.encode(sample, allowed_special="all") == bpe.hf.encode(sample, add_special_tokens=False).ids
    other = train_tokenizer("bpe", text[:50_000], vocab_size=300).hf
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # a shape tiktoken does not reproduce
    assert tiktoken_encoding(other) is None


def text_of(tokens: np.ndarray) -> str:
    """Byte-tokenizer ids as text, end-of-text ids dropped."""
    return bytes(int(t) for t in tokens if t != EOT).decode()


def test_a_small_text_file_is_split_as_data_corpus_splits_it_and_trains_and_evaluates_in_a_mixture(tmp_path,
                                                                                                  capsys):
    """Two texts of about 100 K characters (two 64 K pieces each: 0.1 of two pieces used to hold out none): each
    gets nanoGPT's tail as its validation split, a mixture of them trains, and `llm eval` of that run measures
    the mixture (each component as `--corpus` measures it), not the default corpus."""
    from llm.data.corpora.corpus import split_text
    from llm.evaluation import run_evaluation

    books = {}
    for name, seed in (("a", 0), ("b", 1)):
        text_file = make_corpus(tmp_path / f"{name}.txt", n_chars=100_000, seed=seed)
        assert main(["prepare", str(text_file), "--out", str(tmp_path / name), "--tokenizer", "byte",
                     "--val_fraction", "0.1", "--no_progress"]) == 0
        data = PreparedData.open(tmp_path / name)
        want_train, want_val = split_text(text_file.read_text(), 0.1)
        assert (text_of(concat(data, "train")), text_of(concat(data, "val"))) == (want_train, want_val)
        books[name] = tmp_path / name
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), f"--config.data.mixture={books['a']}:0.5,{books['b']}:0.5",
                 "--config.model.n_layers=1", "--config.model.d_model=32", "--config.model.max_len=32",
                 "--config.train.steps=4", "--config.train.batch_size=4", "--config.train.eval_every=4",
                 "--config.train.eval_batches=1", "--config.train.checkpoint_every=4",
                 "--config.train.progress=False", "--config.sample.num_samples=0"]) == 0
    capsys.readouterr()
    quiet = dict(log=lambda *_: None, batch_size=16)
    mixed = run_evaluation(run, **quiet)
    assert mixed["data"] == f"{books['a']}:0.5,{books['b']}:0.5"
    config = load_config(run)
    for name in books:
        config.eval.corpus = str(books[name])
        alone = run_evaluation(run, config.eval, **quiet)
        part = mixed["components"][str(books[name])]
        assert (part["loss"], part["tokens"]) == (alone["loss"], alone["tokens"])
    parts = mixed["components"].values()
    assert mixed["tokens"] == sum(p["tokens"] for p in parts)
    assert mixed["loss"] == pytest.approx(sum(p["loss"] * p["tokens"] for p in parts) / mixed["tokens"], rel=1e-12)
