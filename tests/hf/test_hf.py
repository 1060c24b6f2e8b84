"""Hugging Face interop (llm/hf): import, export and workdirs, checked against transformers' own models.

The tests that need torch and transformers (the `test` extra) skip without them; the rest build HF folders
from our own random models, or write config.json files by hand.
"""

import dataclasses
import functools
import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before transformers is imported
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from llm.config.sampling import SamplingParams
from llm.hf import HFConversionError, export_hf, export_workdir, import_hf, import_to_workdir
from llm.model import ModelConfig, Transformer
from llm.tokenizers import train_tokenizer

VOCAB, EOS = 101, 100
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 24)).astype(np.int32)


def leaves(params):
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_same_params(a, b):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, k
        assert la[k].tobytes() == lb[k].tobytes(), k  # bit-identical

def export_round_trips(hf, cfg, params, model, out, arch):
    """Export to `out`: it imports back to the same config and parameters, and transformers loads it as `model`'s
    class with every weight in place; returns that reloaded model."""
    export_hf(cfg, params, out, arch=arch)
    cfg2, params2, _ = import_hf(out)
    assert cfg2 == cfg
    assert_same_params(params, params2)
    reloaded, info = hf.transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded) is type(model)
    return reloaded



@functools.cache
def _apply(cfg):
    return jax.jit(Transformer(cfg).apply)  # one compile per config: faster than running op by op


def logits(cfg, params, tokens=TOKENS):
    return np.asarray(_apply(cfg)({"params": params}, jnp.asarray(tokens)))


