"""Hugging Face interop: GPT-2 and Llama-family (Llama, Mistral, Qwen2, Qwen3, Phi-3) checkpoints in and out.

Convert a downloaded checkpoint (weights cannot be downloaded by the code here; fetch them first):

    huggingface-cli download gpt2 --local-dir gpt2          # or `hf download gpt2 --local-dir gpt2`
    python -c "from llm.hf import import_to_workdir; import_to_workdir('gpt2', 'runs/gpt2')"
    llm sample --workdir runs/gpt2 --prompt 'Hello, my name is' --temperature 0.8

or in Python, without a workdir:

    from llm.hf import import_hf, export_hf
    from llm.model import Transformer
    cfg, params, tokenizer = import_hf("gpt2")            # ModelConfig, params (numpy), BPETokenizer | None
    logits = Transformer(cfg).apply({"params": params}, tokenizer.encode("Hello")[None])
    export_hf(cfg, params, "gpt2-roundtrip", tokenizer, arch="gpt2")   # transformers' from_pretrained loads it

A Llama-family model the same way, e.g. `huggingface-cli download TinyLlama/TinyLlama-1.1B-Chat-v1.0
--local-dir tinyllama` then `import_to_workdir("tinyllama", "runs/tinyllama", max_len=2048)` (max_len: a shorter
context than max_position_embeddings shrinks the KV cache of sampling; dtype="bfloat16" halves the memory).
Sampling does not add a BOS token: Llama models want one, so start the prompt with its text (e.g. '<s>').

What is read: config.json, model.safetensors or the shards of model.safetensors.index.json (numpy, no torch;
bfloat16 included), tokenizer.json (+ tokenizer_config.json's eos_token). What is supported, exactly or not at all
(anything else raises HFConversionError, a ValueError, naming the config field):
  gpt2     learned positions (n_positions), LayerNorm (layer_norm_epsilon), MLP n_inner with activation_function
           gelu_new / gelu_pytorch_tanh / gelu_fast (= our tanh-approximate gelu), relu or silu, biases, tied or
           untied lm_head. Rejected: activation 'gelu' (exact erf), scale_attn_by_inverse_layer_idx,
           scale_attn_weights=false, cross-attention.
  llama    RoPE (rope_theta; rope_type default, linear, dynamic, yarn, llama3 (Llama 3.1/3.2), longrope, from
  mistral  rope_scaling or rope_parameters; partial_rotary_factor is rejected: these models rotate whole heads),
  qwen2    RMSNorm (rms_norm_eps), SwiGLU (hidden_act silu, intermediate_size), GQA (num_key_value_heads),
  qwen3    head_dim, attention_bias / mlp_bias (Qwen2's q/k/v biases; absent biases become zeros),
           tie_word_embeddings, Mistral's sliding_window (every layer; Qwen's window on some layers only is
           rejected), Qwen3's q_norm / k_norm (our qk_norm). Quantized checkpoints are rejected.
  phi3     Phi-3 / Phi-3.5 / Phi-4-mini: the Llama mapping with fused qkv_proj (q|k|v) and gate_up_proj (gate|up),
           no biases; rope_type default or longrope (short/long factors; legacy 'su' and 'yarn' are longrope, as
           in Phi3Config) with the top-level original_max_position_embeddings (default 4096);
           partial_rotary_factor (our rotary_fraction); sliding_window on every layer as Mistral's.
           resid_pdrop / embd_pdrop (training only) and pad_token_id are not read.
Export checks the reverse: e.g. ALiBi, RMSNorm or SwiGLU cannot be GPT-2; a window needs arch='mistral' or 'phi3',
QK-norm arch='qwen3', rotary_fraction < 1 arch='phi3' (plain RoPE or longrope only); biases an architecture cannot
hold must be all zeros (they are left out, e.g. Qwen2's o_proj; Phi-3 has none).
"""

from llm.hf.configs import ARCHS, HFConversionError
from llm.hf.convert import export_hf, import_hf
from llm.hf.workdir import export_workdir, import_to_workdir

__all__ = ["ARCHS", "HFConversionError", "export_hf", "export_workdir", "import_hf", "import_to_workdir"]
