"""Sub-quadratic mixers in the model (llm/model/mixers.py): decoding with the recurrent state equals the full
forward pass at every position, packed documents do not see each other, hybrids scan, bad configs are refused.
The tests that iterate over llm/model/mixer_table.py's rows check each column by behaviour, so a new row is
covered as it is added."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import ConfigError
from llm.hf.configs import HFConversionError, check_exportable
from llm.model.config import ModelConfig
from llm.model.mixer_table import MIXER_TABLE, MIXERS, with_feature
from llm.model.mixers import state_size
from llm.model.params import flops_params, mixing_flops_per_token, train_flops_per_token
from llm.model.transformer import Transformer
from llm.ops.mixers import gla_chunked

EXTRA = {"based": {"window": 8}, "linear": {"feature_map": "taylor"}}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 19)))


def tiny(mixer, **kw):
    base = dict(vocab_size=50, max_len=32, d_model=32, n_layers=2, n_heads=2, mixer=mixer, mixer_chunk=8,
                short_conv=3, position="none")
    return ModelConfig(**{**base, **EXTRA.get(mixer, {}), **kw})


# Models run as compiled programs: op by op, each jnp call in them would compile a program of its own.
def init(model, tokens=TOKENS, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), tokens)["params"]


def forward(model, params, tokens, **arrays):
    return jax.jit(model.apply)({"params": params}, tokens, **arrays)


def decode_all(model, params, tokens, *cuts):
    """For each list in `cuts`, the logits of `tokens` fed to the cache in pieces ending at its cuts (the programs
    compiled once per piece length, for all the lists)."""
    cache0 = jax.jit(lambda t: model.init(jax.random.key(0), t, decode=True)["cache"])(tokens)
    step = jax.jit(lambda cache, x: model.apply({"params": params, "cache": cache}, x, decode=True,
                                                mutable=["cache"]))
    results = []
    for ends in cuts:
        out, start, cache = [], 0, cache0
        for end in ends:
            logits, upd = step(cache, tokens[:, start:end])
            cache, start = upd["cache"], end
            out.append(logits)
        results.append(jnp.concatenate(out, 1))
    return results


@pytest.mark.parametrize("mixer", with_feature("recurrent"))
def test_decoding_equals_the_forward_pass(mixer):
    model = Transformer(tiny(mixer))
    params = init(model)
    full = forward(model, params, TOKENS)
    # One token at a time; then a prompt by pieces of 9 (each crossing a chunk boundary, mixer_chunk=8), a token, 9.
    one_by_one, prefill_then_steps = decode_all(model, params, TOKENS, range(1, TOKENS.shape[1] + 1), [9, 10, 19])
    np.testing.assert_allclose(one_by_one, full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prefill_then_steps, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", with_feature("segments"))
def test_packed_documents_do_not_see_each_other(mixer):
    """The table's `segments`: the output after a document boundary is the second document's alone."""
    model = Transformer(tiny(mixer, n_layers=1))
    params = init(model)
    segments = jnp.asarray([[1] * 7 + [2] * 12] * 2)
    positions = jnp.asarray([list(range(7)) + list(range(12))] * 2)
    packed = forward(model, params, TOKENS, segment_ids_BT=segments, positions_BT=positions)
    first = forward(model, params, TOKENS[:, :7])
    second = forward(model, params, TOKENS[:, 7:])
    np.testing.assert_allclose(packed, jnp.concatenate([first, second], 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_a_hybrid_pattern_scans_and_decodes(scan):
    cfg = tiny("attention", n_layers=4, mixer_pattern="gla,attention", scan_layers=scan, position="rope")
    assert cfg.layer_mixers == ("gla", "attention", "gla", "attention")
    model = Transformer(cfg)
    params = init(model)
    if scan:  # one group's parameters, stacked n_layers / 2 deep
        assert set(params["layers"]) == {"block_0", "block_1"} and "mixer" in params["layers"]["block_0"]
        assert params["layers"]["block_0"]["mixer"]["query"]["kernel"].value.shape[0] == 2
    full = forward(model, params, TOKENS)
    np.testing.assert_allclose(decode_all(model, params, TOKENS, [11, 19])[0], full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"mixer": "mamba"}, "model.mixer='mamba' is not one of"),
    ({"mixer_pattern": "gla,ssm"}, "'ssm' is not one of"),
    ({"mixer_pattern": "gla,gla,attention"}, "do not divide model.n_layers=2"),
    ({"mixer": "based", "window": None}, "set model.window"),
    ({"feature_map": "cos"}, "model.feature_map='cos'"),
])
def test_bad_mixer_configs_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**tiny("gla").__dict__, **change})


def test_state_sizes():
    cfg = tiny("gla")  # 2 heads of 16: a 16 x 16 state per head
    assert state_size(cfg, "gla") == 2 * 16 * 16 == state_size(cfg, "deltanet")
    assert state_size(tiny("linear"), "linear") == 2 * (1 + 16 + 256) * 16  # Taylor features of 16 dims


@pytest.mark.parametrize("scan", [False, True])
def test_the_explorer_shows_a_mixers_token_mixing(scan):
    """llm explain on a hybrid: attention layers give probabilities, a mixer layer its mixing matrix as |M| per row
    (that M v is the mixer's output is checked in tests/ops/test_mixer_ops.py)."""
    from ml_collections import ConfigDict

    from llm.explain import explain_data
    from llm.runs import LoadedRun
    from llm.tokenizers import ByteTokenizer

    cfg = tiny("attention", vocab_size=257, n_layers=4, mixer_pattern="deltanet,attention", scan_layers=scan)
    model = Transformer(cfg)
    params = init(model)
    data = explain_data(LoadedRun(ConfigDict(), model, params, ByteTokenizer(), 3), "the cat")
    weights = np.asarray(data["attention"]["weights"])  # [L, H, T, T]
    assert weights.shape == (4, 2, 7, 7)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-3)
    assert np.all(np.triu(weights, 1) == 0)
    assert "Layers 0 (deltanet), 2 (deltanet) have sub-quadratic mixers" in data["model"]["note"]


