"""The `text` problem type: free text generated from the fused inputs (captions, transcripts).

Targets are tokenized into a vocabulary built on the training rows (`decoder.tokens`: words, or characters for
CER-style tasks; `decoder.max_vocab`, `decoder.min_count`), lower-cased unless `decoder.lowercase` is False.
Words: `\\w+` runs and single punctuation marks, joined back with single spaces. Ids 0-3 are padding (also the
CTC blank), begin, end and unknown. A target is encoded as its first `decoder.max_length` tokens, then <eos>,
padded to max_length + 1; longer targets are truncated with a warning that counts them, and a word outside the
vocabulary becomes <unk> (so a prediction never fails on it). With `decoder.pretrained` the pretrained decoder's
tokenizer is the vocabulary instead (`polymodal/tasks/hf_decoder.py`: the same specials, its tokens after them).

Outputs (what the inference engine returns for a text model): float64 `(rows, n_best, 1 + max_length + 1)`,
per hypothesis its score (log-probability / length ** length_penalty) then its token ids (0-padded), best first.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from polymodal.data.schema import ProblemType
from polymodal.errors import UserError
from polymodal.tasks.base import BOS, EOS, PAD, UNK, Task, register
from polymodal.tasks.text_metrics import LOWER_IS_BETTER, METRICS, score, text_metrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger("polymodal")

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
WORD = re.compile(r"\w+|[^\w\s]")


class Vocabulary:
    """Target tokens <-> ids: words or characters, the specials first."""

    def __init__(self, tokens: list[str], level: str = "word", lowercase: bool = True):
        if level not in ("word", "char"):
            raise UserError(f"decoder.tokens must be word or char, not {level!r}")
        self.tokens, self.level, self.lowercase = list(tokens), level, lowercase
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: Any) -> list[str]:
        s = str(text)
        s = s.lower() if self.lowercase else s
        if self.level == "char":
            return list(re.sub(r"\s+", " ", s).strip())
        return WORD.findall(s)

    def join(self, tokens: list[str]) -> str:
        return ("" if self.level == "char" else " ").join(tokens)

    @classmethod
    def fit(cls, texts: pd.Series, level: str = "word", lowercase: bool = True, max_vocab: int = 10000,
            min_count: int = 1) -> Vocabulary:  # fmt: skip
        probe = cls([], level, lowercase)
        counts = Counter(t for v in texts for t in probe.split(v))
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([*SPECIALS, *kept[: max(0, max_vocab - len(SPECIALS))]], level, lowercase)

    def encode(self, text: Any) -> list[int]:
        return [self.index.get(t, UNK) for t in self.split(text)]

    def decode(self, ids: Any) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else SPECIALS[UNK])
        return self.join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "level": self.level, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        return cls(d["tokens"], d["level"], d["lowercase"])


# What a text task keeps of the decoder section (the rest configures the network).
SETTINGS = ("name", "max_length", "label_smoothing", "metric", "metric_lowercase", "metric_punctuation")


class TextTask(Task):
    """Sequence generation: teacher-forced cross-entropy (or CTC), generated text scored by text metrics."""

    is_text = True

    def __init__(self, vocabulary: Vocabulary, settings: dict[str, Any]):
        super().__init__(ProblemType.TEXT)
        self.vocabulary = vocabulary
        self.settings = dict(settings)
        metric = self.settings["metric"]
        if metric not in METRICS:
            raise UserError(f"decoder.metric must be one of {list(METRICS)}, not {metric!r}")

    @classmethod
    def fit_text(cls, y: pd.Series, decoder: Any = None, speech_like: bool = False) -> TextTask:
        """The vocabulary of the training targets `y`; `decoder`: the config's decoder section (defaults if None);
        `speech_like`: an input is audio, so the default metric is WER (else CIDEr)."""
        from polymodal.config.sections import DecoderConfig

        d = decoder or DecoderConfig()
        if d.max_length < 1:
            raise UserError(f"decoder.max_length must be at least 1, not {d.max_length}")
        settings = {k: getattr(d, k) for k in SETTINGS}
        settings["metric"] = d.metric or ("wer" if speech_like else "cider")
        if d.pretrained or d.name == "hf":  # the tokenizer of a pretrained decoder (polymodal/tasks/hf_decoder.py)
            from polymodal.tasks.hf_decoder import HFVocabulary

            return cls(HFVocabulary.fit(d), settings | {"name": "hf"})  # type: ignore[arg-type]
        vocab = Vocabulary.fit(y.dropna(), d.tokens, d.lowercase, d.max_vocab, d.min_count)
        if len(vocab) == len(SPECIALS):
            raise UserError("the text label has no token in its training rows: every target is empty")
        return cls(vocab, settings)

    @property
    def is_classification(self) -> bool:
        return False

    @property
    def n_outputs(self) -> int:
        return len(self.vocabulary)

    @property
    def max_length(self) -> int:
        return int(self.settings["max_length"])

    @property
    def ctc(self) -> bool:
        return self.settings["name"] == "ctc"

    @property
    def monitor(self) -> tuple[str, str]:
        m = self.settings["metric"]
        return (m, "min" if m in LOWER_IS_BETTER else "max")

    def encode_targets(self, y: pd.Series) -> np.ndarray:
        """(rows, max_length + 1) int64: the tokens, <eos>, padding. Longer targets are truncated (one warning)."""
        n, width = len(y), self.max_length + 1
        out = np.zeros((n, width), dtype=np.int64)
        long = 0
        for i, v in enumerate(y):
            ids = self.vocabulary.encode("" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
            if len(ids) > self.max_length:
                long += 1
                ids = ids[: self.max_length]
            out[i, : len(ids)] = ids
            out[i, len(ids)] = EOS
        if long:
            log.warning("%d of %d target(s) are longer than decoder.max_length = %d tokens: truncated "
                        "(raise decoder.max_length to keep them whole)", long, n, self.max_length)  # fmt: skip
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy with label smoothing over the real target tokens; CTC for a CTC head."""
        from torch.nn import functional as F

        if self.ctc:
            return ctc_loss(logits, target)
        ignore = PAD
        if getattr(self.vocabulary, "dead", None):  # a pretrained decoder's tokenizer: ids never a target left out
            from polymodal.tasks.hf_decoder import live_columns

            logits, target, ignore = *live_columns(logits, target, self.vocabulary.dead), -100
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=ignore,
                               label_smoothing=float(self.settings["label_smoothing"]))  # fmt: skip

    def outputs(self, generated: torch.Tensor) -> np.ndarray:
        return generated.detach().cpu().numpy().astype(np.float64)

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """The best hypothesis of each row, as text."""
        return np.array([self.vocabulary.decode(row[0, 1:]) for row in outputs], dtype=object)

    def nbest(self, outputs: np.ndarray) -> list[list[tuple[str, float]]]:
        """Every hypothesis of each row with its score, best first."""
        return [[(self.vocabulary.decode(h[1:]), float(h[0])) for h in row] for row in outputs]

    def _norm(self) -> dict[str, bool]:
        return {"lowercase": bool(self.settings["metric_lowercase"]),
                "punctuation": bool(self.settings["metric_punctuation"])}  # fmt: skip

    def score(self, targets: np.ndarray, outputs: np.ndarray) -> float:
        """The monitored metric from encoded targets (as the vocabulary sees them) and generated outputs."""
        refs = [self.vocabulary.decode(t) for t in targets]
        return score(self.settings["metric"], refs, list(self.decode(outputs)), **self._norm())

    def majority_outputs(self, train_targets: np.ndarray, n: int) -> tuple[np.ndarray, str]:
        """The most frequent training target, for every row (a constant caption)."""
        rows, counts = np.unique(train_targets, axis=0, return_counts=True)
        top = rows[int(counts.argmax())]
        out = np.zeros((n, 1, 1 + len(top)), dtype=np.float64)
        out[:, 0, 1:] = top
        return out, f"the most frequent target {self.vocabulary.decode(top)!r}"

    def metrics(self, y_true: pd.Series, outputs: np.ndarray) -> dict[str, Any]:
        """WER, CER, BLEU, chrF, CIDEr, ROUGE-L, exact match of the generated text against the label's text."""
        refs = ["" if pd.isna(v) else str(v) for v in y_true]
        return text_metrics(refs, list(self.decode(outputs)), **self._norm())

    def to_dict(self) -> dict[str, Any]:
        return {"problem_type": self.problem_type.value, "classes": None, "vocabulary": self.vocabulary.to_dict(),
                "settings": self.settings}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextTask:
        if d["vocabulary"].get("kind") == "hf":
            from polymodal.tasks.hf_decoder import HFVocabulary

            return cls(HFVocabulary.from_dict(d["vocabulary"]), d["settings"])  # type: ignore[arg-type]
        return cls(Vocabulary.from_dict(d["vocabulary"]), d["settings"])


