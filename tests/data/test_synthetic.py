"""Synthetic attention tasks: determinism, streams, the SFT batch interface, correct answers at exactly the weighted
positions (recomputed from the inputs), accuracy, the process split, spec parsing and the tokenizer."""

import numpy as np
import pytest

from llm.data.records.sft import KEYS, SFTDataset
from llm.data.synthetic import TASKS, SyntheticTask, alphabet, make_task, parse_spec
from llm.tokenizers import CharTokenizer, load_tokenizer

SPECS = [
    ("mqar:pairs=4,vocab=32", 24),
    ("mqar:pairs=5,vocab=32,queries=3,layout=zoology", 40),
    ("copy:vocab=10", 17),
    ("copy:len=5,vocab=6", 16),
    ("selective_copy:content=4,vocab=9", 20),
    ("selective_copy:content=3,vocab=8,noise=6", 14),
]


@pytest.fixture(params=SPECS, ids=[s for s, _ in SPECS])
def task(request) -> SyntheticTask:
    spec, seq_len = request.param
    return make_task(spec, seq_len)


def test_batches_are_deterministic_and_streams_differ(task):
    a = task.batch(3, 5, 8)
    b = task.batch(3, 5, 8)
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)
    for other in (task.batch(3, 6, 8), task.batch(4, 5, 8), task.batch(3, 5, 8, split="eval")):
        assert not np.array_equal(a["inputs"], other["inputs"])
    ev = list(task.eval_batches(8))
    assert len(ev) == task.eval_batch_count(8) == task.n_eval_batches
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(ev, task.eval_batches(8), strict=True))
    assert np.array_equal(ev[1]["inputs"], task.batch(task.eval_seed, 1, 8, split="eval")["inputs"])
    assert len(list(task.eval_batches(8, 3))) == 3
    with pytest.raises(ValueError, match="split"):
        task.batch(0, 0, 8, split="test")


def test_batch_matches_sft_interface(task):
    rows = np.arange(3 * 5, dtype=np.int32).reshape(3, 5) % 7
    sft = SFTDataset.from_examples([(r, np.ones(5, bool)) for r in rows], seq_len=task.seq_len).batch(0, 0, 4)
    b = task.batch(0, 0, 4)
    assert set(b) == set(sft) == set(KEYS)
    for k in KEYS:
        assert b[k].dtype == sft[k].dtype and b[k].shape == sft[k].shape == (4, task.seq_len), k
    assert b["inputs"].min() >= 0 and b["inputs"].max() < task.vocab_size
    assert b["targets"].min() >= 0 and b["targets"].max() < task.vocab_size
    real = b["segment_ids"] == 1
    assert set(np.unique(b["segment_ids"])) <= {0, 1}
    assert (b["weights"] <= real).all()  # nothing trained on padding
    assert (b["inputs"][~real] == 0).all() and (b["positions"][~real] == 0).all()
    n_real = real.sum(1)
    for i, n in enumerate(n_real):  # real tokens first, positions 0, 1, ...
        assert real[i, :n].all() and np.array_equal(b["positions"][i, :n], np.arange(n))
    shifted = b["weights"] == 0  # outside the answers, targets are the next input
    assert np.array_equal(b["targets"][:, :-1][shifted[:, :-1] & real[:, 1:]], b["inputs"][:, 1:][shifted[:, :-1]
                                                                                                 & real[:, 1:]])