@pytest.mark.parametrize("mixer", ["gla", "gated_deltanet"])
def test_chats_streaming_matches_greedy_full_passes(mixer):
    """`llm chat`'s streaming (a prompt right-padded to a bucket with segment id 0, the index set back, then one
    token a step) continues a mixer's state as repeated full forward passes choose greedily."""
    from llm.config.sampling import SamplingParams
    from llm.inference.streaming import stream_generate

    model = Transformer(tiny(mixer))
    params = init(model, seed=1)
    prompt = [int(x) for x in TOKENS[0, :5]]  # 5 tokens: padded to a longer bucket
    want = list(prompt)
    full_pass = jax.jit(model.apply)
    for _ in range(6):  # one compiled length: a causal model's logits at a position ignore the padding after it
        padded = jnp.asarray([want + [0] * (TOKENS.shape[1] - len(want))])
        want.append(int(jnp.argmax(full_pass({"params": params}, padded)[0, len(want) - 1])))
    got = list(stream_generate(model, params, prompt, SamplingParams(temperature=0.0, max_new_tokens=6)))
    assert got == want[5:]


@pytest.mark.parametrize("mixer", [*[m for m in MIXERS if m != "attention"], "gla,attention"])
def test_parameter_counts_match_the_closed_form(mixer):
    from llm.model.params import count_params, param_count_formula

    cfg = tiny("gla", mixer_pattern=mixer) if "," in mixer else tiny(mixer, use_bias=mixer != "retnet")
    params = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), TOKENS))["params"]
    assert count_params(params) == param_count_formula(cfg)["total"]



def _xla_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("mixer", ["linear", "mamba2"])
def test_mixing_flops_match_xlas_count(mixer):
    """The closed form's forward (a third of the training count) against XLA's count of the chunked core, one chunk
    with a state in (XLA counts a loop body once, so one chunk; a state argument keeps its terms from folding).
    A decay per key (GLA) costs the jnp form another ~4 C K elementwise FLOPs a token, which the count leaves out
    as it leaves out softmax's exponentials."""
    cfg = tiny(mixer, d_model=128, n_heads=2, mixer_chunk=64, feature_map="identity")
    b, t, h, d = 2, 64, cfg.n_heads, cfg.dim_per_head
    r = lambda i, *shape: jax.random.normal(jax.random.key(i), shape)
    q, k, v, s0 = r(0, b, t, h, d), r(1, b, t, h, d), r(2, b, t, h, d), r(3, b, h, d, d)
    g = -jnp.abs(r(4, b, t, h, 1))
    xla = _xla_flops(lambda *a: gla_chunked(*a, chunk=64, state=s0), q, k, v, g) / (b * t * h)
    ours = mixing_flops_per_token(cfg, mixer, t) / 3 / h
    assert ours == pytest.approx(xla, rel=0.05)
    assert mixing_flops_per_token(cfg, "attention", t) == 12 * h * d * t  # PaLM's 12 H Q T


