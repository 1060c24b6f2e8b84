"""Recall against state: every sequence mixer on Zoology's multi-query associative recall (MQAR).

    llm sweep experiments/mixers_mqar.py:lr --workdir runs/mixers_lr --parallel 2    # 1. learning rates
    llm report runs/mixers_lr                                                       #    -> LR below
    llm sweep experiments/mixers_mqar.py --workdir runs/mixers_mqar --parallel 2     # 2. widths x seeds
    llm report runs/mixers_mqar                         # table, state.png and width.png (recall against both)

Stage 2's width-64 seed-0 runs are stage 1's at the chosen rates (same names and configs): copy those run
directories into runs/mixers_mqar first and the sweep skips them as finished.

The task (`llm/data/synthetic.py`, `layout=zoology`): length 256, 16 key-value pairs, then the 16 keys again as
queries at power-law gaps; accuracy counts the 16 answers. The model is Zoology's: 2 layers, widths 64, 128, 256;
here 4 heads, RoPE (for the attention layers), a short causal convolution (kernel 3) on queries, keys and values of
every mixer (as Based, GLA, DeltaNet and Zoology's attention baseline have), training rows with 4-16 pairs (Zoology
trains on a mixture), vocabulary 256 instead of 8192 (see experiments/results/attention_ablation.md for why these
fit a CPU budget).

Mixers: softmax attention, sliding-window attention (64 tokens), and every `model.mixer`: linear (elu+1 feature
map), based (Taylor map on 16 dimensions + the 64-token window), retnet, gla, mamba2, deltanet, gated_deltanet.
The learning rate of each mixer is the best of `LR_GRID` at width 64, seed 0 (stage 1, `get_sweep("lr")`, written
into `LR` by hand from its report); stage 2 runs every mixer at its learning rate for every width and seed.
Chunks of 16 tokens (`model.mixer_chunk`): on a CPU the chunk's C x C (x K for GLA) work dominates, so small
chunks are fastest. `llm report` gives each run's decoding state (numbers a sequence keeps to decode,
`llm.model.mixers.decode_state_size`; attention: keys and values of its context or window) and plots accuracy
against it.

A check that every mixer can learn recall at all, whatever stage 2 shows (`:easy`, ~30 min on 2 CPU cores): 4 pairs at
length 64 (2-4 in training rows), 400 steps, every mixer at width 64 and each rate of LR_GRID.

    llm sweep experiments/mixers_mqar.py:easy --workdir runs/mixers_easy --parallel 2

Results: experiments/results/mixers_mqar.md.
"""

from llm.config import get_base_config
from llm.sweep import chain

LENGTH, PAIRS, VOCAB = 256, 16, 256
EASY_LENGTH, EASY_PAIRS, EASY_STEPS = 64, 4, 400
WIDTHS = (64, 128, 256)
SEEDS = (0, 1)
LR_GRID = (1e-3, 3e-3, 1e-2)
WINDOW = 64
MIXERS = {  # run name -> overrides
    "attention": {},
    "window": {"model.window": WINDOW},
    "linear": {"model.mixer": "linear", "model.feature_map": "elu"},
    "based": {"model.mixer": "based", "model.feature_map": "taylor", "model.window": WINDOW},
    "retnet": {"model.mixer": "retnet"},
    "gla": {"model.mixer": "gla"},
    "mamba2": {"model.mixer": "mamba2"},
    "deltanet": {"model.mixer": "deltanet"},
    "gated_deltanet": {"model.mixer": "gated_deltanet"},
}
# Stage 1's choice per mixer: the best final validation accuracy of LR_GRID (ties: the smaller rate); the table is
# in experiments/results/mixers_mqar.md.
LR: dict[str, float] = {
    "attention": 1e-2, "window": 1e-3, "linear": 1e-2, "based": 1e-2, "retnet": 1e-3, "gla": 1e-3, "mamba2": 1e-3,
    "deltanet": 3e-3, "gated_deltanet": 1e-3,
}


def get_config(arg=None):
    if arg not in (None, "", "lr", "easy"):
        raise ValueError(f"mixers_mqar presets: '' or 'lr' (length {LENGTH}, {PAIRS} pairs), 'easy' (length "
                         f"{EASY_LENGTH}, {EASY_PAIRS} pairs); got {arg!r}")
    length, pairs = (EASY_LENGTH, EASY_PAIRS) if arg == "easy" else (LENGTH, PAIRS)
    c = get_base_config()
    c.data.synthetic = f"mqar:pairs={pairs},vocab={VOCAB},layout=zoology,min_pairs={max(2, pairs // 4)}"
    c.model.d_model, c.model.n_layers, c.model.n_heads = 128, 2, 4
    c.model.max_len = length
    c.model.position = "rope"
    c.model.short_conv = 3
    c.model.mixer_chunk = 16
    c.model.dropout = 0.0
    c.train.batch_size = 32
    c.train.steps = EASY_STEPS if arg == "easy" else 600
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 300
    c.train.log_every = 50
    c.train.progress = False
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 60
    c.optim.weight_decay = 0.1
    c.sample.num_samples = 0
    return c


def _run(mixer, width, seed, lr):
    return {"_name": f"{mixer}-d{width}-s{seed}-lr{lr:g}", **MIXERS[mixer], "model.d_model": width, "seed": seed,
            "optim.lr": lr}


def get_sweep(arg=None):
    if arg in ("lr", "easy"):
        return chain([_run(m, WIDTHS[0], 0, lr) for m in MIXERS for lr in LR_GRID])
    if arg:
        raise ValueError(f"mixers_mqar sweeps: '' (widths x seeds), 'lr' (learning rates) or 'easy' (4 pairs), "
                         f"got {arg!r}")
    if set(LR) != set(MIXERS):
        raise ValueError(f"mixers_mqar: LR has no learning rate for {sorted(set(MIXERS) - set(LR))}; run stage 1 "
                         "(experiments/mixers_mqar.py:lr) and write its choices into LR")
    # Width by width, seed by seed: a sweep cut short still has every mixer at the smaller widths.
    return chain([_run(m, w, s, LR[m]) for w in WIDTHS for s in SEEDS for m in MIXERS])