def expected_answers(task: SyntheticTask, inputs: np.ndarray) -> dict[int, int]:
    """{position: answer} of one row, recomputed from its inputs alone."""
    o, x = task.options, inputs.tolist()
    if task.name == "mqar":
        P = o["pairs"]
        table = {x[2 * i]: x[2 * i + 1] for i in range(P)}
        assert len(table) == P and all(1 <= k < o["vocab"] // 2 <= v for k, v in table.items())
        # every key token after the pairs is a query
        return {t: table[x[t]] for t in range(2 * P, len(x)) if 1 <= x[t] < o["vocab"] // 2}
    if task.name == "copy":
        sep = x.index(1)
        first = x[:sep]
        assert sep == o["len"] and min(first) >= 2
        return {sep + i: first[i] for i in range(len(first))}
    mark = x.index(2)
    content = [t for t in x[:mark] if t >= 3]
    assert mark == o["noise"] and len(content) == o["content"] and all(t == 1 for t in x[:mark] if t < 3)
    return {mark + i: content[i] for i in range(len(content))}


def test_weights_mark_exactly_the_answers(task):
    b = task.batch(1, 2, 16)
    for i in range(16):
        want = expected_answers(task, b["inputs"][i])
        assert sorted(np.flatnonzero(b["weights"][i])) == sorted(want)
        assert all(b["targets"][i, t] == a for t, a in want.items())
    n_answers = {"mqar": task.options.get("queries"), "copy": task.options.get("len"),
                 "selective_copy": task.options.get("content")}[task.name]
    assert (b["weights"].sum(1) == n_answers).all()


def test_task_formats():
    b = make_task("copy:vocab=12", 20).batch(0, 0, 4)
    assert np.array_equal(b["inputs"][:, :10], b["targets"][:, 10:])  # the repeat is the first half
    assert (b["inputs"][:, 10] == 1).all() and (b["segment_ids"] == 1).all()

    t = make_task("selective_copy:content=5,vocab=10", 30)
    b = t.batch(0, 0, 6)
    R = t.options["noise"]
    assert R == 25
    for x, y in zip(b["inputs"], b["targets"], strict=True):
        content = x[:R][x[:R] >= 3]
        assert np.array_equal(y[R:R + 5], content) and x[R] == 2
    # content positions differ between rows (scattered, not fixed)
    assert len({tuple(np.flatnonzero(x[:R] >= 3)) for x in b["inputs"]}) > 1

    t = make_task("mqar:pairs=4,vocab=20", 20)
    b = t.batch(0, 0, 6)
    assert (b["segment_ids"].sum(1) == 16).all()  # 4 pairs + 4 queries, then padding
    keys = b["inputs"][:, 0:8:2]
    queries = b["inputs"][:, 8:16:2]
    assert all(len(set(k)) == 4 and sorted(k) == sorted(q) for k, q in zip(keys, queries, strict=True))
    assert np.array_equal(b["inputs"][:, 9:16:2], b["targets"][:, 8:16:2])  # the answers are also inputs (packed)

    t = make_task("mqar:pairs=16,vocab=8192,layout=zoology", 256)  # the Zoology setting
    b = t.batch(0, 0, 2)
    assert (b["weights"].sum(1) == 16).all() and (b["segment_ids"] == 1).all()
    after = b["inputs"][:, 32:]
    assert ((after == 0) | (after < 4096)).all() and (after != 0).sum() == 32  # queries only: values not shown
    assert t.tokenizer().vocab_size == 8192


@pytest.mark.parametrize("layout", ["packed", "zoology"])
def test_mqar_min_pairs_mixes_pair_counts_in_training_rows_only(layout):
    t = make_task(f"mqar:pairs=6,vocab=32,layout={layout},min_pairs=2", 40)
    b = t.batch(0, 0, 64)
    counts = []
    for x, y, w in zip(b["inputs"], b["targets"], b["weights"], strict=True):
        p = int((x >= 16).sum()) if layout == "zoology" else int(b["segment_ids"][len(counts)].sum()) // 4
        kv = {int(x[2 * i]): int(x[2 * i + 1]) for i in range(p)}
        assert len(kv) == p and all(k < 16 <= v for k, v in kv.items())
        queries = np.flatnonzero(w)
        assert len(queries) == p and all(y[q] == kv[int(x[q])] for q in queries)
        counts.append(p)
    assert set(counts) == {2, 3, 4, 5, 6}
    assert (next(t.eval_batches(16))["weights"].sum(1) == 6).all()  # eval rows: all the pairs
    assert "training rows have 2-6 pairs" in t.describe()
    with pytest.raises(ValueError, match="min_pairs must be an int in"):
        make_task("mqar:pairs=6,vocab=32,min_pairs=7", 40)
    with pytest.raises(ValueError, match="drop queries"):
        make_task("mqar:pairs=6,vocab=32,min_pairs=2,queries=3", 40)


def test_accuracy(task):
    b = task.batch(0, 0, 8)
    V = task.vocab_size
    onehot = np.eye(V, dtype=np.float32)[b["targets"]]
    n = int(b["weights"].sum())
    assert task.accuracy(onehot, b) == (n, n)
    assert task.accuracy(b["targets"], b) == (n, n)
    assert task.accuracy((b["targets"] + 1) % V, b) == (0, n)
    assert task.sequence_accuracy(onehot, b) == (8, 8)
    wrong = b["targets"].copy()
    first = np.argmax(b["weights"][0] > 0)
    wrong[0, first] = (wrong[0, first] + 1) % V
    assert task.accuracy(wrong, b) == (n - 1, n)
    assert task.sequence_accuracy(wrong, b) == (7, 8)
    with pytest.raises(ValueError, match="shape"):
        task.accuracy(b["targets"][:, :-1], b)


def test_process_split(task):
    whole = task.batch(2, 3, 8)
    parts = [task.batch(2, 3, 8, process_index=p, process_count=4) for p in range(4)]
    for k in KEYS:
        assert np.array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    ev = next(task.eval_batches(8, process_index=1, process_count=2))
    assert np.array_equal(ev["inputs"], next(task.eval_batches(8))["inputs"][4:])
    with pytest.raises(ValueError, match="divisible"):
        task.batch(0, 0, 6, process_count=4)


def test_spec_parsing_and_errors():
    assert parse_spec("copy") == ("copy", {})
    assert parse_spec(" mqar: pairs=16 , vocab=128 ,layout=zoology") == (
        "mqar", {"pairs": 16, "vocab": 128, "layout": "zoology"})
    t = make_task("mqar:pairs=16,vocab=128", 256)
    assert (t.vocab_size, t.seq_len, t.options["queries"]) == (128, 256, 16)
    assert make_task(t.spec, 256).options == t.options
    assert set(TASKS) == {"mqar", "copy", "selective_copy"}
    assert all(isinstance(make_task(name, 64).describe(), str) for name in TASKS)
    bad = [
        ("nope", "unknown synthetic task"),
        ("", "non-empty"),
        ("mqar:pair=3", "unknown option 'pair'"),
        ("mqar:pairs", "key=value"),
        ("mqar:pairs=3,pairs=4", "twice"),
        ("mqar:pairs=x", "pairs must be an int"),
        ("mqar:pairs=0", "pairs must be an int"),
        ("mqar:pairs=40,vocab=64", "pairs must be an int"),  # more pairs than keys
        ("mqar:pairs=8", "seq_len"),  # 8 pairs + 8 queries do not fit in 16
        ("mqar:layout=spiral", "layout"),
        ("mqar:pairs=2,queries=3", "queries"),
        ("copy:len=9", "len must be"),
        ("copy:vocab=2", "vocab must be"),
        ("selective_copy:content=8,noise=7", "noise must be"),
        ("selective_copy:vocab=3", "vocab must be"),
    ]
    for spec, message in bad:
        with pytest.raises(ValueError, match=message):
            make_task(spec, 16)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("copy", 1)


def test_tokenizer_round_trip(tmp_path):
    for v in (6, 94, 95, 300):
        chars = alphabet(v)
        assert len(set(chars)) == v and list(chars) == sorted(chars)
        assert all(c.isprintable() and not c.isspace() for c in chars)
    assert alphabet(94) == "".join(chr(c) for c in range(0x21, 0x7F))  # ASCII first
    task = make_task("mqar:pairs=4,vocab=200", 24)
    tok = task.tokenizer()
    assert isinstance(tok, CharTokenizer) and tok.vocab_size == 200
    ids = np.arange(200)
    text = tok.decode(ids)
    assert len(text) == 200 and np.array_equal(tok.encode(text), ids)
    row = task.batch(0, 0, 1)["inputs"][0]
    assert np.array_equal(tok.encode(tok.decode(row)), row)
    tok.save(tmp_path / "tokenizer.json")
    assert np.array_equal(load_tokenizer(tmp_path / "tokenizer.json").encode(text), ids)


def test_a_run_trains_on_a_synthetic_task_and_reports_accuracy(tmp_path):
    import json

    from conftest import tiny_config

    from llm.runs import load_run
    from llm.training import train

    config = tiny_config(tmp_path, **{"train.steps": 20, "train.eval_every": 10, "train.eval_batches": 2,
                                      "model.max_len": 64, "sample.num_samples": 0})
    config.data.synthetic = "mqar:pairs=4,vocab=32"
    result = train(config, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["val_accuracy"] for r in rows if "val_accuracy" in r]
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies) and result.val_loss > 0
    run = load_run(tmp_path / "run")
    assert run.tokenizer.vocab_size == run.model.cfg.vocab_size == 32
    from llm.evaluation import run_evaluation

    results = run_evaluation(tmp_path / "run", batch_size=8, log=lambda *_: None)
    assert results["kind"] == "synthetic" and 0 <= results["metrics"]["accuracy"] <= 1
    assert results["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)  # the same held-out batches
