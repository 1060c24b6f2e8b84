"""A Llama-style model: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied output matrix.

    llm train --config experiments/llama.py:tiny --workdir runs/llama

Presets: tiny (4 x 128, 4 heads / 2 KV heads; trains on CPU), 350m (24 x 1024, 16/4 heads), 1b (16 x 2048,
32/8 heads, Llama-3.2-1B's shape).
"""

from llm.config import get_base_config

SHAPES = {  # n_layers, d_model, n_heads, n_kv_heads, d_ff, max_len
    "tiny": (4, 128, 4, 2, None, 128),
    "350m": (24, 1024, 16, 4, 2816, 2048),
    "1b": (16, 2048, 32, 8, 8192, 2048),
}


def get_config(arg=None):
    arg = arg or "tiny"
    if arg not in SHAPES:
        raise ValueError(f"unknown preset {arg!r}; choose one of {', '.join(SHAPES)}")
    c = get_base_config()
    (c.model.n_layers, c.model.d_model, c.model.n_heads, c.model.n_kv_heads, c.model.d_ff,
     c.model.max_len) = SHAPES[arg]
    c.model.position = "rope"
    c.model.rope_base = 10000.0 if arg == "tiny" else 500000.0
    c.model.norm = "rmsnorm"
    c.model.norm_eps = 1e-5
    c.model.ffn = "swiglu"
    c.model.use_bias = False
    c.model.tie_embeddings = arg == "1b"
    c.model.dropout = 0.0
    if arg != "tiny":
        c.model.dtype = "bfloat16"
        c.model.attention_impl = "xla"  # GPU-sized: "cudnn" or "flash" are faster there (benchmarks/train.py)
        c.model.scan_layers = True
        c.model.remat = "dots"
        c.data.tokenizer = "bpe"
        c.data.vocab_size = 32000
    c.optim.lr = 3e-4 if arg != "tiny" else 2e-3
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.1
    return c
