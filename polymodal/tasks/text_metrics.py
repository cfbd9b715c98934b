"""Metrics of generated text against reference text: WER and CER (jiwer), BLEU and chrF (sacrebleu), CIDEr and
ROUGE-L (pycocoevalcap's pure-Python scorers: no Java), exact match.

Normalisation, the same for every metric: lower-cased (`lowercase`), punctuation removed unless `punctuation`
is kept, whitespace collapsed. Scales: `wer`, `cer`, `exact_match` and `rouge_l` are fractions in [0, 1] (WER can
exceed 1 when a hypothesis is longer than its reference); `bleu` (BLEU-4, sacrebleu's 13a tokenizer) and `chrf`
are on sacrebleu's 0-100 scale; `cider` is pycocoevalcap's CIDEr (x10, with its Gaussian length penalty), its
document frequencies taken from the references scored. WER and CER are corpus rates: all edits over all
reference words (characters), so an empty reference adds its hypothesis's words as insertions. METEOR needs
Java: it is not computed (`meteor` is None and `notes` says why)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

METRICS = ("wer", "cer", "bleu", "chrf", "cider", "rouge_l", "exact_match")
LOWER_IS_BETTER = frozenset({"wer", "cer"})


def normalize(text: str, lowercase: bool = True, punctuation: bool = False) -> str:
    """The text the metrics compare: lower-cased, punctuation removed (unless kept), single spaces."""
    s = str(text)
    if lowercase:
        s = s.lower()
    if not punctuation:
        s = "".join(" " if unicodedata.category(c).startswith("P") else c for c in s)
    return re.sub(r"\s+", " ", s).strip()


def _pairs(refs: Sequence[str], hyps: Sequence[str], lowercase: bool, punctuation: bool) -> tuple[list, list]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references for {len(hyps)} hypotheses")
    return ([normalize(r, lowercase, punctuation) for r in refs], [normalize(h, lowercase, punctuation) for h in hyps])


def wer(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, over the whole corpus."""
    import jiwer

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    return _rate(jiwer.process_words, r, h, lambda s: len(s.split()))


def cer(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """Character error rate (spaces count as characters), over the whole corpus."""
    import jiwer

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    return _rate(jiwer.process_characters, r, h, len)


def _rate(process: Any, refs: list[str], hyps: list[str], units: Any) -> float:
    total = sum(units(r) for r in refs)
    # jiwer refuses a corpus whose references are all empty; then every hypothesis unit is an insertion.
    if total == 0:
        return float(sum(units(h) for h in hyps) > 0)
    out = process(refs, hyps)
    return float((out.substitutions + out.deletions + out.insertions) / total)


def bleu(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """Corpus BLEU-4 (sacrebleu), 0-100."""
    import sacrebleu

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    return float(sacrebleu.corpus_bleu(h, [r]).score) if r else float("nan")


def chrf(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """Corpus chrF (sacrebleu, character 6-grams, beta 2), 0-100."""
    import sacrebleu

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    return float(sacrebleu.corpus_chrf(h, [r]).score) if r else float("nan")


def cider(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """CIDEr (pycocoevalcap), one reference per row."""
    from pycocoevalcap.cider.cider import Cider

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    if not r:
        return float("nan")
    score, _ = Cider().compute_score({i: [x] for i, x in enumerate(r)}, {i: [x] for i, x in enumerate(h)})
    return float(score)


def rouge_l(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """ROUGE-L F-measure (pycocoevalcap, beta 1.2), the mean over rows."""
    from pycocoevalcap.rouge.rouge import Rouge

    r, h = _pairs(refs, hyps, lowercase, punctuation)
    if not r:
        return float("nan")
    scorer = Rouge()
    # pycocoevalcap asserts a non-empty hypothesis; an empty one shares no subsequence with anything: 0.
    rows = [scorer.calc_score([x], [y]) if x else 0.0 for x, y in zip(h, r, strict=True)]
    return float(sum(rows) / len(rows))


def exact_match(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False) -> float:
    """The fraction of rows whose normalized text equals the reference's."""
    r, h = _pairs(refs, hyps, lowercase, punctuation)
    return float(sum(x == y for x, y in zip(r, h, strict=True)) / len(r)) if r else float("nan")


SCORERS = {"wer": wer, "cer": cer, "bleu": bleu, "chrf": chrf, "cider": cider, "rouge_l": rouge_l,
           "exact_match": exact_match}  # fmt: skip


def text_metrics(refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True, punctuation: bool = False,
                 which: Sequence[str] = METRICS) -> dict[str, Any]:  # fmt: skip
    """Every metric of `which` (default: all), plus `n`, `meteor` (None) and the normalisation used."""
    out: dict[str, Any] = {m: SCORERS[m](refs, hyps, lowercase, punctuation) for m in which}
    out["meteor"] = None
    out["notes"] = ["METEOR is not computed: it needs Java (pycocoevalcap runs a Java jar)"]
    out["normalization"] = {"lowercase": lowercase, "punctuation": "kept" if punctuation else "removed"}
    out["n"] = len(refs)
    return out


def score(metric: str, refs: Sequence[str], hyps: Sequence[str], lowercase: bool = True,
          punctuation: bool = False) -> float:  # fmt: skip
    """One metric by name."""
    if metric not in SCORERS:
        raise ValueError(f"unknown text metric {metric!r}; choose one of {list(SCORERS)}")
    return SCORERS[metric](refs, hyps, lowercase, punctuation)
