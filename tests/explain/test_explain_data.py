"""The explorer's data (llm.explain.data) and figures on tiny untrained models: schema, attention capture, PCA,
positions, the prediction, tokens and prompt errors."""

import dataclasses
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from llm.errors import PromptError
from llm.explain import explain_data, explain_json, write_pngs
from llm.explain.data import forward, row_entropy
from llm.model import ModelConfig, Transformer, stack_layers
from llm.model.positions import alibi_slopes
from llm.ops.attention import AttentionSpec, attention, attention_weights
from llm.runs import LoadedRun
from llm.tokenizers import ByteTokenizer, CharTokenizer

TEXT = "the cat sat on a mat\nand the dog ran to its bed"
PROMPT = "the cat sat on"  # 14 tokens with the char tokenizer
CHAR = CharTokenizer(sorted(set(TEXT)))
BASE = dict(max_len=16, d_model=32, n_layers=2, n_heads=4, attention_impl="reference")
GQA_WINDOW = dict(n_kv_heads=2, window=3)


@functools.cache
def make_run(kind="char", seed=0, **overrides):
    tok = CHAR if kind == "char" else ByteTokenizer()
    cfg = ModelConfig(**{**BASE, "vocab_size": tok.vocab_size, **overrides})
    model = Transformer(dataclasses.replace(cfg, scan_layers=False))  # scanned: the same params, stacked
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    if cfg.scan_layers:
        model, params = Transformer(cfg), stack_layers(params)
    # Larger queries and keys than an init gives, so the attention is far from uniform.
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a * 8 if any(getattr(p, "key", None) in ("query", "key") for p in path) else a, params)
    return LoadedRun(ConfigDict(), model, params, tok, 3)


@functools.cache
def data_of(kind="char", prompt=PROMPT, **overrides):
    return explain_data(make_run(kind, **overrides), prompt)


def causal_window_mask(t, window=None):
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    ok = j <= i
    if window is not None:
        ok &= i - j < window
    return ok


def test_schema_keys_and_shapes():
    d = data_of()
    assert set(d) == {"model", "prompt", "tokens", "tokenizers", "embeddings", "positions", "attention", "prediction",
                      "sampling"}
    assert d["sampling"] == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # the controls start "off", at T = 1
    m = d["model"]
    assert set(m) == {"workdir", "step", "n_layers", "n_heads", "kv_heads", "d_model", "max_len", "vocab_size",
                      "position", "window", "attention_impl", "tokenizer", "weights_source", "note"}
    assert (m["step"], m["n_layers"], m["n_heads"], m["kv_heads"], m["tokenizer"]) == (3, 2, 4, 4, "char")
    assert m["weights_source"] == "captured" and m["window"] is None and m["note"].endswith(".")
    t = len(PROMPT)
    assert d["prompt"] == PROMPT
    assert [x["text"] for x in d["tokens"]] == list(PROMPT)
    assert [x["id"] for x in d["tokens"]] == CHAR.encode(PROMPT).tolist()
    assert all(set(x) == {"id", "text", "bytes", "partial"} and not x["partial"] for x in d["tokens"])
    assert set(d["tokenizers"]) == {"byte", "char", "bpe"}
    assert [x["id"] for x in d["tokenizers"]["byte"]] == list(PROMPT.encode())
    assert "".join(x["text"] for x in d["tokenizers"]["char"]) == PROMPT
    assert "".join(x["text"] for x in d["tokenizers"]["bpe"]) == PROMPT
    assert len(d["tokenizers"]["bpe"]) < t  # the demo BPE merges something
    a = d["attention"]
    assert (a["layers"], a["heads"]) == (2, 4)
    assert np.asarray(a["weights"]).shape == (2, 4, t, t)
    assert np.asarray(a["entropy"]).shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(a["mask"]), causal_window_mask(t).astype(int))
    e = d["embeddings"]
    assert e["method"] == "pca" and len(e["ids"]) == len(e["labels"]) == len(e["points"]) == CHAR.vocab_size
    assert all(len(p) == 2 for p in e["points"])
    assert set(e["neighbors"]) == {str(i) for i in CHAR.encode(PROMPT).tolist()}
    assert e["labels"][e["ids"].index(CHAR.encode(" ")[0])] == "␠"
    assert e["labels"][e["ids"].index(CHAR.encode("\n")[0])] == "⏎"


