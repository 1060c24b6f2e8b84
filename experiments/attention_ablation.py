"""Attention variants on tasks that isolate what attention does: multi-query associative recall (MQAR, as in
the Zoology benchmark) at several lengths, and character-level tiny Shakespeare.

    llm sweep experiments/attention_ablation.py --workdir runs/attention_ablation --parallel 2
    llm report runs/attention_ablation

`get_config()` is the shared MQAR setting: Zoology's small model (width 64, 2 layers) and layout (the queries
after the key-value block at power-law gaps, every token real) with a 256-token vocabulary instead of 8192 (the
output layer would dominate a CPU step), 4 heads, RoPE, and a short causal convolution (kernel 3) on the
queries, keys and values: with it one attention layer can match a query to the key *before* a value, which is
why Zoology's current MQAR configs pair attention with a kernel-3 convolution layer (as H3 and Based do); without it
the model must first grow a previous-token head, a plateau longer than this CPU budget (the `noconv` run).
Training rows mix pair counts (`min_pairs`, as Zoology trains on a mixture of settings); eval rows have all
`pairs`. Zoology's pairing of lengths and pairs: (64, 4), (128, 8), (256, 16).

`get_sweep()` lists the runs as override dicts: head sharing (MHA / GQA / MQA) at every length, positions
(RoPE / ALiBi / learned / none), sliding windows (16 and 64 tokens: a query farther than the window from its
key-value pair cannot see it), the chunked implementation (must match xla), no short convolution, and the
position variants on tiny Shakespeare. Results: experiments/results/attention_ablation.md.
"""

from llm.config import get_base_config
from llm.sweep import chain, product

SETTINGS = {64: 4, 128: 8, 256: 16}  # length -> pairs (Zoology's figure 2)
VOCAB = 256
SEEDS = [0]


def _task(length: int) -> str:
    pairs = SETTINGS[length]
    return f"mqar:pairs={pairs},vocab={VOCAB},layout=zoology,min_pairs={max(2, pairs // 4)}"


def get_config(arg=None):
    if arg:
        raise ValueError(f"attention_ablation has no presets (got {arg!r})")
    c = get_base_config()
    c.data.synthetic = _task(256)
    c.model.d_model, c.model.n_layers, c.model.n_heads = 64, 2, 4
    c.model.max_len = 256
    c.model.position = "rope"
    c.model.short_conv = 3
    c.model.dropout = 0.0
    c.train.batch_size = 32
    c.train.steps = 800
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 400
    c.train.log_every = 50
    c.train.progress = False
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.1
    c.sample.num_samples = 0
    return c


def _mqar(length, variant, **overrides):
    """An MQAR run of `length` tokens named 'mqar256-gqa-s0' (the `_name` key names a run; see llm/sweep/spec.py)."""
    seed = overrides.get("seed", 0)
    return {"_name": f"mqar{length}-{variant}-s{seed}", "model.max_len": length, "data.synthetic": _task(length),
            **overrides}


def get_sweep(arg=None):
    heads = {"mha": None, "gqa": 2, "mqa": 1}
    runs = []
    for length in SETTINGS:  # head sharing across lengths
        runs += [_mqar(length, name, **{"model.n_kv_heads": kv, "seed": s}) for name, kv in heads.items()
                 for s in SEEDS]
    runs += [_mqar(256, r["model.position"], **r) for r in product(**{"model.position": ["alibi", "learned", "none"],
                                                                    "seed": SEEDS})]
    runs += [_mqar(256, f"window{r['model.window']}", **r) for r in product(**{"model.window": [16, 64],
                                                                             "seed": SEEDS})]
    runs += [_mqar(256, "chunked", **{"model.attention_impl": "chunked", "seed": s}) for s in SEEDS]
    runs += [_mqar(256, "noconv", **{"model.short_conv": 0, "seed": s}) for s in SEEDS]
    shakespeare = {"data.synthetic": "", "data.corpus": "tinyshakespeare", "model.d_model": 128,
                   "model.n_layers": 4, "model.max_len": 64, "model.short_conv": 0, "train.steps": 1000,
                   "train.batch_size": 12, "optim.lr": 1e-3}
    runs += [{"_name": f"shakespeare-{r['model.position']}-s{r['seed']}", **shakespeare, **r}
             for r in product(**{"model.position": ["rope", "alibi", "learned"], "seed": SEEDS})]
    return chain(runs)
