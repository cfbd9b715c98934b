"""Late ensembles of separately trained unimodal models (average, or stacking fitted on validation outputs).

For generated text (a `text` label) `average` is a product of experts: the members' decoders step together in one
beam search on the mean of their log-probabilities (`polymodal.model.text_net.generate_together`), a member whose
input a row lacks left out of that row; the members must share the target vocabulary. Stacking has no meaning there.

An `EnsembleModel` behaves like an `InferenceEngine` for evaluation: `schema`, `task`, `preprocessor`,
`features(df, base_dir)` and `outputs(features, present=...)`. Its folder holds `ensemble.json` (the mode, the
combiner's few numbers, and the members' model folders as relative paths) and `metrics.json`; no pickle.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polymodal.data.schema import Schema
from polymodal.data.validate import Problem
from polymodal.errors import UserError
from polymodal.evaluation.subset import merge_features, select_features
from polymodal.fusion.ensemble import MODES, ProbabilityEnsemble
from polymodal.model.artifact import METRICS, atomic_folder, read_json, write_json
from polymodal.model.pipeline import FeaturePipeline
from polymodal.preprocess import Features, Preprocessor
from polymodal.tasks import Task
from polymodal.version import __version__

ENSEMBLE = "ensemble.json"


def _union_schema(schemas: list[Schema]) -> Schema:
    columns: dict = {}
    for s in schemas:
        columns |= s.columns
    first = schemas[0]
    ignored = [c for c in first.ignored if c not in columns]
    return Schema(columns, first.label, first.problem_type, ignored, empty_label=first.empty_label)


class EnsembleModel:
    def __init__(self, members: dict[str, Any], mode: str, combiner: ProbabilityEnsemble | None = None):
        """`members`: fusion input name -> the `InferenceEngine` of a model trained on that input alone."""
        if mode not in MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; choose one of {list(MODES)}")
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two unimodal members")
        for name, engine in members.items():
            if list(engine.schema.inputs) != [name]:
                raise ValueError(f"member {name!r} must be a model of that one input, not {list(engine.schema.inputs)}")
        self.members, self.mode = dict(members), mode
        first = next(iter(members.values()))
        self.task: Task = first.task
        if self.task.is_text:
            _check_text_members(self.members, mode)
        self.schema = _union_schema([e.schema for e in members.values()])
        self.members = {n: members[n] for n in self.schema.inputs}  # the fusion order of the inputs
        config = first.preprocessor.config
        if hasattr(config, "pretrained"):  # every member's pretrained encoder, for the shared pipeline
            pretrained = {n: e.preprocessor.config.pretrained[n] for n, e in self.members.items()
                          if n in e.preprocessor.config.pretrained}  # fmt: skip
            config = dataclasses.replace(config, pretrained=pretrained)
        self.preprocessor = Preprocessor(self.schema, config)
        self.preprocessor.state = {n: e.preprocessor.state[n] for n, e in self.members.items()}
        self.pipeline = FeaturePipeline(self.schema, self.preprocessor, progress=False)
        k = self.task.n_outputs
        self.combiner = combiner or ProbabilityEnsemble(
            {n: k for n in self.members}, k, mode=mode, classification=self.task.is_classification
        )
        self.combiner.eval()

    # ---- inference ---------------------------------------------------------------------------------
    def member_outputs(self, features: Features, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, n_members, n_outputs) member outputs (standardized predictions for regression) and the mask."""
        feats = select_features(features, list(self.members))
        mask = feats.present if present is None else feats.present & present
        outs = []
        for j, (name, engine) in enumerate(self.members.items()):
            o = engine.outputs(select_features(feats, [name]), present=mask[:, [j]])
            if not self.task.is_classification:
                o = ((o - self.task.y_mean) / self.task.y_std)[:, None]
            outs.append(o.astype(np.float32))
        return np.stack(outs, axis=1), mask

    @torch.inference_mode()
    def outputs(self, features: Features, batch_size: int = 256, present: np.ndarray | None = None) -> np.ndarray:
        if self.task.is_text:
            return self._text_outputs(features, batch_size, present)
        x, mask = self.member_outputs(features, present)
        emb = {n: torch.from_numpy(x[:, j]) for j, n in enumerate(self.members)}
        return self.task.outputs(self.combiner(emb, torch.from_numpy(mask)))

    def _text_outputs(self, features: Features, batch_size: int, present: np.ndarray | None) -> np.ndarray:
        from polymodal.model.batch import iterate_batches, to_device
        from polymodal.model.text_net import generate_together

        feats = select_features(features, list(self.members))
        mask = feats.present if present is None else feats.present & present
        engines = list(self.members.values())
        parts = [
            iterate_batches(select_features(feats, [n]).with_present(mask[:, [j]]), batch_size)
            for j, n in enumerate(self.members)
        ]
        chunks = []
        for batches in zip(*parts, strict=True):
            memories, weights = [], []
            for engine, batch in zip(engines, batches, strict=True):
                batch = to_device(batch, engine.device)
                memory, real, _ = engine.net.memory(batch["inputs"], batch["present"])
                memories.append((memory, real))
                weights.append(batch["present"][:, 0].float().cpu())
            generated = generate_together([e.net for e in engines], memories, torch.stack(weights, 1))
            chunks.append(self.task.outputs(torch.from_numpy(generated)))
        return np.concatenate(chunks) if chunks else np.zeros((0, 1, self.task.max_length + 2))

    def features(self, df: pd.DataFrame, base_dir: Path, on_bad_rows: str = "error") -> tuple[Features, list[Problem]]:
        """Each member's own features of the table (decoded by each member), side by side."""
        parts, problems = [], []
        for engine in self.members.values():
            f, p = engine.features(df, base_dir, on_bad_rows=on_bad_rows)
            parts.append(f)
            problems += p
        return merge_features(parts), problems

    @property
    def parameters(self) -> int:
        members = sum(sum(t.numel() for t in e.net.parameters()) for e in self.members.values())
        return members + (sum(t.numel() for t in self.combiner.parameters()) if self.mode == "stack" else 0)

    # ---- stacking ----------------------------------------------------------------------------------
    def fit_stacking(self, valid_features: Features, valid_targets: np.ndarray, c: float = 1.0) -> EnsembleModel:
        """Fit the stacking model on validation outputs (scikit-learn), with each member also shown as absent
        (its mean output in its place), so the stack knows what to do when a modality is missing."""
        if self.mode != "stack":
            return self
        return self.fit_stacking_outputs(*self.member_outputs(valid_features), valid_targets, c)

    def fit_stacking_outputs(self, x: np.ndarray, mask: np.ndarray, targets: np.ndarray, c: float = 1.0
                             ) -> EnsembleModel:  # fmt: skip
        """`fit_stacking` from the members' validation outputs `x` (n, members, outputs) and presence `mask`
        (a streamed compare gathers them chunk by chunk)."""
        if self.mode != "stack":
            return self
        valid_targets = targets
        n, m, k = x.shape
        impute = np.stack(
            [x[mask[:, j], j].mean(axis=0) if mask[:, j].any() else x[:, j].mean(axis=0) for j in range(m)]
        )
        rows = [np.where(mask[:, :, None], x, impute[None])]
        for j in range(m):
            hidden = rows[0].copy()
            hidden[:, j] = impute[j]
            rows.append(hidden)
        X = np.concatenate(rows).reshape(-1, m * k)
        y = np.tile(valid_targets, m + 1)
        weight, bias = np.zeros((k, m * k)), np.zeros(k)
        if self.task.is_classification:
            from sklearn.linear_model import LogisticRegression

            seen = np.unique(y)
            if len(seen) < 2:
                raise UserError("stacking needs at least two classes in the validation rows")
            lr = LogisticRegression(C=c, max_iter=2000).fit(X, y)
            if len(seen) == 2:  # scikit-learn keeps one row of weights: logit of seen[1] against seen[0]
                weight[seen[1]], bias[seen[1]] = lr.coef_[0], lr.intercept_[0]
            else:
                weight[seen], bias[seen] = lr.coef_, lr.intercept_
            unseen = np.setdiff1d(np.arange(k), seen)
            bias[unseen] = min(bias[seen].min(), 0.0) - 20.0  # classes absent from validation: never predicted
        else:
            from sklearn.linear_model import Ridge

            r = Ridge(alpha=c).fit(X, y)
            weight[0], bias[0] = r.coef_, r.intercept_
        self.combiner.set_linear(weight, bias, impute)
        return self

    # ---- persistence -------------------------------------------------------------------------------
    def save(
        self, folder: str | os.PathLike[str], member_folders: dict[str, Path], metrics: dict | None = None
    ) -> Path:
        """Write ensemble.json (+ metrics.json) atomically; members are referenced by relative path."""
        folder = Path(folder).resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "kind": "polymodal-ensemble",
            "polymodal_version": __version__,
            "mode": self.mode,
            "members": {n: os.path.relpath(Path(member_folders[n]).resolve(), folder) for n in self.members},
            "task": self.task.to_dict(),
            "combiner": {
                "weight": self.combiner.linear.weight.detach().tolist(),
                "bias": self.combiner.linear.bias.detach().tolist(),
                "impute": self.combiner.impute.detach().tolist(),
            },
        }
        with atomic_folder(folder) as tmp:
            write_json(tmp / ENSEMBLE, spec)
            write_json(tmp / METRICS, metrics or {})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> EnsembleModel:
        from polymodal.predictor import MultimodalPredictor

        folder = Path(folder)
        spec = read_json(folder / ENSEMBLE)
        members = {n: MultimodalPredictor.load(folder / rel).engine for n, rel in spec["members"].items()}
        model = cls(members, spec["mode"])
        c = spec["combiner"]
        model.combiner.set_linear(np.asarray(c["weight"]), np.asarray(c["bias"]), np.asarray(c["impute"]))
        return model


def _check_text_members(members: dict[str, Any], mode: str) -> None:
    """Text members decode together: the same vocabulary, step-by-step decoders (not CTC), PyTorch networks."""
    if mode != "average":
        raise UserError(
            "a text ensemble is a product of experts (ensemble-average); stacking has no meaning for generated text"
        )
    first_name, first = next(iter(members.items()))
    for name, engine in members.items():
        if engine.runtime != "torch" or not hasattr(engine.net, "memory"):
            raise UserError(f"text ensemble member {name!r} must be a PyTorch model folder, not an exported graph")
        if engine.task.ctc:
            raise UserError(
                f"text ensemble member {name!r} has a CTC head, which scores frames, not next tokens: train it with "
                "decoder.name transformer or gru to decode it together with the others"
            )
        if engine.task.vocabulary.to_dict() != first.task.vocabulary.to_dict():
            raise UserError(
                f"text ensemble members {first_name!r} and {name!r} have different target vocabularies: train them "
                "on the same training rows with the same decoder.tokens / max_vocab / min_count settings"
            )


def is_ensemble_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / ENSEMBLE).exists()
