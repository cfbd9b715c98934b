"""Tasks: the head, the loss, target encoding, and metrics for each problem type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from polymodal.data.schema import ProblemType

if TYPE_CHECKING:  # torch loads on first use: the ONNX runtime decodes outputs without it
    import torch
    from torch import nn


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


class Task:
    """Classification (binary, multiclass; cross-entropy) or regression (MSE on the standardized target)."""

    def __init__(
        self,
        problem_type: ProblemType,
        classes: list[Any] | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ):
        self.problem_type = ProblemType(problem_type)
        self.classes = list(classes) if classes is not None else None
        self.y_mean, self.y_std = y_mean, y_std

    @classmethod
    def fit(cls, problem_type: ProblemType, y: pd.Series) -> Task:
        if ProblemType(problem_type).is_classification:
            classes = sorted({_jsonable(v) for v in y.dropna()}, key=lambda v: (str(type(v)), v))
            if len(classes) < 2:
                raise ValueError(f"the label has a single class ({classes}); classification needs at least two")
            return cls(problem_type, classes=classes)
        values = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        return cls(problem_type, y_mean=float(np.nanmean(values)), y_std=float(max(np.nanstd(values), 1e-8)))

    @property
    def is_classification(self) -> bool:
        return self.problem_type.is_classification

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.is_classification else 1

    @property
    def monitor(self) -> tuple[str, str]:
        """The validation metric for early stopping and best-checkpoint selection, and its direction."""
        return ("accuracy", "max") if self.is_classification else ("rmse", "min")

    def encode_targets(self, y: pd.Series) -> np.ndarray:
        if self.is_classification:
            index = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted({str(v) for v in y if _jsonable(v) not in index})
            if unknown:
                raise ValueError(f"label value(s) {unknown[:10]} were not seen in training (classes: {self.classes})")
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

        if self.is_classification:
            return F.cross_entropy(logits.float(), target)
        return F.mse_loss(logits.float().squeeze(-1), target)

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """Class probabilities (n, n_classes), or predictions in the label's units (n,)."""
        import torch

        if self.is_classification:
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return logits.float().squeeze(-1).cpu().numpy() * self.y_std + self.y_mean

    def decode(self, outputs: np.ndarray) -> np.ndarray:
        """Outputs -> predictions in the label's own values."""
        if self.is_classification:
            return np.asarray(self.classes, dtype=object)[outputs.argmax(axis=1)]
        return outputs

    def score(self, targets: np.ndarray, outputs: np.ndarray) -> float:
        """The monitored metric (see `monitor`) from encoded targets, as used during training."""
        from sklearn import metrics as skm

        if self.is_classification:
            return float(skm.accuracy_score(targets, outputs.argmax(axis=1)))
        return float(np.sqrt(skm.mean_squared_error(targets * self.y_std + self.y_mean, outputs)))

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
        return {
            "problem_type": self.problem_type.value,
            "classes": self.classes,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(ProblemType(d["problem_type"]), d.get("classes"), d.get("y_mean", 0.0), d.get("y_std", 1.0))
