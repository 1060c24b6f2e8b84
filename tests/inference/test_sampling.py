"""Sampling with the KV cache: greedy = argmax of the full forward pass, filtering, batching, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.config.sampling import SamplingParams
from llm.errors import PromptError
from llm.inference import generate, left_pad
from llm.model import ModelConfig, Transformer
from llm.ops.sampling import filter_logits, sample_logits


@functools.cache
def model_and_params(**overrides):
    cfg = ModelConfig(**{**dict(vocab_size=23, max_len=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                position="rope"), **overrides})
    model = Transformer(cfg)
    return model, nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.mark.parametrize("overrides", [{}, {"position": "learned", "scan_layers": True}])
def test_greedy_equals_argmax_of_full_forward(overrides):
    model, params = model_and_params(**overrides)
    prompts = [np.array([3, 1, 4, 1, 5]), np.array([9, 2, 6])]
    outs = generate(model, params, prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
    forward = jax.jit(lambda x: model.apply({"params": params}, x))
    for prompt, out in zip(prompts, outs):
        seq = np.concatenate([prompt, out])
        logits = forward(jnp.asarray(seq[None]))[0]
        np.testing.assert_array_equal(out, np.argmax(logits[len(prompt) - 1:-1], axis=-1))


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)


def test_batched_prompts_equal_one_at_a_time():
    model, params = model_and_params()
    prompts = [np.array([1, 2, 3, 4, 5, 6]), np.array([7]), np.array([8, 9, 10])]
    batched = generate(model, params, prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    for p, b in zip(prompts, batched):
        np.testing.assert_array_equal(generate(model, params, [p], greedy(6))[0], b)


def test_sampling_is_seeded():
    model, params = model_and_params()
    p = [np.array([1, 2, 3])]
    a = generate(model, params, p, SamplingParams(max_new_tokens=10, temperature=1.0, seed=5))[0]
    b = generate(model, params, p, SamplingParams(max_new_tokens=10, temperature=1.0, seed=5))[0]
    c = generate(model, params, p, SamplingParams(max_new_tokens=10, temperature=1.0, seed=6))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stops_at_eos():
    model, params = model_and_params()
    full = generate(model, params, [np.array([1, 2, 3])], greedy(10))[0]
    eos = int(full[3])  # pretend the 4th generated token is the end token
    cut = generate(model, params, [np.array([1, 2, 3])], greedy(10), eos_id=eos)[0]
    first = int(np.flatnonzero(full == eos)[0])
    np.testing.assert_array_equal(cut, full[: first + 1])


def test_top_k_and_top_p_filtering():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda f: np.isfinite(np.asarray(f))[0].tolist()
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
    assert kept(filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.85)) == [True, True, True, False, False]
    assert kept(filter_logits(logits, top_p=1.0)) == [True] * 5
    assert kept(filter_logits(logits, top_k=3, top_p=0.6)) == [True, True, False, False, False]


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.3), (5, 0.5)])
def test_sampling_never_picks_excluded_tokens(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((256, 50)) * 3, jnp.float32)
    # Temperature applies first (as in Hugging Face's samplers), so the nucleus is that of logits / T.
    allowed = np.isfinite(np.asarray(filter_logits(logits / 1.3, top_k=top_k, top_p=top_p)))
    for seed in range(8):
        toks = np.asarray(sample_logits(logits, jax.random.PRNGKey(seed), temperature=1.3, top_k=top_k, top_p=top_p))
        assert allowed[np.arange(256), toks].all()
    # The filter is not trivial: something was excluded in every row.
    assert (~allowed).any(axis=1).all()


def test_left_pad():
    tokens, segments, positions = left_pad([np.array([5, 6, 7]), np.array([8])])
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(segments, [[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(positions, [[0, 1, 2], [0, 0, 0]])


def test_generation_runs_past_the_context():
    """Past max_len the sampler slides: later tokens are greedy continuations of the last half-context."""
    model, params = model_and_params()
    prompt = np.arange(10) % 23
    out = generate(model, params, [prompt], SamplingParams(max_new_tokens=50, temperature=0.0))[0]
    assert len(out) == 50
    first = generate(model, params, [prompt], SamplingParams(max_new_tokens=30, temperature=0.0))[0]
    np.testing.assert_array_equal(out[:30], first)  # the first chunk fills the 40-token context
    # The next chunk continues from the last 20 tokens of prompt + generated text.
    context = np.concatenate([prompt, out[:30]])[-20:]
    np.testing.assert_array_equal(out[30:], generate(model, params, [context], greedy(20))[0])


def test_prompt_errors():
    model, params = model_and_params()
    with pytest.raises(PromptError, match="does not fit the model's context of 40"):
        generate(model, params, [np.arange(40) % 23], SamplingParams(max_new_tokens=2))
    with pytest.raises(PromptError, match="at least one token"):
        generate(model, params, [np.array([], np.int32)], SamplingParams(max_new_tokens=2))