def test_training_flops_count_each_layers_mixer():
    cfg = tiny("gla", mixer_pattern="gla,attention", n_layers=2)
    want = 6 * flops_params(cfg) + mixing_flops_per_token(cfg, "gla", 32) + mixing_flops_per_token(cfg, "attention", 32)
    assert train_flops_per_token(cfg, 32) == want
    windowed = tiny("attention", window=8)
    assert mixing_flops_per_token(windowed, "attention", 32) == 12 * 2 * 16 * 8  # a window caps T


def test_sharding_names_and_lora_targets_treat_mixers_like_attention():
    """Every mixer parameter carries logical axis names (so mesh rules shard it), heads on the head axis; LoRA's
    default targets adapt a mixer's query and value as they do attention's, starting as the base model."""
    cfg = tiny("gla", mixer_pattern="gla,mamba2,gated_deltanet,based", n_layers=4, window=8)
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), TOKENS))["params"]
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    unnamed = [jax.tree_util.keystr(p) for p, x in leaves if not isinstance(x, nn.Partitioned)]
    assert not unnamed
    names = {jax.tree_util.keystr(p): x.names for p, x in leaves}
    mixer_names = {p: n for p, n in names.items() if "'mixer'" in p}
    for suffix in ("'query']['kernel']", "'value']['kernel']", "'out']['kernel']", "'a_log']", "'gate_up']['kernel']"):
        hits = [n for p, n in mixer_names.items() if p.endswith(suffix)]
        assert hits and all({"heads", "kv_heads"} & set(n) for n in hits), suffix

    lora = tiny("gla", lora_rank=2)
    params = nn.unbox(init(Transformer(lora)))
    adapted = {"/".join(str(getattr(k, "key", k)) for k in p[:-1])
               for p, _ in jax.tree_util.tree_leaves_with_path(params) if getattr(p[-1], "key", "") == "lora_b"}
    assert adapted == {f"layers_{i}/mixer/{m}" for i in range(2) for m in ("query", "value")}
    base = Transformer(tiny("gla"))
    base_params = jax.tree_util.tree_map(lambda x: x, params)
    for i in range(2):
        for m in ("query", "value"):
            del base_params[f"layers_{i}"]["mixer"][m]["lora_a"], base_params[f"layers_{i}"]["mixer"][m]["lora_b"]
    np.testing.assert_allclose(forward(Transformer(lora), params, TOKENS), forward(base, base_params, TOKENS),
                               rtol=1e-6, atol=1e-6)


def _runs_pallas(cfg, segment_ids=None):
    """Whether the model's forward pass calls a Pallas kernel (from its traced program; nothing runs)."""
    model = Transformer(cfg)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), TOKENS))["params"]
    return "pallas_call" in str(jax.make_jaxpr(
        lambda p: model.apply({"params": p}, TOKENS, segment_ids_BT=segment_ids))(params))


@pytest.mark.parametrize("mixer", with_feature("chunked"))
def test_the_pallas_kernel_runs_where_the_table_says(mixer):
    """The table's `pallas`: model.mixer_impl='pallas' calls the kernel for exactly those mixers (the config is
    built without validation, which refuses the others), and packed documents fall back to the jnp form; where it
    runs (interpreted on CPU), the output is the chunked form's."""
    cfg = tiny(mixer, n_layers=1, mixer_impl="pallas")
    assert _runs_pallas(cfg) == MIXER_TABLE[mixer].pallas
    assert not _runs_pallas(cfg, segment_ids=jnp.ones(TOKENS.shape, jnp.int32))
    if MIXER_TABLE[mixer].pallas:
        model, chunked = Transformer(cfg), Transformer(tiny(mixer, n_layers=1))
        params = init(model)
        np.testing.assert_allclose(forward(model, params, TOKENS), forward(chunked, params, TOKENS),
                                   rtol=1e-5, atol=1e-5)


