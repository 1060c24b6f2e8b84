"""Task metrics for evaluation runs: model outputs (strings) scored against references (strings).

    scores = compute(["exact_match", "chrf"], preds, refs)     # {"exact_match": 0.42, "chrf": 71.3}
    bpb = bits_per_byte(mean_loss, n_tokens, n_bytes)           # tokenizer-independent language-model loss

Text metrics take two equally long sequences of strings, one reference per prediction, and return a float:

  exact_match  fraction of predictions equal to their reference           0..1
  bleu         sacrebleu corpus BLEU (13a tokenizer, exp smoothing)         0..100
  chrf         sacrebleu corpus chrF (character 6-grams, beta 2)            0..100
  rouge_l      mean sentence-level ROUGE-L F1 (longest common subsequence)  0..1

Scales follow each metric's usual convention (sacrebleu's 0..100 for BLEU and chrF), so numbers can be
compared with published ones. Empty or mismatched inputs are a ValueError, a non-string is a TypeError.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from llm.errors import ConfigError


def _check(preds: Sequence[str], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions but {len(refs)} references; give one reference per prediction")
    if not preds:
        raise ValueError("no predictions to score: preds and refs are empty")
    for kind, seq in (("preds", preds), ("refs", refs)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{kind}[{i}] is a {type(s).__name__}, not a str")
    return preds, refs


def _normalize(s: str) -> str:
    return " ".join(s.split())


def exact_match(preds: Sequence[str], refs: Sequence[str], normalize: bool = True) -> float:
    """Fraction (0..1) of predictions equal to their reference.

    With `normalize` (the default) both sides are stripped and every run of whitespace (spaces, tabs,
    newlines) becomes one space before comparing; case and punctuation still count. Without it the
    strings must be identical.
    """
    preds, refs = _check(preds, refs)
    if normalize:
        preds, refs = [_normalize(p) for p in preds], [_normalize(r) for r in refs]
    return sum(p == r for p, r in zip(preds, refs)) / len(preds)


def bleu(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus-level BLEU (0..100): `sacrebleu.corpus_bleu(preds, [refs]).score`, sacrebleu's defaults.

    N-gram counts are summed over the whole corpus before the geometric mean over orders 1..4, so a corpus
    whose predictions all have fewer than four tokens has no 4-grams and scores 0 even when every
    prediction is right (e.g. number words such as "four" or "seven hundred"); use exact_match or chrF for
    such outputs.
    """
    import sacrebleu  # imported when used: the config's validation reads this module's METRICS

    preds, refs = _check(preds, refs)
    return float(sacrebleu.corpus_bleu(preds, [refs]).score)


def chrf(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus-level chrF (0..100): `sacrebleu.corpus_chrf(preds, [refs]).score` (character 6-grams, beta 2,
    whitespace ignored). Unlike BLEU it gives partial credit to short outputs and near-miss spellings."""
    import sacrebleu

    preds, refs = _check(preds, refs)
    return float(sacrebleu.corpus_chrf(preds, [refs]).score)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = prev_diag + 1 if x == y else max(above, row[j - 1])
            prev_diag = above
    return row[-1]


def rouge_l_pair(pred: str, ref: str) -> float:
    """Sentence-level ROUGE-L F1 (0..1) of one prediction against one reference.

    Tokens are the lowercased whitespace-separated words (punctuation stays attached to its word). With
    L = LCS length, precision = L / len(pred), recall = L / len(ref), F1 = 2PR / (P + R). If either side
    has no tokens the score is 0, as in Google's rouge-score package.
    """
    p, r = pred.lower().split(), ref.lower().split()
    if not p or not r:
        return 0.0
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> float:
    """ROUGE-L F-measure (0..1): the mean over pairs of `rouge_l_pair` (sentence-level, not summary-level
    ROUGE-Lsum). Our own implementation; no rouge-score dependency."""
    preds, refs = _check(preds, refs)
    return sum(rouge_l_pair(p, r) for p, r in zip(preds, refs)) / len(preds)


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Bits per UTF-8 byte of text: total nats (mean loss x tokens) / ln 2 / bytes.

    Comparable across tokenizers, unlike per-token loss: `n_bytes` is the UTF-8 length of the text whose
    `n_tokens` tokens were scored at a mean loss of `loss_nats_per_token` (natural log, as the training loss).
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be non-negative, got {n_tokens}")
    return float(loss_nats_per_token) * n_tokens / math.log(2) / n_bytes


def perplexity(loss: float) -> float:
    """exp(loss) for a mean loss in nats per token; inf when that overflows a float."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


Metric = Callable[[Sequence[str], Sequence[str]], float]

METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "bleu": bleu,
    "chrf": chrf,
    "rouge_l": rouge_l,
}


def metric_names(spec: str) -> list[str]:
    """eval.metrics ('exact_match,chrf') as names; ConfigError (one line) naming an unknown one and the choices."""
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown {', '.join(unknown)}; choose among {', '.join(METRICS)}")
    return names


def compute(names: Iterable[str] | str, preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """{name: score} for each metric named (one name may be given as a plain string), in the order given.

    Every name is checked before anything is computed; an unknown one is a ValueError listing the valid names.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(METRICS)}")
    preds, refs = _check(preds, refs)
    return {name: METRICS[name](preds, refs) for name in names}
