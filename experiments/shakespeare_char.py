"""nanoGPT's character-level tiny Shakespeare, with the same split (first 90% / last 10% of characters).

    llm train --config experiments/shakespeare_char.py:baby --workdir runs/baby
    llm train --config experiments/shakespeare_char.py:small --workdir runs/small

baby:  nanoGPT's CPU command (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iters, lr 1e-3 decaying over
       2000 iters to 1e-4, dropout 0, eval_iters 20); nanoGPT reaches val loss 1.886 at 2000 on this machine.
small: nanoGPT's train_shakespeare_char.py (6x6x384, context 256, batch 64, dropout 0.2, lr 1e-3, 5000 iters).
"""

from llm.config import get_base_config

PRESETS = ("baby", "small")


def get_config(arg=None):
    arg = arg or "baby"
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; choose one of {', '.join(PRESETS)}")
    c = get_base_config()
    c.data.corpus = "tinyshakespeare"
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.1
    # nanoGPT: GPT-2 architecture with bias=False, learned positions, tied embeddings, AdamW(0.9, 0.99),
    # weight decay 0.1, warmup 100, cosine to lr/10, clip 1.0, eval_iters batches for each split.
    c.model.position = "learned"
    c.model.norm = "layernorm"
    c.model.use_bias = False
    c.model.tie_embeddings = True
    c.optim.name = "adamw"
    c.optim.b1, c.optim.b2 = 0.9, 0.99
    c.optim.weight_decay = 0.1
    c.optim.decay_embeddings = True  # nanoGPT decays every 2-D weight, the embedding tables included
    c.optim.clip_norm = 1.0
    c.optim.schedule = "cosine"
    c.optim.min_lr_ratio = 0.1
    c.sample.prompt = "\n"
    if arg == "baby":
        c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.max_len = 4, 4, 128, 64
        c.model.dropout = 0.0
        c.train.batch_size = 12
        c.train.steps = 2000
        c.train.eval_every = 250
        c.train.eval_batches = 20
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 100
        c.optim.decay_steps = 2000
    else:
        c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.max_len = 6, 6, 384, 256
        c.model.dropout = 0.2
        c.train.batch_size = 64
        c.train.steps = 5000
        c.train.eval_every = 250
        c.train.eval_batches = 200
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 100
        c.optim.decay_steps = 5000
    c.train.checkpoint_every = c.train.eval_every
    return c