def test_the_pallas_kernel_trains_as_the_chunked_form():
    """model.mixer_impl='pallas' (the kernel, interpreted on CPU): the same loss and gradients as the jnp form
    (with a decay per key; per-head decays' gradients are tests/ops/test_mixer_ops.py's)."""
    def loss_and_grads(impl):
        model = Transformer(tiny("gla", mixer_impl=impl))
        params = init(model)
        loss = lambda p: jnp.mean(jax.nn.logsumexp(model.apply({"params": p}, TOKENS), -1))
        return jax.jit(jax.value_and_grad(loss))(params)

    (want, want_grads), (got, grads) = loss_and_grads("chunked"), loss_and_grads("pallas")
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_pallas_and_hf_export_refuse_what_they_cannot_do():
    with pytest.raises(ConfigError, match=r"mixer_impl='pallas' covers .* not 'deltanet'"):
        ModelConfig.from_dict({**tiny("deltanet").__dict__, "mixer_impl": "pallas"})
    llama = dict(position="rope", norm="rmsnorm", ffn="swiglu", use_bias=False, short_conv=0)
    with pytest.raises(HFConversionError, match=r"model\.mixer='gla' cannot be exported"):
        check_exportable(tiny("gla", **llama), "llama")
    check_exportable(tiny("attention", **llama), "llama")  # the same model with attention exports


def _cache(mixer, max_len):
    """The decoding cache's shapes ({path: ShapeDtypeStruct}) of a tiny model (traced, nothing runs)."""
    model = Transformer(tiny(mixer, max_len=max_len))
    cache = jax.eval_shape(lambda: model.init(jax.random.key(0), TOKENS[:, :1], decode=True))["cache"]
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(cache)}


def _nbytes(cache):
    return sum(x.size * x.dtype.itemsize for x in cache.values())


@pytest.mark.parametrize("mixer", MIXERS)
def test_the_decoding_state_is_what_the_table_says(mixer):
    """The table's `recurrent` and `kv_cache`: a recurrent mixer's cache holds a [B, H, K, V] state; the memory
    grows with the context (max_len) exactly when there is a KV cache."""
    row, small, big = MIXER_TABLE[mixer], _cache(mixer, 32), _cache(mixer, 4096)
    states = [x.shape for p, x in small.items() if p.endswith("['state']")]
    assert bool(states) == row.recurrent and all(len(s) == 4 and s[:2] == (2, 2) for s in states)
    assert (_nbytes(big) > _nbytes(small)) == row.kv_cache
    assert any(p.endswith("['cached_key']") for p in small) == row.kv_cache


def test_a_recurrent_cache_is_the_state_and_the_convolutions_inputs():
    # per layer: the state [B, H, 16, 16] and three convolutions' last 2 inputs [B, 2, H, 16] + ids [B, 2]; one index
    assert _nbytes(_cache("gla", 32)) == 2 * (2 * 2 * 16 * 16 * 4 + 3 * (2 * 2 * 2 * 16 * 4 + 2 * 2 * 4)) + 4


@pytest.mark.parametrize("mixer", MIXERS)
def test_each_layer_has_the_parts_the_table_says(mixer):
    """The table's `softmax`, `window`, `core` and `decay` columns in the parameters a layer gets (shapes only)."""
    row = MIXER_TABLE[mixer]
    model = Transformer(tiny(mixer, n_layers=1, window=8))
    layer = jax.eval_shape(lambda: model.init(jax.random.key(0), TOKENS))["params"]["layers_0"]
    assert set(layer) >= {"attention" if row.softmax else "mixer"} and not {"attention", "mixer"} <= set(layer)
    parts = set(layer.get("mixer", {}))
    assert ("window_attention" in parts) == row.window
    assert ("beta" in parts) == (row.core == "delta")  # the delta rule's write strength
    assert ("gate_up" in parts, "a_log" in parts) == (row.decay == "gate", row.decay == "ssd")


@pytest.mark.parametrize("mixer", MIXERS)
def test_the_balanced_context_layout_takes_what_the_table_says(mixer, tmp_path):
    """The table's `context_balance`: a mesh that splits the sequence in the balanced layout is refused for the
    mixers that read tokens in order (that attention gives one device's loss under it is
    tests/parallel/test_context_parallel.py's)."""
    from conftest import tiny_config

    from llm.config import resolve

    config = tiny_config(tmp_path, **{"model.mixer": mixer, "model.window": 8, "mesh.data": 1, "mesh.context": 2})
    config.mesh.rules.length = "context"
    if MIXER_TABLE[mixer].context_balance:
        assert resolve(config, n_devices=2).mesh.context == 2
    else:
        with pytest.raises(ConfigError, match=f"which the {mixer} mixer cannot take"):
            resolve(config, n_devices=2)
