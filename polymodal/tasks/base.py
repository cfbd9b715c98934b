"""Tasks: the head, the loss, target encoding, and metrics for each problem type.

Multilabel: the label cell holds a set of labels joined with `|` ("cat|outdoor"); the head has one sigmoid output
per label, trained with binary cross-entropy. A label is predicted when its probability is at least 0.5. What a row
with no label means is `data.empty_label` (`Schema.empty_label`): "missing" (the default) refuses it in training, so
a row where no label reaches 0.5 gets its single most probable label; "none" (an empty cell) or a token (a cell
holding only it, e.g. "-") is the empty set, an all-zero target, and such a row is predicted empty (written ""). The
monitored metric is micro-F1; `accuracy` is the exact-match ratio (the whole set right); per-sample F1 and Jaccard
count two empty sets as 1 (a perfect answer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from polymodal.data.redact import quote_value
from polymodal.data.schema import EMPTY_MISSING, EMPTY_NONE, LABEL_SEPARATOR, ProblemType
from polymodal.errors import UserError

if TYPE_CHECKING:  # torch loads on first use: the ONNX runtime decodes outputs without it
    import torch
    from torch import nn


# Problem types whose task is a subclass in a module of its own (text: tasks/text.py), registered by that module
# (`register`), so this base never imports its subclasses; `polymodal.tasks` imports them all.
_SUBCLASSES: dict[ProblemType, type[Task]] = {}


def register(problem_type: ProblemType, cls: type[Task]) -> None:
    _SUBCLASSES[problem_type] = cls


def subclass(problem_type: ProblemType) -> Any:
    if problem_type not in _SUBCLASSES:  # only when polymodal.tasks.base is imported without polymodal.tasks
        import importlib

        importlib.import_module("polymodal.tasks")
    return _SUBCLASSES[problem_type]


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


THRESHOLD = 0.5  # multilabel: a label is predicted at this probability or above
# The special ids of every generated-text vocabulary: the word/character one (tasks/text.py) and a pretrained
# decoder's tokenizer mapped after them (tasks/hf_decoder.py).
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def split_labels(value: Any) -> list[str]:
    """The labels of one multilabel cell: "cat | outdoor" -> ["cat", "outdoor"] (blank parts dropped)."""
    return [s.strip() for s in str(value).split(LABEL_SEPARATOR) if s.strip()]


def label_sets(outputs: np.ndarray, at_least_one: bool = True) -> np.ndarray:
    """Multilabel probabilities (n, labels) -> 0/1 predictions: >= THRESHOLD; where none is, the most probable label
    when `at_least_one` (data.empty_label "missing"), else the empty set."""
    pred = (outputs >= THRESHOLD).astype(np.int64)
    if at_least_one:
        none = pred.sum(axis=1) == 0
        pred[none, outputs[none].argmax(axis=1)] = 1
    return pred


def _per_sample(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Mean per-row F1 and Jaccard of 0/1 label sets; a row where both sets are empty scores 1 (nothing to find,
    nothing claimed), as scikit-learn's zero_division=1 would."""
    inter, size = (y & pred).sum(axis=1), y.sum(axis=1) + pred.sum(axis=1)
    union = size - inter
    f1 = np.where(size > 0, 2 * inter / np.maximum(size, 1), 1.0)
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(f1.mean()), float(jaccard.mean())


