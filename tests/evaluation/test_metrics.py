"""Task metrics: known values, bounds, hand-computed examples and error messages."""

import math

import pytest

from llm.evaluation import metrics
from llm.evaluation.metrics import (
    METRICS,
    bits_per_byte,
    bleu,
    chrf,
    compute,
    exact_match,
    perplexity,
    rouge_l,
    rouge_l_pair,
)

SENTS = ["the cat sat on the mat today", "four thousand seven hundred twenty-one", "March 7, 2024 was a Thursday"]
DISJOINT = ["XYZ QQQ VVV WWW KKK", "JJJ ZZZ XXX YYY UUU", "BBB VVV JJJ QQQ ZZZ"]  # no character but space in common


def test_identical_strings_score_perfectly():
    assert exact_match(SENTS, SENTS) == 1.0
    assert bleu(SENTS, SENTS) == pytest.approx(100.0)
    assert chrf(SENTS, SENTS) == pytest.approx(100.0)
    assert rouge_l(SENTS, SENTS) == 1.0


def test_disjoint_strings_score_zero():
    assert set("".join(SENTS)) & set("".join(DISJOINT)) == {" "}
    assert exact_match(DISJOINT, SENTS) == 0.0
    assert bleu(DISJOINT, SENTS) == 0.0
    assert chrf(DISJOINT, SENTS) == 0.0
    assert rouge_l(DISJOINT, SENTS) == 0.0


def test_exact_match_normalization():
    preds = ["  seven  hundred\tone\n", "Seven hundred one", "seven hundred one"]
    refs = ["seven hundred one"] * 3
    assert exact_match(preds, refs) == pytest.approx(2 / 3)  # whitespace is normalised, case is not
    assert exact_match(preds, refs, normalize=False) == pytest.approx(1 / 3)
    assert exact_match(["a"], ["a"]) == 1.0


def test_bleu_hand_computed():
    # pred "the cat sat on the mat" vs ref "the cat sat on a mat", equal lengths so no brevity penalty.
    # Clipped n-gram precisions: 1-grams 5/6 ("the" counts once), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3.
    # BLEU = 100 * (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 100 * (1/12) ** 0.25 = 53.728...
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)


def test_bleu_all_short_outputs_score_zero_as_documented():
    # No prediction has 4 tokens, so the corpus has no 4-grams: sacrebleu's corpus BLEU is 0 even when all are right.
    assert bleu(["four", "seven hundred"], ["four", "seven hundred"]) == 0.0
    assert chrf(["four", "seven hundred"], ["four", "seven hundred"]) == pytest.approx(100.0)


def test_bleu_and_chrf_bounds_and_monotonicity():
    ref = ["four thousand seven hundred twenty-one and then some more words"]
    words = ref[0].split()
    previous_bleu = previous_chrf = -1.0
    for k in range(len(words) + 1):  # a growing correct prefix followed by wrong words of the same length
        pred = [" ".join(words[:k] + ["zzz"] * (len(words) - k))]
        b, c = bleu(pred, ref), chrf(pred, ref)
        assert 0.0 <= b <= 100.0 + 1e-9 and 0.0 <= c <= 100.0 + 1e-9  # sacrebleu can overshoot by rounding
        assert b >= previous_bleu and c > previous_chrf
        previous_bleu, previous_chrf = b, c
    assert previous_bleu == pytest.approx(100.0) and previous_chrf == pytest.approx(100.0)


def test_chrf_gives_partial_credit_for_near_misses():
    ref = ["seventy-seven"]
    assert 0.0 < chrf(["seventy-six"], ref) < 100.0
    assert chrf(["seventy-six"], ref) > chrf(["eleven"], ref)


def test_rouge_l_hand_computed():
    # Lin (2004), section 3.1: against reference "police killed the gunman",
    # "police kill the gunman" has LCS "police the gunman" (3 of 4 words each side): F = 0.75;
    # "the gunman kill police" has LCS "the gunman" (2 of 4): F = 0.5.
    ref = "police killed the gunman"
    assert rouge_l_pair("police kill the gunman", ref) == pytest.approx(0.75)
    assert rouge_l_pair("the gunman kill police", ref) == pytest.approx(0.5)
    # Unequal lengths: LCS("a b c d e", "a x c y") = "a c" = 2; P = 2/5, R = 2/4, F = 2PR/(P+R) = 0.4/0.9.
    assert rouge_l_pair("a b c d e", "a x c y") == pytest.approx(4 / 9)
    # LCS is a subsequence, not a substring: "a b c d" vs "a z b z c z d" has LCS 4; P = 1, R = 4/7.
    assert rouge_l_pair("a b c d", "a z b z c z d") == pytest.approx(2 * (4 / 7) / (1 + 4 / 7))
    # Lowercased; whitespace-tokenised, so punctuation stays attached to its word.
    assert rouge_l_pair("The  CAT\tsat", "the cat sat") == 1.0
    assert rouge_l_pair("the cat sat.", "the cat sat") == pytest.approx(2 / 3)
    # Empty on either side scores 0 (rouge-score's convention).
    assert rouge_l_pair("", "a b") == 0.0 and rouge_l_pair("a b", "") == 0.0 and rouge_l_pair("", "") == 0.0
    # The corpus score is the mean of the sentence scores.
    assert rouge_l(["police kill the gunman", "x"], [ref, "x"]) == pytest.approx((0.75 + 1.0) / 2)


def test_lcs_length_matches_brute_force():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 6))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 6))]
        sub_a = {s for k in range(len(a) + 1) for s in itertools.combinations(a, k)}
        brute = max(len(s) for k in range(len(b) + 1) for s in itertools.combinations(b, k) if s in sub_a)
        assert metrics._lcs_length(a, b) == brute, (a, b)


def test_bits_per_byte_and_perplexity():
    # 100 tokens at ln 2 nats each = 100 bits, over 50 bytes = 2 bits per byte.
    assert bits_per_byte(math.log(2), 100, 50) == pytest.approx(2.0)
    # 1000 tokens at 1.5 nats over 4000 bytes: 1500 nats = 2164.04 bits -> 0.54101 bits per byte.
    assert bits_per_byte(1.5, 1000, 4000) == pytest.approx(1500 / math.log(2) / 4000)
    assert bits_per_byte(2.0, 0, 10) == 0.0
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(1.0, 10, 0)
    with pytest.raises(ValueError, match="n_tokens"):
        bits_per_byte(1.0, -1, 10)
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(65)) == pytest.approx(65.0)
    assert perplexity(1e6) == math.inf


def test_compute_and_registry():
    assert set(METRICS) == {"exact_match", "bleu", "chrf", "rouge_l"}
    out = compute(["rouge_l", "exact_match"], SENTS, SENTS)
    assert list(out) == ["rouge_l", "exact_match"] and out == {"rouge_l": 1.0, "exact_match": 1.0}
    assert compute("chrf", SENTS, SENTS) == {"chrf": pytest.approx(100.0)}
    assert compute(list(METRICS), DISJOINT, SENTS) == dict.fromkeys(METRICS, 0.0)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) 'rouge'.*valid names: exact_match, bleu, chrf, rouge_l"):
        compute(["exact_match", "rouge"], SENTS, SENTS)


def test_bad_inputs():
    for fn in METRICS.values():
        with pytest.raises(ValueError, match="2 predictions but 1 references"):
            fn(["a", "b"], ["a"])
        with pytest.raises(ValueError, match="empty"):
            fn([], [])
        with pytest.raises(TypeError, match=r"preds\[1\] is a int"):
            fn(["a", 3], ["a", "b"])