def ctc_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CTC over the frames `(batch, frames, vocab)` (blank: id 0) against the tokens before <eos>."""
    import torch
    from torch.nn import functional as F

    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (frames, batch, vocab)
    lengths = ((target != PAD) & (target != EOS)).sum(1)
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    return F.ctc_loss(log_probs, target.clamp(min=0), frames, lengths, blank=PAD, zero_infinity=True)


def text_frame(task: TextTask, outputs: np.ndarray, index: Any = None) -> pd.DataFrame:
    """`prediction` and `score` per row; with several hypotheses also `text_1`, `score_1`, ... (best first)."""
    frame = pd.DataFrame({"prediction": task.decode(outputs), "score": outputs[:, 0, 0]}, index=index)
    if outputs.shape[1] > 1:
        for j, column in enumerate(zip(*task.nbest(outputs), strict=True), start=1):
            frame[f"text_{j}"] = [t for t, _ in column]
            frame[f"score_{j}"] = [s for _, s in column]
    return frame


@contextmanager
def engine_generation(engine: Any, settings: dict[str, Any]) -> Iterator[None]:
    """The engine's network generates with `settings` (beam_size, length_penalty, no_repeat_ngram, n_best) over
    its own for the duration; unknown names are refused."""
    unknown = sorted(set(settings) - {"beam_size", "length_penalty", "no_repeat_ngram", "n_best"})
    if unknown:
        raise UserError(f"unknown generation setting(s) {unknown}: beam_size, length_penalty, no_repeat_ngram, n_best")
    net = engine.net
    saved = dict(getattr(net, "generation", {}))
    if not engine.task.is_text or not hasattr(net, "generation"):
        raise UserError("generation settings are for a text model (problem type text)")
    net.generation = saved | {k: v for k, v in settings.items() if v is not None}
    try:
        yield
    finally:
        net.generation = saved


register(ProblemType.TEXT, TextTask)
