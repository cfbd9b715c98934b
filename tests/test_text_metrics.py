"""Text metrics against values computed by hand (polymodal/tasks/text_metrics.py)."""

from __future__ import annotations

import math

import pytest

from polymodal.tasks.text_metrics import (
    bleu,
    cer,
    chrf,
    cider,
    exact_match,
    normalize,
    rouge_l,
    text_metrics,
    wer,
)


def test_wer_counts_edits_over_reference_words():
    # row 1: b -> x (substitution) and d inserted; row 2 exact: 2 errors over 3 + 2 reference words
    assert wer(["a b c", "d e"], ["a x c d", "d e"]) == pytest.approx(2 / 5)
    assert wer(["a b c"], ["a b c"]) == 0.0
    assert wer(["a b"], [""]) == pytest.approx(1.0)  # both words deleted
    # an empty reference counts its hypothesis's words as insertions: (1 + 2) / 2
    assert wer(["a b", ""], ["a", "x y"]) == pytest.approx(3 / 2)


def test_cer_counts_characters_spaces_included():
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab c"], ["ab"]) == pytest.approx(2 / 4)  # " " and "c" deleted


def test_normalisation_is_stated_and_configurable():
    assert normalize("  Hello,   World! ") == "hello world"
    assert normalize("Hello, World!", lowercase=False, punctuation=True) == "Hello, World!"
    assert exact_match(["Hello, world!"], ["hello world"]) == 1.0
    assert exact_match(["Hello, world!"], ["hello world"], punctuation=True) == 0.0
    assert exact_match(["Hello world"], ["hello world"], lowercase=False) == 0.0
    assert wer(["One two"], ["one two."]) == 0.0


def test_bleu_by_hand():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(expected, abs=1e-6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_chrf_bounds():
    assert chrf(["abc def"], ["abc def"]) == pytest.approx(100.0)
    assert chrf(["abc"], ["xyz"]) == pytest.approx(0.0)
    assert 0 < chrf(["abc def"], ["abc xyz"]) < 100


def test_rouge_l_by_hand():
    # LCS("a b c d", "a c d e") = 3: P = R = 3/4, F(beta 1.2) = (1 + b^2) P R / (R + b^2 P) = 3/4
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    assert rouge_l(["a b"], [""]) == 0.0


def test_cider_by_hand():
    # Two references sharing no n-gram: every n-gram's idf is log 2, a perfect hypothesis has cosine 1 at every
    # n = 1..4 and no length penalty: 10 x 1; a hypothesis sharing nothing scores 0. Mean: 5.
    assert cider(["a b c d", "e f g h"], ["a b c d", "w x y z"]) == pytest.approx(5.0)


def test_all_metrics_keyed_with_meteor_explained():
    m = text_metrics(["three one four", "two"], ["three one four", "two five"])
    assert set(m) >= {"wer", "cer", "bleu", "chrf", "cider", "rouge_l", "exact_match", "meteor", "n"}
    assert m["exact_match"] == 0.5 and m["wer"] == pytest.approx(1 / 4)
    assert m["meteor"] is None and "Java" in m["notes"][0]
    assert all(math.isfinite(m[k]) for k in ("wer", "cer", "bleu", "chrf", "cider", "rouge_l"))
