"""GPT-2 shapes (Radford et al. 2019): learned positions, LayerNorm pre-norm, GELU MLP, tied embeddings, biases.

    llm train --config experiments/gpt2.py:124m --workdir runs/gpt2 --config.data.corpus=/path/to/text

Presets: 124m (12 x 768, 12 heads), 350m (24 x 1024, 16 heads), tiny (a 4 x 128 shape for smoke tests).
The vocabulary is a byte-level BPE trained on the corpus (data.vocab_size, default 50257 as GPT-2's).
"""

from llm.config import get_base_config

SHAPES = {  # n_layers, d_model, n_heads
    "124m": (12, 768, 12),
    "350m": (24, 1024, 16),
    "tiny": (4, 128, 4),
}


def get_config(arg=None):
    arg = arg or "124m"
    if arg not in SHAPES:
        raise ValueError(f"unknown preset {arg!r}; choose one of {', '.join(SHAPES)}")
    c = get_base_config()
    c.model.n_layers, c.model.d_model, c.model.n_heads = SHAPES[arg]
    c.model.max_len = 1024 if arg != "tiny" else 128
    c.model.position = "learned"
    c.model.norm = "layernorm"
    c.model.ffn = "mlp"
    c.model.activation = "gelu"
    c.model.use_bias = True
    c.model.tie_embeddings = True
    c.model.dropout = 0.0
    if arg != "tiny":
        c.model.attention_impl = "xla"  # GPU-sized: "cudnn" or "flash" are faster there (benchmarks/train.py)
    c.data.tokenizer = "bpe"
    c.data.vocab_size = 50257 if arg != "tiny" else 1024
    c.train.batch_size = 8
    c.train.steps = 5000
    c.optim.lr = 6e-4
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 0.1
    return c
