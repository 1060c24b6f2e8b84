"""What each sequence mixer (`model.mixer`, `model.mixer_pattern`) is and supports: one table, read by config
validation, the layers (llm/model/transformer.py, mixers.py), parameter and FLOP counts, the context-parallel
check, the explorer and sweep reports. Attention's implementations have their own table
(llm/ops/attention/capabilities.py).

    row = MIXER_TABLE["gla"]
    row.recurrent        # True: decoding carries a fixed-size state, not a KV cache
    lacking("pallas", ("gla", "deltanet"))   # ["deltanet"]: the mixers among these without the feature

Columns:
  softmax          softmax attention (`SelfAttention`, parameters under 'attention', its probabilities sown as
                   'attention_weights'); else a sub-quadratic `Mixer` (under 'mixer', its token-mixing matrix M,
                   out = M v, sown as 'mixing_weights')
  recurrent        decoding carries a state [B, H, K, V] whose size does not depend on the context
  kv_cache         decoding keeps keys and values for `model.max_len` slots (the memory grows with the context)
  chunked          trains by the chunked form, `model.mixer_chunk` tokens a chunk (any positive size: the sequence
                   is padded to a whole number of chunks), and `model.mixer_impl` picks its implementation
  pallas           `model.mixer_impl='pallas'` runs it on the Pallas kernel (llm/kernels/linear_attention.py; packed
                   documents fall back to the jnp form); attention's kernels are `model.attention_impl`'s
  segments         packed documents (segment ids) restart it: no token sees another document
  context_balance  takes the balanced context-parallel layout (`mesh.context_balance`), whose token order is not the
                   sequence's; a mixer that reads its tokens in order cannot
  window           adds a sliding-window softmax attention beside its linear one (needs `model.window`)
  core             the state update of llm/ops/mixers: 'gla' (gated linear attention) or 'delta' (the delta rule);
                   '' for softmax attention
  decay            the state's decay per token: '' (none), 'fixed' (one per head), 'gate' (data-dependent per key
                   dimension, a low-rank gate), 'ssd' (data-dependent per head, Mamba-2's)
  feature_map      the map of queries and keys before the core: 'taylor' (Based's, on `model.feature_dim`
                   dimensions), 'silu_l2' (SiLU then unit length), 'identity', or None: `model.feature_map`'s
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MixerRow:
    softmax: bool = False
    recurrent: bool = True
    kv_cache: bool = False
    chunked: bool = True
    pallas: bool = False
    segments: bool = True
    context_balance: bool = False
    window: bool = False
    core: str = "gla"
    decay: str = ""
    feature_map: str | None = "identity"


MIXER_TABLE: dict[str, MixerRow] = {
    "attention": MixerRow(softmax=True, recurrent=False, kv_cache=True, chunked=False, context_balance=True,
                          core="", feature_map="identity"),
    "linear": MixerRow(pallas=True, feature_map=None),
    # Its window attention keeps a KV cache over the whole context, as softmax attention's does.
    "based": MixerRow(kv_cache=True, pallas=True, window=True, feature_map="taylor"),
    "retnet": MixerRow(pallas=True, decay="fixed"),
    "gla": MixerRow(pallas=True, decay="gate"),
    "mamba2": MixerRow(pallas=True, decay="ssd"),
    "deltanet": MixerRow(core="delta", feature_map="silu_l2"),
    "gated_deltanet": MixerRow(core="delta", decay="ssd", feature_map="silu_l2"),
}
MIXERS = tuple(MIXER_TABLE)
DEFAULT_MIXER = "attention"  # ModelConfig.mixer's default


def with_feature(feature: str) -> tuple[str, ...]:
    """The mixers that have `feature` (a column), in table order."""
    return tuple(m for m, row in MIXER_TABLE.items() if getattr(row, feature))


def lacking(feature: str, mixers) -> list[str]:
    """The distinct mixers among `mixers` (a model's layer mixers) without `feature`, sorted."""
    return sorted({m for m in mixers if not getattr(MIXER_TABLE[m], feature)})
