"""Sub-quadratic mixers in the model (llm/model/mixers.py): decoding with the recurrent state equals the full
forward pass at every position, packed documents do not see each other, hybrids scan, bad configs are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.errors import ConfigError
from llm.model.config import MIXERS, ModelConfig
from llm.model.mixers import state_size
from llm.model.transformer import Transformer

EXTRA = {"based": {"window": 8}, "linear": {"feature_map": "taylor"}}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 19)))


def tiny(mixer, **kw):
    base = dict(vocab_size=50, max_len=32, d_model=32, n_layers=2, n_heads=2, mixer=mixer, mixer_chunk=8,
                short_conv=3, position="none")
    return ModelConfig(**{**base, **EXTRA.get(mixer, {}), **kw})


def decode_all(model, params, tokens, cuts):
    """Logits of `tokens` fed to the cache in pieces ending at `cuts`."""
    cache = model.init(jax.random.key(0), tokens, decode=True)["cache"]
    out, start = [], 0
    for end in cuts:
        logits, upd = model.apply({"params": params, "cache": cache}, tokens[:, start:end], decode=True,
                                  mutable=["cache"])
        cache, start = upd["cache"], end
        out.append(logits)
    return jnp.concatenate(out, 1)


@pytest.mark.parametrize("mixer", [m for m in MIXERS if m != "attention"])
def test_decoding_equals_the_forward_pass(mixer):
    model = Transformer(tiny(mixer))
    params = model.init(jax.random.key(0), TOKENS)["params"]
    full = model.apply({"params": params}, TOKENS)
    one_by_one = decode_all(model, params, TOKENS, range(1, TOKENS.shape[1] + 1))
    np.testing.assert_allclose(one_by_one, full, rtol=1e-5, atol=1e-5)
    prefill_then_steps = decode_all(model, params, TOKENS, [11, 12, 19])  # a prompt by chunks, then tokens
    np.testing.assert_allclose(prefill_then_steps, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["gla", "gated_deltanet"])
def test_packed_documents_do_not_see_each_other(mixer):
    model = Transformer(tiny(mixer))
    params = model.init(jax.random.key(0), TOKENS)["params"]
    segments = jnp.asarray([[1] * 7 + [2] * 12] * 2)
    positions = jnp.asarray([list(range(7)) + list(range(12))] * 2)
    packed = model.apply({"params": params}, TOKENS, segment_ids_BT=segments, positions_BT=positions)
    first = model.apply({"params": params}, TOKENS[:, :7])
    second = model.apply({"params": params}, TOKENS[:, 7:])
    np.testing.assert_allclose(packed, jnp.concatenate([first, second], 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_a_hybrid_pattern_scans_and_decodes(scan):
    cfg = tiny("attention", n_layers=4, mixer_pattern="gla,attention", scan_layers=scan, position="rope")
    assert cfg.layer_mixers == ("gla", "attention", "gla", "attention")
    model = Transformer(cfg)
    params = model.init(jax.random.key(0), TOKENS)["params"]
    if scan:  # one group's parameters, stacked n_layers / 2 deep
        assert set(params["layers"]) == {"block_0", "block_1"} and "mixer" in params["layers"]["block_0"]
        assert params["layers"]["block_0"]["mixer"]["query"]["kernel"].value.shape[0] == 2
    full = model.apply({"params": params}, TOKENS)
    np.testing.assert_allclose(decode_all(model, params, TOKENS, [11, 19]), full, rtol=1e-5, atol=1e-5)


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
    (that M v is the mixer's output is checked in tests/test_linear_ops.py)."""
    from ml_collections import ConfigDict

    from llm.explain import explain_data
    from llm.runs import LoadedRun
    from llm.tokenizers import ByteTokenizer

    cfg = tiny("attention", vocab_size=257, n_layers=4, mixer_pattern="deltanet,attention", scan_layers=scan)
    model = Transformer(cfg)
    params = model.init(jax.random.key(0), TOKENS)["params"]
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
    params = model.init(jax.random.key(1), TOKENS)["params"]
    prompt = [int(x) for x in TOKENS[0, :5]]  # 5 tokens: padded to a longer bucket
    want = list(prompt)
    for _ in range(6):
        want.append(int(jnp.argmax(model.apply({"params": params}, jnp.asarray([want]))[0, -1])))
    got = list(stream_generate(model, params, prompt, SamplingParams(temperature=0.0, max_new_tokens=6)))
    assert got == want[5:]


@pytest.mark.parametrize("mixer", [*[m for m in MIXERS if m != "attention"], "gla,attention"])
def test_parameter_counts_match_the_closed_form(mixer):
    from llm.model.params import count_params, param_count_formula

    cfg = tiny("gla", mixer_pattern=mixer) if "," in mixer else tiny(mixer, use_bias=mixer != "retnet")
    params = Transformer(cfg).init(jax.random.key(0), TOKENS)["params"]
    assert count_params(params) == param_count_formula(cfg)["total"]