def test_attention_rows_sum_to_one_and_masked_cells_are_zero():
    for overrides, window in [({}, None), (GQA_WINDOW, 3)]:
        d = data_of(**overrides)
        w = np.asarray(d["attention"]["weights"])
        mask = causal_window_mask(len(PROMPT), window)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        assert np.all(w[..., ~mask] == 0.0)
        assert np.all(w[..., mask] >= 0.0)
        np.testing.assert_array_equal(np.asarray(d["attention"]["mask"]), mask.astype(int))
        assert d["model"]["window"] == window
        assert (w[..., mask] > 0).mean() > 0.9  # visible cells get weight (rounding may zero a few)


def _layer0_probs_by_hand(run, ids):
    """Layer 0's attention from the parameters: embedding + learned position, LayerNorm, q/k projections,
    scaled dot products, causal (and window) mask, softmax; query head h reads key head h // (H // K)."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), run.params)
    cfg = run.model.cfg
    t = len(ids)
    x = p["embed"]["embedding"][ids] + p["positions"]["embedding"][:t]
    ln = p["layers_0"]["attention_norm"]
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + cfg.norm_eps) * ln["scale"] + ln["bias"]
    att = p["layers_0"]["attention"]
    q = np.einsum("te,ehd->thd", x, att["query"]["kernel"]) + att["query"]["bias"]
    k = np.einsum("te,ekd->tkd", x, att["key"]["kernel"]) + att["key"]["bias"]
    group = cfg.n_heads // cfg.kv_heads
    k = np.repeat(k, group, axis=1)  # [T, H, D]: head h gets key head h // group
    s = np.einsum("qhd,shd->hqs", q, k) / math.sqrt(q.shape[-1])
    s = np.where(causal_window_mask(t, cfg.window), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_captured_weights_equal_a_computation_by_hand_gqa_window():
    run, d = make_run(**GQA_WINDOW), data_of(**GQA_WINDOW)
    assert d["model"]["kv_heads"] == 2 and d["attention"]["heads"] == 4
    ids = CHAR.encode(PROMPT)
    want = _layer0_probs_by_hand(run, ids)
    _, probs = forward(run, ids)
    assert probs.shape == (2, 4, len(ids), len(ids))
    np.testing.assert_allclose(probs[0], want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d["attention"]["weights"][0]), want, atol=1e-4)
    assert not np.allclose(probs[0, 0], probs[0, 2], atol=1e-3)  # the two key heads differ


def test_attention_weights_are_the_probabilities_of_every_implementation():
    """attention_weights(q, k) times v is the output of the xla (jax.nn.dot_product_attention) and chunked
    implementations: GQA, a window, ALiBi, packed segments."""
    rng = np.random.default_rng(0)
    b, t, h, kv, d = 2, 11, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, d)) * 2, jnp.float32) for n in (h, kv, kv))
    seg = jnp.asarray([[1] * 6 + [2] * 5, [1] * 11], jnp.int32)
    spec, kw = AttentionSpec(causal=True, window=4), dict(segment_ids=seg, alibi_slopes=jnp.asarray(alibi_slopes(h)))
    p = attention_weights(q, k, spec, **kw)
    assert p.shape == (b, h, t, t)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    out = jnp.einsum("bhqs,bshd->bqhd", p, jnp.repeat(v, h // kv, axis=2))
    for impl in ("xla", "chunked", "reference"):
        np.testing.assert_allclose(attention(q, k, v, spec.replace(impl=impl), **kw), out, atol=2e-5, err_msg=impl)


def test_fused_impls_recompute_the_same_weights():
    ref = data_of(**GQA_WINDOW)
    run = make_run(**GQA_WINDOW)
    flash_model = Transformer(dataclasses.replace(run.model.cfg, attention_impl="flash"))
    flash = explain_data(dataclasses.replace(run, model=flash_model), PROMPT)
    assert flash["model"]["weights_source"] == "recomputed" and ref["model"]["weights_source"] == "captured"
    assert "recomputed" in flash["model"]["note"] and "reference softmax" in flash["model"]["note"]
    np.testing.assert_allclose(np.asarray(flash["attention"]["weights"]), np.asarray(ref["attention"]["weights"]),
                               atol=2e-4)
    np.testing.assert_allclose([p["logit"] for p in flash["prediction"]["top"]],
                               [p["logit"] for p in ref["prediction"]["top"]], atol=1e-3)
    if jax.default_backend() != "gpu":  # a cuDNN-configured run explored without a GPU runs XLA's attention
        cudnn_model = Transformer(dataclasses.replace(run.model.cfg, attention_impl="cudnn"))
        cudnn = explain_data(dataclasses.replace(run, model=cudnn_model), PROMPT)
        assert cudnn["model"]["weights_source"] == "recomputed" and cudnn["model"]["attention_impl"] == "cudnn"
        np.testing.assert_allclose(np.asarray(cudnn["attention"]["weights"]), np.asarray(ref["attention"]["weights"]),
                                   atol=2e-4)


def test_entropy_matches_a_direct_computation():
    run, d = make_run(), data_of()
    _, probs = forward(run, CHAR.encode(PROMPT))
    direct = np.array([[np.mean([-sum(p * math.log(p) for p in row if p > 0) for row in head]) for head in layer]
                       for layer in probs.astype(np.float64)])
    np.testing.assert_allclose(np.asarray(d["attention"]["entropy"]), direct, atol=1e-5)
    np.testing.assert_allclose(row_entropy(np.asarray(d["attention"]["weights"])).mean(-1), direct, atol=2e-3)
    assert np.all(direct >= 0) and np.all(direct <= np.log(len(PROMPT)))


def test_pca_and_neighbors():
    run, d = make_run(), data_of()
    e = d["embeddings"]
    ex = e["explained"]
    assert 0 <= ex[1] <= ex[0] <= 1 and ex[0] + ex[1] <= 1 + 1e-9
    # The explained ratios are those of the centred table's singular values.
    table = np.asarray(run.params["embed"]["embedding"], np.float64)[e["ids"]]
    s = np.linalg.svd(table - table.mean(0), compute_uv=False)
    np.testing.assert_allclose(ex, (s[:2] ** 2) / (s**2).sum(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(e["points"]).var(0) * len(table), s[:2] ** 2, rtol=1e-3)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    for key, ns in e["neighbors"].items():
        i = int(key)
        assert len(ns) == 8 and all(j != i for j, _ in ns)
        cos = [c for _, c in ns]
        assert cos == sorted(cos, reverse=True)
        np.testing.assert_allclose(cos, [unit[i] @ unit[j] for j, _ in ns], atol=1e-5)
        others = sorted((unit[i] @ unit[j] for j in range(len(unit)) if j != i), reverse=True)
        np.testing.assert_allclose(cos, others[:8], atol=1e-5)


def test_max_vocab_points_keeps_prompt_tokens_and_neighbors():
    run = make_run("byte", position="sinusoidal")
    d = explain_data(run, "zz", max_vocab_points=40)
    e = d["embeddings"]
    needed = {122} | {j for ns in e["neighbors"].values() for j, _ in ns}
    assert len(e["ids"]) == 40 and needed <= set(e["ids"]) and e["ids"] == sorted(e["ids"])


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_positions(position):
    kind = "byte" if position == "sinusoidal" else "char"
    overrides = {} if position == "learned" else dict(position=position)
    if position == "rope":
        overrides["scan_layers"] = True  # the stacked intermediates of scanned layers
    d = data_of(kind, **overrides)
    pos = d["positions"]
    t = len(d["tokens"])
    if position == "rope":
        assert pos == {"kind": None, "similarity": None}
        w = np.asarray(d["attention"]["weights"])
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        # Scanned layers sow one stacked array: the same weights as the layers one by one.
        np.testing.assert_allclose(w, np.asarray(data_of(kind, position="rope")["attention"]["weights"]), atol=2e-4)
        return
    assert pos["kind"] == position
    sim = np.asarray(pos["similarity"])
    assert sim.shape == (t, t)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-4)
    np.testing.assert_allclose(sim, sim.T, atol=1e-4)
    assert np.all(np.abs(sim) <= 1 + 1e-4)
    if position == "sinusoidal":  # cosine depends on the distance only: shift-invariant diagonals
        np.testing.assert_allclose(sim[1:, 1:], sim[:-1, :-1], atol=1e-4)


def test_prediction_sorted_and_valid():
    run, d = make_run(), data_of()
    top = d["prediction"]["top"]
    assert len(top) == min(50, CHAR.vocab_size)
    logits = [p["logit"] for p in top]
    assert logits == sorted(logits, reverse=True)
    ids = [p["id"] for p in top]
    assert len(set(ids)) == len(ids) and all(0 <= i < CHAR.vocab_size for i in ids)
    full, _ = forward(run, CHAR.encode(PROMPT))
    np.testing.assert_allclose(logits, np.sort(full[-1])[::-1][: len(top)], atol=1e-4)
    assert [p["text"] for p in top] == [CHAR.decode([i]) for i in ids]
    probs = np.array([p["prob"] for p in top])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)  # the whole (small) vocabulary is listed
    assert len(explain_data(run, PROMPT, top=5)["prediction"]["top"]) == 5


def test_partial_bytes_of_a_multibyte_character():
    d = data_of("byte", "é!", position="sinusoidal")
    toks = d["tokens"]
    assert [t["id"] for t in toks] == [0xC3, 0xA9, ord("!")]
    assert [t["bytes"] for t in toks] == [[0xC3], [0xA9], [0x21]]
    assert [t["partial"] for t in toks] == [True, True, False]
    assert toks[2]["text"] == "!"
    assert [t["text"] for t in d["tokenizers"]["byte"]] == ["<0xC3>", "<0xA9>", "!"]
    assert [t["text"] for t in d["tokenizers"]["char"]] == ["é", "!"] and d["model"]["tokenizer"] == "byte"
    assert "".join(t["text"] for t in d["tokenizers"]["bpe"]).startswith(("é", "<0xC3>"))


def test_prompt_errors_and_a_broken_model():
    run = make_run()
    for prompt, words in [("", "empty"), ("a" * 16, "context"), ("the CAT", "vocabulary")]:
        with pytest.raises(PromptError, match=words) as info:
            explain_data(run, prompt)
        assert "\n" not in str(info.value)
    broken = dataclasses.replace(run, params=jax.tree_util.tree_map(lambda a: a * np.nan, run.params))
    with pytest.raises(ValueError, match="not finite"):
        explain_data(broken, PROMPT)


def test_json_and_pngs(tmp_path):
    d = data_of()
    text = explain_json(d)
    assert json.loads(text) == json.loads(json.dumps(d))
    assert "NaN" not in text and "Infinity" not in text and "\n" not in text.replace("\\n", "")
    with pytest.raises(ValueError):
        explain_json({"x": float("nan")})
    paths = write_pngs(d, tmp_path / "figs")
    assert [p.name for p in paths] == ["tokens.png", "embeddings.png", "attention.png", "positions.png",
                                       "prediction.png"]
    for p in paths:
        assert p.stat().st_size > 2000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rope = write_pngs(data_of("char", position="rope", scan_layers=True), tmp_path / "rope")
    assert "positions.png" not in [p.name for p in rope]