def random_params(cfg, seed=0):
    """Params of our model's shapes with every array random (biases and norm scales too), so no mapping hides."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: nn.unbox(Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
                                             ["params"]))
    return jax.tree_util.tree_map(
        lambda s: (rng.normal(0.0, 0.1, s.shape) + (1.0 if len(s.shape) == 1 else 0.0)).astype(s.dtype), shapes)


# ------------------------------------------------------------------------------------------------------------
# without torch: our models out and back in, and the rejections

SMALL = dict(vocab_size=VOCAB, max_len=32, d_model=32, n_layers=2, n_heads=4)
OURS = {
    "gpt2": (dict(SMALL), "gpt2"),
    "gpt2-untied-relu": (dict(SMALL, tie_embeddings=False, activation="relu", d_ff=48), "gpt2"),
    "llama-gqa-bias": (dict(SMALL, n_kv_heads=2, position="rope", norm="rmsnorm", ffn="swiglu", rope_base=500.0,
                            tie_embeddings=False), "llama"),
    "llama-nobias-scan": (dict(SMALL, n_kv_heads=1, head_dim=16, position="rope", norm="rmsnorm", ffn="swiglu",
                               use_bias=False, scan_layers=True), "llama"),
    "mistral-window": (dict(SMALL, n_kv_heads=2, position="rope", norm="rmsnorm", ffn="swiglu", use_bias=False,
                            window=8), "mistral"),
    "qwen3-qknorm": (dict(SMALL, n_kv_heads=2, position="rope", norm="rmsnorm", ffn="swiglu", use_bias=False,
                          qk_norm=True, head_dim=16), "qwen3"),
    "phi3-partial-longrope": (dict(SMALL, n_kv_heads=2, position="rope", norm="rmsnorm", ffn="swiglu", use_bias=False,
                                   window=8, rotary_fraction=0.5, rope_scaling="longrope", rope_factor=2.0,
                                   rope_original_max_len=16, rope_short_factor="1.0,1.5",
                                   rope_long_factor="2.0,4.0"), "phi3"),
}


@pytest.mark.parametrize("name", sorted(OURS))
def test_export_import_round_trip_is_exact(tmp_path, name):
    fields, arch = OURS[name]
    cfg = ModelConfig(**fields)
    params = random_params(cfg)
    export_hf(cfg, params, tmp_path, arch=arch)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == arch
    cfg2, params2, tokenizer = import_hf(tmp_path, scan_layers=cfg.scan_layers)
    assert tokenizer is None
    assert_same_params(params, params2)
    assert explicit(cfg2) == explicit(cfg)  # the same model: equal params give equal logits


def explicit(cfg):
    """`cfg` with its defaults spelled out (d_ff, n_kv_heads, head_dim), as an import writes them."""
    head_dim = None if cfg.dim_per_head * cfg.n_heads == cfg.d_model else cfg.dim_per_head
    return dataclasses.replace(cfg, d_ff=cfg.hidden_ff, n_kv_heads=cfg.kv_heads, head_dim=head_dim)


def test_lora_adapters_are_folded_into_the_export(tmp_path):
    cfg = ModelConfig(**SMALL, lora_rank=2)
    params = random_params(cfg)
    assert "lora_a" in params["layers_0"]["attention"]["query"]
    export_hf(cfg, params, tmp_path)
    cfg2, params2, _ = import_hf(tmp_path)
    assert cfg2.lora_rank == 0
    np.testing.assert_allclose(logits(cfg2, params2), logits(cfg, params), atol=1e-5, rtol=0)


def test_gpt2_hub_layout(tmp_path):
    """The Hub's `gpt2` files: names without 'transformer.', the causal-mask buffers saved, a tokenizer."""
    from safetensors.numpy import load_file, save_file

    cfg = ModelConfig(**OURS["gpt2"][0])
    params = random_params(cfg)
    tok = train_tokenizer("bpe", "the cat sat on the mat " * 20, vocab_size=VOCAB + 200)
    export_hf(dataclasses.replace(cfg, vocab_size=tok.vocab_size), random_params(
        dataclasses.replace(cfg, vocab_size=tok.vocab_size)), tmp_path / "with-tokenizer", tok)
    export_hf(cfg, params, tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    for i in range(cfg.n_layers):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, params2, _ = import_hf(tmp_path)
    assert_same_params(params, params2)
    _, _, tok2 = import_hf(tmp_path / "with-tokenizer")
    assert tok2.eos_id == tok.eos_id and tok2.encode("the cat").tolist() == tok.encode("the cat").tolist()


def test_import_options(tmp_path):
    cfg = ModelConfig(**OURS["llama-gqa-bias"][0])
    export_hf(cfg, random_params(cfg), tmp_path, arch="llama", dtype="bfloat16")
    cfg2, params, _ = import_hf(tmp_path, max_len=16, attention_impl="reference")
    assert (cfg2.max_len, cfg2.attention_impl, cfg2.param_dtype) == (16, "reference", "float32")
    assert params["embed"]["embedding"].dtype == np.float32
    cfg3, params3, _ = import_hf(tmp_path, dtype="bfloat16")
    assert params3["embed"]["embedding"].dtype == jnp.bfloat16 and cfg3.dtype == "bfloat16"
    np.testing.assert_array_equal(params3["embed"]["embedding"].astype(np.float32), params["embed"]["embedding"])
    with pytest.raises(HFConversionError, match="n_layers"):
        import_hf(tmp_path, n_layers=1)
    # transformers v4 spelling of RoPE: rope_theta and rope_scaling (v5: rope_parameters).
    config = json.loads((tmp_path / "config.json").read_text())
    del config["rope_parameters"]
    (tmp_path / "config.json").write_text(json.dumps(dict(config, rope_theta=123.0, rope_scaling=None)))
    assert import_hf(tmp_path)[0].rope_base == 123.0


def _hf_dir(tmp_path, **config):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


LLAMA_JSON = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
GPT2_JSON = dict(model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)


@pytest.mark.parametrize("config, field", [
    (dict(GPT2_JSON, activation_function="gelu"), "activation_function"),
    (dict(GPT2_JSON, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(LLAMA_JSON, rope_scaling={"rope_type": "proportional", "factor": 2.0}), "rope_scaling"),
    (dict(LLAMA_JSON, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "low_freq_factor"),
    (dict(LLAMA_JSON, rope_scaling={"type": "linear", "factor": 2.0}, rope_parameters={"rope_type": "yarn"}),
     "disagree"),
    (dict(LLAMA_JSON, partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(LLAMA_JSON, rope_parameters={"rope_type": "default", "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (dict(LLAMA_JSON, hidden_act="gelu"), "hidden_act"),
    (dict(LLAMA_JSON, model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1),
     "layer_types"),
    (dict(LLAMA_JSON, quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (dict(LLAMA_JSON, model_type="gemma"), "model_type"),
    (dict(LLAMA_JSON, model_type="phi3", rope_parameters={"rope_type": "linear", "factor": 2.0}),
     "Phi3Config takes rope_type 'default' or 'longrope' only"),
    (dict(LLAMA_JSON, hidden_size=None), "hidden_size"),
])
def test_import_rejects_what_the_model_cannot_do(tmp_path, config, field):
    with pytest.raises(HFConversionError, match=field):
        import_hf(_hf_dir(tmp_path, **config))


# rope_parameters of each scaled type for LLAMA_JSON's head_dim of 8, over an original context of 16.
ROPE_JSON = {
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=3.0),
    "yarn": dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=16, beta_fast=16.0),
    "yarn-mscale": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, mscale=0.7,
                        mscale_all_dim=0.5, truncate=False),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16),
    "longrope": dict(rope_type="longrope", short_factor=[1.0, 1.25, 1.5, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0],
                     original_max_position_embeddings=16),  # factor: max_position_embeddings / 16
}


@pytest.mark.parametrize("name", sorted(ROPE_JSON))
def test_rope_scaling_config_round_trip(name):
    """A scaled RoPE imports from v5's rope_parameters, exports, and imports again the same, from either spelling
    of the export (v4: rope_theta + rope_scaling, whose legacy key 'type' also reads)."""
    from llm.hf.configs import hf_config, model_config_from_hf

    _, cfg = model_config_from_hf(dict(LLAMA_JSON, rope_parameters=dict(ROPE_JSON[name], rope_theta=50.0)))
    assert (cfg.rope_scaling, cfg.rope_base) == (name.split("-")[0], 50.0)
    exported = hf_config(cfg, "llama")
    assert model_config_from_hf(exported)[1] == cfg
    v4 = {k: v for k, v in exported.items() if k != "rope_parameters"}
    v4["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in v4["rope_scaling"].items()}
    assert model_config_from_hf(v4)[1] == cfg
    if name == "yarn-mscale":  # resolved as transformers does: mscale / mscale_all_dim
        assert cfg.rope_attention_factor == pytest.approx((0.07 * np.log(4) + 1) / (0.05 * np.log(4) + 1))
        assert not cfg.rope_truncate
    if name == "longrope":
        assert cfg.rope_factor == 2.0 and cfg.rope_long_factor == "1.0,2.0,4.0,8.0"
    if name == "dynamic":  # transformers' dynamic scaling starts beyond max_position_embeddings
        assert cfg.rope_original_max_len == 32
    if name == "llama3":  # a top-level original_max_position_embeddings (Phi-3's spelling) wins, as in transformers
        hf = dict(LLAMA_JSON, original_max_position_embeddings=8, rope_parameters=ROPE_JSON[name])
        assert model_config_from_hf(hf)[1].rope_original_max_len == 8


PHI3_JSON = dict(LLAMA_JSON, model_type="phi3", max_position_embeddings=64, original_max_position_embeddings=16,
                 sliding_window=8, resid_pdrop=0.1, embd_pdrop=0.1, pad_token_id=32000)
PHI3_LONGROPE = dict(rope_type="longrope", partial_rotary_factor=0.5, short_factor=[1.0, 1.5], long_factor=[2.0, 4.0])


@pytest.mark.parametrize("spelling", ["v5", "v4", "su"])
def test_phi3_config_round_trip(spelling):
    """Phi3Config's rules: partial_rotary_factor (in the RoPE parameters or, v4, at the top level), the top-level
    original_max_position_embeddings, 'su' for longrope, a window on every layer; dropout and pad id do not
    change the function. Exported and imported again, it is the same model."""
    from llm.hf.configs import hf_config, model_config_from_hf

    rope = dict(PHI3_LONGROPE, rope_theta=50.0)
    if spelling == "v5":
        hf = dict(PHI3_JSON, rope_parameters=rope)
    else:
        partial = rope.pop("partial_rotary_factor")
        hf = dict(PHI3_JSON, rope_scaling={**rope, "type": "su" if spelling == "su" else "longrope"},
                  partial_rotary_factor=partial)
        del hf["rope_scaling"]["rope_type"]
    _, cfg = model_config_from_hf(hf)
    assert (cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_max_len, cfg.rotary_fraction, cfg.window) == (
        "longrope", 4.0, 16, 0.5, 8)
    assert (cfg.use_bias, cfg.qk_norm, cfg.norm_eps) == (False, False, 1e-6)
    exported = hf_config(cfg, "phi3")
    assert exported["original_max_position_embeddings"] == 16 and exported["pad_token_id"] is None
    assert model_config_from_hf(exported)[1] == cfg
    # Without the top-level field Phi3Config's default, 4096, is the original context (not rope_parameters').
    hf = {k: v for k, v in hf.items() if k not in ("rope_scaling", "original_max_position_embeddings")}
    rope = dict(PHI3_LONGROPE, original_max_position_embeddings=16)
    hf = dict(hf, max_position_embeddings=8192, rope_parameters=rope)
    assert model_config_from_hf(hf)[1].rope_original_max_len == 4096


def test_phi3_fused_projections(tmp_path):
    """Phi-3's q|k|v and gate|up are fused in the file: read as another architecture's names, or alongside the
    split names, they are refused naming the tensor."""
    from safetensors.numpy import load_file, save_file

    cfg = ModelConfig(**OURS["llama-nobias-scan"][0])  # 4 query heads, 1 KV head, head_dim 16
    params = random_params(cfg)
    export_hf(cfg, params, tmp_path / "phi3", arch="phi3")
    tensors = load_file(tmp_path / "phi3" / "model.safetensors")
    assert tensors["model.layers.0.self_attn.qkv_proj.weight"].shape == ((4 + 1 + 1) * 16, 32)
    assert tensors["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * cfg.hidden_ff, 32)
    config = json.loads((tmp_path / "phi3" / "config.json").read_text())
    (tmp_path / "phi3" / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(HFConversionError, match=r"no tensor 'layers\.0\.self_attn\.q_proj\.weight'"):
        import_hf(tmp_path / "phi3")
    (tmp_path / "phi3" / "config.json").write_text(json.dumps(config))
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.down_proj.weight"].T
    save_file(tensors, tmp_path / "phi3" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFConversionError, match=r"both layers\.1\.mlp\.gate_up_proj\.weight and"):
        import_hf(tmp_path / "phi3")
    export_hf(cfg, params, tmp_path / "llama", arch="llama")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps(dict(config, model_type="phi3")))
    with pytest.raises(HFConversionError, match=r"no tensor 'layers\.0\.self_attn\.qkv_proj\.weight'"):
        import_hf(tmp_path / "llama")


def test_import_file_errors(tmp_path):
    with pytest.raises(HFConversionError, match="not a directory"):
        import_hf(tmp_path / "nope")
    with pytest.raises(HFConversionError, match=r"config\.json"):
        import_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(HFConversionError, match=r"pytorch_model\.bin: only safetensors"):
        import_hf(_hf_dir(tmp_path, **LLAMA_JSON))
    # Weights that do not fit the config: a wrong shape, a missing tensor, a tensor too many.
    cfg = ModelConfig(**OURS["gpt2"][0])
    export_hf(cfg, random_params(cfg), tmp_path / "g")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps(dict(config, n_inner=64)))
    with pytest.raises(HFConversionError, match="shape"):
        import_hf(tmp_path / "g")
    (tmp_path / "g" / "config.json").write_text(json.dumps(dict(config, n_layer=3)))
    with pytest.raises(HFConversionError, match=r"no tensor 'h\.2"):
        import_hf(tmp_path / "g")
    (tmp_path / "g" / "config.json").write_text(json.dumps(dict(config, n_layer=1)))
    with pytest.raises(HFConversionError, match="does not use"):
        import_hf(tmp_path / "g")


@pytest.mark.parametrize("fields, arch, match", [
    (dict(position="alibi"), "gpt2", "model.position='alibi'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope"), "gpt2", "arch='llama'"),
    (dict(n_kv_heads=2), "gpt2", "n_kv_heads"),
    (dict(use_bias=False), "gpt2", "use_bias"),
    (dict(short_conv=3), "gpt2", "model.short_conv=3"),
    (dict(), "llama", "model.position='learned'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", window=8), "llama", "arch='mistral'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", qk_norm=True), "llama", "arch='qwen3'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope"), "qwen3", "qk_norm"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", norm_position="post"), "llama", "norm_position"),
    (dict(norm="rmsnorm", ffn="geglu", position="rope"), "llama", "ffn"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope"), "mistral", "biases"),  # nonzero biases
    (dict(norm="rmsnorm", ffn="swiglu", position="rope"), "qwen2", "biases"),
    (dict(), "gpt-3", "arch="),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", rotary_fraction=0.5), "llama", "arch='phi3'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", use_bias=False, rope_scaling="linear", rope_factor=2.0),
     "phi3", "model.rope_scaling='linear'.*arch='llama'"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope", use_bias=False, qk_norm=True), "phi3", "qk_norm"),
    (dict(norm="rmsnorm", ffn="swiglu", position="rope"), "phi3", "biases"),  # nonzero biases
])
def test_export_rejects_what_the_architecture_cannot_hold(tmp_path, fields, arch, match):
    cfg = ModelConfig(**SMALL, **fields)
    with pytest.raises(HFConversionError, match=match):
        export_hf(cfg, random_params(cfg), tmp_path, arch=arch)


def test_export_checks_params_tokenizer_and_folder(tmp_path):
    cfg = ModelConfig(**SMALL)
    params = random_params(cfg)
    with pytest.raises(HFConversionError, match="do not fit the model config"):
        export_hf(ModelConfig(**dict(SMALL, d_model=64)), params, tmp_path)
    with pytest.raises(HFConversionError, match="char tokenizer"):
        export_hf(cfg, params, tmp_path, train_tokenizer("char", "abc"))
    with pytest.raises(HFConversionError, match="dtype='int8' is not a dtype"):
        export_hf(cfg, params, tmp_path, dtype="int8")
    export_hf(cfg, params, tmp_path)
    with pytest.raises(HFConversionError, match="already holds"):
        export_hf(cfg, params, tmp_path)
    export_hf(cfg, params, tmp_path, overwrite=True)
    # Qwen2 holds q/k/v biases only: all-zero output and MLP biases export, as does a bias-free model as Llama.
    cfg = ModelConfig(**dict(SMALL, norm="rmsnorm", ffn="swiglu", position="rope"))
    params = random_params(cfg)
    for layer in (params["layers_0"], params["layers_1"]):
        layer["attention"]["out"]["bias"][:] = 0
        for name in ("gate", "up", "down"):
            layer["feed_forward"][name]["bias"][:] = 0
    export_hf(cfg, params, tmp_path / "q", arch="qwen2")
    _, params2, _ = import_hf(tmp_path / "q")
    assert_same_params(params, params2)


# ------------------------------------------------------------------------------------------------------------
# against transformers


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    return SimpleNamespace(torch=torch, transformers=transformers)


def randomize(hf, model, seed=0):
    """Random weights everywhere (biases and norm gains included: HF initialises those to 0 and 1)."""
    gen = hf.torch.Generator().manual_seed(seed)
    with hf.torch.no_grad():
        for name, p in model.named_parameters():
            noise = hf.torch.randn(p.shape, generator=gen) * 0.1
            gain = p.ndim == 1 and name.endswith("weight")  # every 1-D weight is a norm's gain
            p.copy_(1.0 + noise if gain else noise)
    return model.eval()


def hf_gpt2(hf, **kw):
    config = hf.transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                                        bos_token_id=EOS, eos_token_id=EOS, **kw)
    return randomize(hf, hf.transformers.GPT2LMHeadModel(config))


def hf_llama_family(hf, model_type="llama", **kw):
    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=160, max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=99,
                eos_token_id=EOS)
    config = hf.transformers.AutoConfig.for_model(model_type, **{**base, **kw})
    return randomize(hf, hf.transformers.AutoModelForCausalLM.from_config(config))


def hf_logits(hf, model, tokens=TOKENS):
    with hf.torch.no_grad():
        return model(hf.torch.tensor(tokens, dtype=hf.torch.long)).logits.float().numpy()


MODELS = {
    "gpt2": lambda hf: (hf_gpt2(hf), "gpt2"),
    "gpt2-untied": lambda hf: (hf_gpt2(hf, tie_word_embeddings=False, n_inner=96), "gpt2"),
    "llama": lambda hf: (hf_llama_family(hf, rope_theta=500.0), "llama"),
    "llama-tied": lambda hf: (hf_llama_family(hf, tie_word_embeddings=True, num_key_value_heads=1), "llama"),
    "llama-biases": lambda hf: (hf_llama_family(hf, attention_bias=True, mlp_bias=True), "llama"),
    "mistral-window": lambda hf: (hf_llama_family(hf, "mistral", sliding_window=8), "mistral"),
    "qwen2": lambda hf: (hf_llama_family(hf, "qwen2"), "qwen2"),
    "qwen3": lambda hf: (hf_llama_family(hf, "qwen3", head_dim=32), "qwen3"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformers_models_import_export_exactly(hf, tmp_path, name):
    model, arch = MODELS[name](hf)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    want = hf_logits(hf, model)

    cfg, params, _ = import_hf(tmp_path / "hf")
    got = logits(cfg, params)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    reloaded = export_round_trips(hf, cfg, params, model, tmp_path / "out", arch)
    np.testing.assert_allclose(hf_logits(hf, reloaded.eval()), want, atol=1e-6, rtol=0)


LONG = np.random.default_rng(1).integers(0, VOCAB, (2, 32)).astype(np.int32)
# rope_parameters of each scaled type for hf_llama_family's head_dim of 16: max_position_embeddings 32 over an
# original context of 16, so LONG goes beyond it (dynamic: beyond max_position_embeddings 16). rope_theta 100 puts
# frequencies in each of llama3's bands and on yarn's ramp.
ROPE_MODELS = {
    "linear": dict(rope_type="linear", factor=2.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "yarn": dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=16),
    "llama3": dict(rope_type="llama3", factor=4.0, low_freq_factor=0.5, high_freq_factor=2.0,
                   original_max_position_embeddings=16),
    "longrope": dict(rope_type="longrope", original_max_position_embeddings=16,
                     short_factor=[1.0 + 0.1 * i for i in range(8)], long_factor=[1.0 + 0.5 * i for i in range(8)]),
}


def max_logit_diff(name, got, want):
    """max |ours - transformers'| over the given logits, printed for the record (pytest -rP shows it)."""
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
    print(f"max |logit diff| {name}: {diff:.2e}")
    return diff


@pytest.mark.parametrize("kind", sorted(ROPE_MODELS))
def test_rope_scaling_matches_transformers(hf, tmp_path, kind):
    """Each scaled RoPE on a sequence beyond the original context and on one within it (dynamic and longrope
    switch there), then exported: transformers reads our config.json as the same model."""
    model = hf_llama_family(hf, max_position_embeddings=16 if kind == "dynamic" else 32,
                            rope_parameters=dict(ROPE_MODELS[kind], rope_theta=100.0))
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    lengths = (LONG, LONG[:, :12])
    want = [hf_logits(hf, model, t) for t in lengths]  # long first: transformers' dynamic resets below 16

    cfg, params, _ = import_hf(tmp_path / "hf", max_len=32)
    assert cfg.rope_scaling == kind
    assert max_logit_diff(kind, [logits(cfg, params, t) for t in lengths], want) < 1e-4

    export_hf(cfg, params, tmp_path / "out", arch="llama")
    assert import_hf(tmp_path / "out", max_len=32)[0] == cfg
    reloaded = hf.transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(hf_logits(hf, reloaded, LONG), want[0], atol=1e-6, rtol=0)


PHI3_ROPE = {
    "plain": dict(rope_type="default"),  # with a sliding window and tied embeddings (Phi-4-mini ties them)
    "partial": dict(rope_type="default", partial_rotary_factor=0.5),
    "partial-longrope": dict(rope_type="longrope", partial_rotary_factor=0.75,  # Phi-4-mini's kind
                             short_factor=ROPE_MODELS["longrope"]["short_factor"][:6],
                             long_factor=ROPE_MODELS["longrope"]["long_factor"][:6]),
}


def hf_phi3(hf, rope, **kw):
    """A random Phi3ForCausalLM of hf_llama_family's shapes: fused q|k|v and gate|up projections, RoPE on the first
    int(head_dim * partial_rotary_factor) channels (transformers' Llama-family models rotate whole heads)."""
    config = hf.transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, original_max_position_embeddings=16,
        rope_parameters=dict(rope, rope_theta=100.0), pad_token_id=None, bos_token_id=99, eos_token_id=EOS, **kw)
    return randomize(hf, hf.transformers.Phi3ForCausalLM(config))


@pytest.mark.parametrize("name", sorted(PHI3_ROPE))
def test_phi3_matches_transformers(hf, tmp_path, name):
    """Phi-3 through the public import (model.rotary_fraction, longrope on both sides of the original context,
    the window), then exported: transformers loads the same model, and it imports back to the same params."""
    plain = name == "plain"
    model = hf_phi3(hf, PHI3_ROPE[name], sliding_window=8 if plain else None, tie_word_embeddings=plain)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    lengths = (LONG, LONG[:, :12])
    want = [hf_logits(hf, model, t) for t in lengths]

    cfg, params, _ = import_hf(tmp_path / "hf")
    assert (cfg.rotary_fraction, cfg.window, cfg.tie_embeddings) == (
        PHI3_ROPE[name].get("partial_rotary_factor", 1.0), 8 if plain else None, plain)
    assert max_logit_diff(f"phi3-{name}", [logits(cfg, params, t) for t in lengths], want) < 1e-4

    reloaded = export_round_trips(hf, cfg, params, model, tmp_path / "out", "phi3")
    for tokens, w in zip(lengths, want, strict=True):
        np.testing.assert_allclose(hf_logits(hf, reloaded.eval(), tokens), w, atol=1e-6, rtol=0)


def test_bfloat16_sharded_checkpoint(hf, tmp_path):
    model = hf_llama_family(hf).to(hf.torch.bfloat16)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    cfg, params, _ = import_hf(tmp_path / "hf", dtype="bfloat16")
    theirs = model.model.layers[1].self_attn.k_proj.weight.detach().float().numpy()  # [K*D, E]
    ours = params["layers_1"]["attention"]["key"]["kernel"]  # [E, K, D]
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(ours.astype(np.float32).reshape(64, -1).T, theirs)
    cfg32, params32, _ = import_hf(tmp_path / "hf")
    # Not model.float(): casting to bfloat16 rounded its RoPE frequencies too.
    model32 = hf.transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=hf.torch.float32).eval()
    np.testing.assert_allclose(logits(cfg32, params32), hf_logits(hf, model32), atol=1e-4, rtol=0)
    export_hf(cfg, params, tmp_path / "out", arch="llama")  # written as bfloat16, the params' dtype
    _, params2, _ = import_hf(tmp_path / "out", dtype="bfloat16")
    assert_same_params(params, params2)


def hf_tokenizer_file(path):
    """A character-level HF tokenizer.json with VOCAB ids, the last one '<|endoftext|>'."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t", "é", "ü", "ß"]
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    assert tok.get_vocab_size() == VOCAB
    tok.save(str(path))


def test_workdir_sampling_matches_transformers_generate(hf, tmp_path):
    from llm.inference import generate, sample_texts
    from llm.runs import load_run

    model = hf_gpt2(hf)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    hf_tokenizer_file(tmp_path / "hf" / "tokenizer.json")
    import_to_workdir(tmp_path / "hf", tmp_path / "run")
    with pytest.raises(HFConversionError, match="not an empty directory"):
        import_to_workdir(tmp_path / "hf", tmp_path / "run")

    run = load_run(tmp_path / "run")
    assert run.step == 0 and run.tokenizer.eos_id == EOS and run.model.cfg.max_len == 64
    prompt = run.tokenizer.encode("Hello, world")
    ours = generate(run.model, run.params, [prompt], SamplingParams(max_new_tokens=10, temperature=0.0), eos_id=EOS)[0]
    with hf.torch.no_grad():
        ids = hf.torch.tensor(prompt[None], dtype=hf.torch.long)
        theirs = model.generate(ids, attention_mask=hf.torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                pad_token_id=EOS)[0, len(prompt):].numpy()
    np.testing.assert_array_equal(ours, theirs)
    text = sample_texts(run.model, run.params, run.tokenizer, ["Hello, world"],
                        SamplingParams(max_new_tokens=10, temperature=0.0))[0]
    assert text == "Hello, world" + run.tokenizer.decode(ours)

    export_workdir(tmp_path / "run", tmp_path / "out", "gpt2")
    reloaded = hf.transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(hf_logits(hf, reloaded), hf_logits(hf, model), atol=1e-6, rtol=0)
    assert reloaded.config.eos_token_id == EOS and reloaded.config.bos_token_id == EOS
    hf_tok = hf.transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok("Hello, world")["input_ids"] == prompt.tolist() and hf_tok.eos_token_id == EOS


def test_convert_from_the_command_line(tmp_path, capsys):
    """`llm convert import` / `export`: a folder without tokenizer.json needs --tokenizer, which the message names;
    nothing is written when it is refused."""
    from llm.cli import main

    cfg = ModelConfig(**SMALL)
    export_hf(cfg, random_params(cfg), tmp_path / "hf", arch="gpt2")  # model only, no tokenizer.json
    assert main(["convert", "import", str(tmp_path / "hf"), str(tmp_path / "run")]) == 2
    assert "llm convert import --tokenizer PATH" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    hf_tokenizer_file(tmp_path / "tokenizer.json")
    assert main(["convert", "import", str(tmp_path / "hf"), str(tmp_path / "run"), "--tokenizer",
                 str(tmp_path / "tokenizer.json")]) == 0
    assert main(["convert", "export", str(tmp_path / "run"), str(tmp_path / "out"), "--arch", "gpt2"]) == 0
    capsys.readouterr()
    assert_same_params(import_hf(tmp_path / "out")[1], import_hf(tmp_path / "hf")[1])
    assert main(["convert", "export", str(tmp_path / "run"), str(tmp_path / "out"), "--arch", "gpt2"]) == 2
    assert "already holds" in capsys.readouterr().err  # never overwritten
    assert main(["convert", "import", str(tmp_path / "hf"), str(tmp_path / "run2"), "--tokenizer",
                 str(tmp_path / "nope.json")]) == 2
    assert "--tokenizer" in capsys.readouterr().err and not (tmp_path / "run2").exists()


def test_finetune_starts_from_a_hugging_face_folder(tmp_path):
    """finetune.init_from=hf:DIR: the run takes the folder's architecture, weights and tokenizer; its step-0
    losses are the imported model's, and the first checkpoint's parameters differ from them only by training."""
    from conftest import make_corpus

    from llm.config import get_base_config
    from llm.runs import load_run
    from llm.training import train

    cfg = ModelConfig(**SMALL)
    params = random_params(cfg)
    (tmp_path / "hf").mkdir()
    hf_tokenizer_file(tmp_path / "hf" / "tokenizer.json")
    export_hf(cfg, params, tmp_path / "hf", arch="gpt2", overwrite=True)
    c = get_base_config()
    c.data.corpus, c.data.cache_dir = str(make_corpus(tmp_path / "corpus.txt")), str(tmp_path / "cache")
    c.finetune.init_from = f"hf:{tmp_path / 'hf'}"
    c.model.max_len = 32
    c.train.steps, c.train.batch_size, c.train.eval_every, c.train.eval_batches, c.train.progress = 2, 4, 2, 1, False
    c.optim.lr, c.optim.warmup_steps, c.sample.num_samples = 1e-9, 0, 0  # a step that barely moves the weights
    train(c, tmp_path / "run", log=lambda *_: None)
    run = load_run(tmp_path / "run")
    assert (run.model.cfg.d_model, run.model.cfg.n_layers, run.tokenizer.kind) == (32, 2, "bpe")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and np.isfinite(first["val_loss"])
    for k, v in leaves(params).items():
        np.testing.assert_allclose(leaves(run.params)[k], v, atol=1e-6)
