"""GPT-2 124M on OpenWebText with nanoGPT's recipe (config/train_gpt2.py), for machines with a network and GPUs.

Prepare the data once (about 9 B tokens; a byte-level BPE of GPT-2's size trained on a 256 MB sample):

    llm prepare hf:Skylion007/openwebtext --out data/openwebtext --tokenizer bpe --vocab_size 50257 \\
        --sample_chars 268435456 --val_fraction 0.0005

then train:

    llm train --config experiments/openwebtext.py --workdir runs/owt --config.data.corpus=data/openwebtext

Presets: `124m` (the default: 12 x 768, context 1024, 0.5 M tokens per step as 12 rows x 40 accumulation steps x
1024 on one device; scale train.batch_size with the devices and lower train.grad_accum to match), and `tiny`
(a 2 x 64 shape on the same recipe, for trying a prepared dataset on a CPU).
"""

from llm.config import get_base_config

PRESETS = ("124m", "tiny")


def get_config(arg=None):
    arg = arg or "124m"
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; choose one of {', '.join(PRESETS)}")
    c = get_base_config()
    c.data.corpus = "data/openwebtext"
    c.data.pack_documents = False  # nanoGPT trains on windows across document boundaries
    # nanoGPT's model: GPT-2 with bias=False, dropout 0, tied embeddings, learned positions.
    c.model.position = "learned"
    c.model.norm = "layernorm"
    c.model.ffn = "mlp"
    c.model.activation = "gelu"
    c.model.use_bias = False
    c.model.tie_embeddings = True
    c.model.dropout = 0.0
    # nanoGPT's optimizer: AdamW(6e-4, 0.9, 0.95), weight decay 0.1 on 2-D weights, clip 1.0, warmup 2000, cosine
    # to 6e-5 at 600k iterations.
    c.optim.name = "adamw"
    c.optim.lr = 6e-4
    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.1
    c.optim.decay_embeddings = True
    c.optim.clip_norm = 1.0
    c.optim.schedule = "cosine"
    c.optim.min_lr_ratio = 0.1
    c.optim.warmup_steps = 2000
    c.train.steps = 600_000
    c.train.eval_every = 1000
    c.train.eval_batches = 200
    c.train.checkpoint_every = 1000
    if arg == "124m":
        c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.max_len = 12, 12, 768, 1024
        c.model.attention_impl = "xla"  # on GPUs "cudnn" or "flash" are faster (benchmarks/train.py)
        c.train.batch_size, c.train.grad_accum = 12 * 40, 40
    else:
        c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.max_len = 2, 2, 64, 64
        c.train.batch_size, c.train.grad_accum = 8, 1
        c.train.steps, c.optim.warmup_steps = 20, 5
        c.train.eval_every = c.train.checkpoint_every = 10
        c.train.eval_batches = 2
    return c