class Task:
    """Classification (binary, multiclass; cross-entropy) or regression (MSE on the standardized target). Generated
    text is the subclass `polymodal.tasks.text.TextTask`."""

    is_text = False

    def __init__(
        self,
        problem_type: ProblemType,
        classes: list[Any] | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
        empty_label: str = EMPTY_MISSING,
    ):
        self.problem_type = ProblemType(problem_type)
        self.classes = list(classes) if classes is not None else None
        self.y_mean, self.y_std = y_mean, y_std
        self.empty_label = empty_label  # multilabel: data.empty_label

    @classmethod
    def fit(
        cls,
        problem_type: ProblemType,
        y: pd.Series,
        decoder: Any = None,
        speech_like: bool = False,
        empty_label: str = EMPTY_MISSING,
    ) -> Task:
        """`decoder` (the config's decoder section) and `speech_like` (an input is audio) matter to text only;
        `empty_label` (data.empty_label, the schema's) to multilabel only."""
        if ProblemType(problem_type).is_text:
            return subclass(ProblemType.TEXT).fit_text(y, decoder, speech_like)
        if ProblemType(problem_type).is_multilabel:
            task = cls(problem_type, classes=[], empty_label=empty_label)
            classes = sorted({label for v in y.dropna() for label in task.label_set(v)})
            if len(classes) < 2:
                raise UserError(f"the multilabel label has fewer than two distinct labels ({classes})")
            task.classes = classes
            return task
        if ProblemType(problem_type).is_classification:
            classes = sorted({_jsonable(v) for v in y.dropna()}, key=lambda v: (str(type(v)), v))
            if len(classes) < 2:
                shown = quote_value(classes[0]) if classes else "none"
                raise UserError(f"the label has a single class ({shown}); classification needs at least two")
            return cls(problem_type, classes=classes)
        values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        return cls(problem_type, y_mean=float(np.nanmean(values)), y_std=float(max(np.nanstd(values), 1e-8)))

    @property
    def is_classification(self) -> bool:
        return self.problem_type.is_classification

    @property
    def is_multilabel(self) -> bool:
        return self.problem_type.is_multilabel

    @property
    def allows_empty(self) -> bool:
        """Multilabel with data.empty_label "none" or a token: a row may have no label, a prediction may be empty."""
        return self.is_multilabel and self.empty_label != EMPTY_MISSING

    def label_set(self, value: Any) -> list[str]:
        """The labels of one multilabel cell; [] for an empty cell under "none" and for the cell that is the token."""
        if self.empty_label == EMPTY_NONE and (value is None or (isinstance(value, float) and np.isnan(value))):
            return []
        labels = split_labels(value)
        return [] if self.empty_label not in (EMPTY_MISSING, EMPTY_NONE) and labels == [self.empty_label] else labels

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.is_classification else 1

    @property
    def monitor(self) -> tuple[str, str]:
        """The validation metric for early stopping and best-checkpoint selection, and its direction."""
        if self.is_multilabel:
            return ("f1_micro", "max")
        return ("accuracy", "max") if self.is_classification else ("rmse", "min")

    def encode_targets(self, y: pd.Series) -> np.ndarray:
        if self.is_multilabel:  # multi-hot (n, labels)
            index = {c: i for i, c in enumerate(self.classes)}
            sets = [self.label_set(v) for v in y]
            unknown = sorted({label for s in sets for label in s if label not in index})
            if unknown:
                raise UserError(f"label(s) {unknown[:10]} were not seen in training (labels: {self.classes})")
            out = np.zeros((len(sets), len(self.classes)), dtype=np.float32)
            for i, s in enumerate(sets):
                out[i, [index[label] for label in s]] = 1.0
            return out
        if self.is_classification:
            index = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted({str(v) for v in y if _jsonable(v) not in index})
            if unknown:
                shown = ", ".join(quote_value(v) for v in unknown[:10])
                raise UserError(f"label value(s) {shown} were not seen in training ({len(self.classes)} classes)")
            return np.array([index[_jsonable(v)] for v in y], dtype=np.int64)
        values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=np.float32)
        return ((values - self.y_mean) / self.y_std).astype(np.float32)

    def head(self, in_dim: int, hidden: int = 128, dropout: float = 0.1) -> nn.Module:
        from torch import nn

        return nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.n_outputs),
        )

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        if self.is_multilabel:
            return F.binary_cross_entropy_with_logits(logits.float(), target.float())
        if self.is_classification:
            return F.cross_entropy(logits.float(), target)
        return F.mse_loss(logits.float().squeeze(-1), target)

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, n_classes), or predictions in the label's units (n,)."""
        import torch

        if self.is_multilabel:
            return torch.sigmoid(logits.float()).cpu().numpy()
        if self.is_classification:
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return logits.float().squeeze(-1).cpu().numpy() * self.y_std + self.y_mean

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs -> predictions in the label's own values (multilabel: the labels joined with `|`)."""
        if self.is_multilabel:
            names = np.asarray(self.classes, dtype=object)
            rows = label_sets(outputs, not self.allows_empty)  # an empty set is written "" (the serving answer: [])
            return np.array([LABEL_SEPARATOR.join(names[row.astype(bool)]) for row in rows], dtype=object)
        if self.is_classification:
            return np.asarray(self.classes, dtype=object)[outputs.argmax(axis=1)]
        return outputs

    def score(self, targets: np.ndarray, outputs: np.ndarray) -> float:
        """The monitored metric (see `monitor`) from encoded targets, as used during training."""
        from sklearn import metrics as skm

        if self.is_multilabel:
            pred = label_sets(outputs, not self.allows_empty)
            return float(skm.f1_score(targets.astype(np.int64), pred, average="micro", zero_division=0))
        if self.is_classification:
            return float(skm.accuracy_score(targets, outputs.argmax(axis=1)))
        return float(np.sqrt(skm.mean_squared_error(targets * self.y_std + self.y_mean, outputs)))

    def majority_outputs(self, train_targets: np.ndarray, n: int) -> tuple[np.ndarray, str]:
        """What a model that ignores its inputs would output for `n` rows: the most frequent class of the encoded
        training targets (the mean for regression); and a short name of that baseline."""
        if self.is_multilabel:  # each label by its own majority; at least the top one unless a set may be empty
            freq = train_targets.mean(axis=0)
            out = np.repeat((freq >= THRESHOLD).astype(np.float32)[None, :], n, axis=0)
            if not self.allows_empty:
                out[:, int(freq.argmax())] = 1.0
            names = [self.classes[i] for i in np.flatnonzero(out[0])]
            return out, f"majority label set {LABEL_SEPARATOR.join(map(str, names))!r}"
        if self.is_classification:
            counts = np.bincount(train_targets.astype(np.int64), minlength=len(self.classes))
            top = int(counts.argmax())
            out = np.zeros((n, len(self.classes)), dtype=np.float32)
            out[:, top] = 1.0
            return out, f"majority class {self.classes[top]!r}"
        mean = float(np.mean(train_targets)) * self.y_std + self.y_mean
        return np.full(n, mean, dtype=np.float64), "the training mean"

    def metrics(self, y_true: pd.Series, outputs: np.ndarray) -> dict[str, Any]:
        """Metrics from scikit-learn, keyed by name; `confusion_matrix` is a nested list (rows: true class)."""
        from sklearn import metrics as skm

        if not self.is_classification:
            y = pd.to_numeric(y_true, errors="coerce").to_numpy(dtype=float)
            return {
                "rmse": float(np.sqrt(skm.mean_squared_error(y, outputs))),
                "mae": float(skm.mean_absolute_error(y, outputs)),
                "r2": float(skm.r2_score(y, outputs)) if len(y) > 1 else float("nan"),
                "n": len(y),
            }
        if self.is_multilabel:
            return self._multilabel_metrics(self.encode_targets(y_true).astype(np.int64), outputs)
        y = self.encode_targets(y_true)
        pred = outputs.argmax(axis=1)
        labels = list(range(len(self.classes)))
        out: dict[str, Any] = {"accuracy": float(skm.accuracy_score(y, pred))}
        for avg in ("macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
            out |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
        out["auroc"] = self._auroc(y, outputs)
        out["log_loss"] = float(skm.log_loss(y, np.clip(outputs, 1e-7, 1), labels=labels))
        out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=labels).tolist()
        p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        out["per_class"] = {
            str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(self.classes)
        }
        out["n"] = len(y)
        return out

    def _multilabel_metrics(self, y: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        from sklearn import metrics as skm

        pred = label_sets(outputs, not self.allows_empty)
        out: dict[str, Any] = {"accuracy": float(skm.accuracy_score(y, pred))}  # exact match: the whole set right
        for avg in ("micro", "macro", "weighted"):
            p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
            out |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
        out["f1_samples"], out["jaccard_samples"] = _per_sample(y, pred)
        if self.allows_empty:  # the rows with no label: how many, and the share predicted empty
            empty = y.sum(axis=1) == 0
            out["empty_rows"] = int(empty.sum())
            out["empty_accuracy"] = float((pred[empty].sum(axis=1) == 0).mean()) if empty.any() else None
        out["hamming_loss"] = float(skm.hamming_loss(y, pred))
        both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]  # AUROC needs both outcomes
        out["auroc"] = float(np.mean([skm.roc_auc_score(y[:, j], outputs[:, j]) for j in both])) if both else None
        p_ = np.clip(outputs, 1e-7, 1 - 1e-7)
        out["log_loss"] = float(-np.mean(y * np.log(p_) + (1 - y) * np.log(1 - p_)))  # mean binary cross-entropy
        p, r, f, s = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
        out["per_class"] = {
            str(c): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(self.classes)
        }
        out["n"] = len(y)
        return out

    def _auroc(self, y: np.ndarray, proba: np.ndarray) -> float:
        from sklearn.metrics import roc_auc_score

        present = np.unique(y)
        if len(present) < 2:
            return float("nan")  # undefined with one class in the evaluation set
        if len(self.classes) == 2:
            return float(roc_auc_score(y, proba[:, 1]))
        # One-vs-rest over the classes that occur, probabilities renormalized over them.
        p = proba[:, present]
        p = p / p.sum(axis=1, keepdims=True).clip(1e-12)
        if len(present) == 2:
            return float(roc_auc_score(y == present[1], p[:, 1]))
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present))

    def to_dict(self) -> dict[str, Any]:
        extra = {"empty_label": self.empty_label} if self.is_multilabel else {}
        return {
            "problem_type": self.problem_type.value,
            "classes": self.classes,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
        } | extra

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        if d["problem_type"] == ProblemType.TEXT.value:
            return subclass(ProblemType.TEXT).from_dict(d)
        return cls(
            ProblemType(d["problem_type"]),
            d.get("classes"),
            d.get("y_mean", 0.0),
            d.get("y_std", 1.0),
            d.get("empty_label", EMPTY_MISSING),  # folders written before the setting: at least one label
        )
