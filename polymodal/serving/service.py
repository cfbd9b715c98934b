"""The model behind the server: rows of values in, one prediction per row out, through the one `InferenceEngine`."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.schema import Modality
from polymodal.serving.inputs import FieldError, RequestError

log = logging.getLogger("polymodal.serving")

# Every media cell a request can produce holds bytes, so the engine never resolves a path. Should one ever slip
# through, it would resolve below /dev/null, which cannot be a folder: nothing on disk can be reached.
NO_FILES = Path("/dev/null/no-files")


class ModelService:
    """Load a model folder once; answer batches of requests with `engine.features` + `engine.outputs`."""

    def __init__(self, folder: str | Path, runtime: str = "torch"):
        from polymodal.predictor import MultimodalPredictor

        self.folder = Path(folder)
        self.predictor = MultimodalPredictor.load(self.folder, runtime=runtime)
        self.engine = self.predictor.engine
        self.schema = self.engine.schema
        self.task = self.engine.task
        self.input_names = list(self.schema.inputs)
        self.classes = [str(c) for c in self.task.classes] if self.task.is_classification else None

    # ---- the forward pass ------------------------------------------------------------------------------------
    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Rows -> a table like `predict` reads. Object columns, so that an integer category next to an empty
        cell stays 3 (read as "3") instead of becoming 3.0 (an unseen category)."""
        cols = {}
        for col, modality in self.schema.columns.items():
            values = [r.get(col) for r in rows]
            if modality in (Modality.IMAGE, Modality.AUDIO) and not all(
                v is None or isinstance(v, bytes) for v in values
            ):
                raise TypeError(f"media column {col!r} must hold bytes or None")  # never a path
            dtype = np.float64 if modality is Modality.NUMERIC else object
            cols[col] = pd.Series([np.nan if v is None and dtype is np.float64 else v for v in values], dtype=dtype)
        return pd.DataFrame(cols)

    def run(self, requests: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]] | RequestError]:
        """One forward pass for several requests; each gets its predictions, or the problems of its own rows."""
        rows = [r for req in requests for r in req]
        owner = np.repeat(np.arange(len(requests)), [len(req) for req in requests])
        start = np.concatenate([[0], np.cumsum([len(req) for req in requests])])
        try:
            features, problems = self.engine.features(self.frame(rows), NO_FILES, on_bad_rows="missing")
            outputs = self.engine.outputs(features)
        except Exception:
            if len(requests) > 1:  # find the request that broke the batch; the others are answered normally
                return [self.run([req])[0] for req in requests]
            # A single request whose values crash decoding (a hostile file the header check let through) is
            # the client's problem: answer 422 and keep serving. Logged in full in case it is ours.
            log.exception("request could not be processed")
            msg = "could not be processed (a corrupt or unsupported file?)"
            return [RequestError([FieldError(None, None, msg)])]
        bad: dict[int, list[FieldError]] = {}
        for p in problems:  # files whose header looked fine but whose data did not decode
            r = int(owner[p.row])
            bad.setdefault(r, []).append(FieldError(int(p.row - start[r]), p.column, p.reason))
        finite = np.isfinite(outputs.reshape(len(rows), -1)).all(axis=1)
        for i in np.flatnonzero(~finite):  # e.g. a number so far out of range that the network overflows
            r = int(owner[i])
            msg = "the model's output is not finite for this instance (is a number far outside the training range?)"
            bad.setdefault(r, []).append(FieldError(int(i - start[r]), None, msg))
        results: list[list[dict[str, Any]] | RequestError] = []
        for r in range(len(requests)):
            if r in bad:
                results.append(RequestError(bad[r]))
                continue
            sl = slice(int(start[r]), int(start[r + 1]))
            results.append([self.answer(o, p) for o, p in zip(outputs[sl], features.present[sl], strict=True)])
        return results

    def answer(self, output: np.ndarray, present: np.ndarray) -> dict[str, Any]:
        used = [n for n, ok in zip(self.input_names, present, strict=True) if ok]
        missing = [n for n, ok in zip(self.input_names, present, strict=True) if not ok]
        if self.task.is_multilabel:  # the label set, as the table writes it, and each label on its own
            prediction = str(self.task.decode(output[None, :])[0])
            proba = {c: float(v) for c, v in zip(self.classes, output, strict=True)}
            return {"prediction": prediction, "labels": prediction.split("|"), "probabilities": proba,
                    "inputs_used": used, "inputs_missing": missing}  # fmt: skip
        if self.task.is_classification:
            label = self.task.classes[int(np.argmax(output))]
            proba = {c: float(v) for c, v in zip(self.classes, output, strict=True)}
            return {"prediction": label, "probabilities": proba, "inputs_used": used, "inputs_missing": missing}
        value = float(output)
        return {
            "prediction": value if math.isfinite(value) else None,
            "probabilities": None,
            "inputs_used": used,
            "inputs_missing": missing,
        }

    # ---- warm-up and description -----------------------------------------------------------------------------
    def example_row(self) -> dict[str, Any]:
        """A row with every input present (generated, not read from anywhere), to warm the model up."""
        import soundfile as sf
        from PIL import Image

        cfg = self.engine.preprocessor.config
        state = self.engine.preprocessor.state
        row: dict[str, Any] = {}
        for col, modality in self.schema.columns.items():
            if modality is Modality.TEXT:
                row[col] = " ".join(state[col]["vocab"][:5]) or "warm up"
            elif modality is Modality.IMAGE:
                buf = io.BytesIO()
                Image.new("RGB", (cfg.image_size, cfg.image_size), (128, 128, 128)).save(buf, format="PNG")
                row[col] = buf.getvalue()
            elif modality is Modality.AUDIO:
                buf = io.BytesIO()
                t = np.arange(cfg.sample_rate // 2) / cfg.sample_rate
                sf.write(buf, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), cfg.sample_rate, format="WAV")
                row[col] = buf.getvalue()
            elif modality is Modality.NUMERIC:
                row[col] = 0.0
            else:
                vocabs = state["tabular:categorical"]
                vocab = vocabs["vocabs"][vocabs["columns"].index(col)]
                row[col] = vocab[0] if vocab else None
        return row

    def categories(self) -> dict[str, list[str]]:
        """Known values of each categorical column (the page offers them as suggestions)."""
        st = self.engine.preprocessor.state.get("tabular:categorical")
        return dict(zip(st["columns"], st["vocabs"], strict=True)) if st else {}

    def describe(self) -> dict[str, Any]:
        """What GET /v1/model returns: input columns with modality and JSON type, classes, metrics."""
        json_types = {
            Modality.TEXT: "string",
            Modality.IMAGE: "string (base64) or file upload",
            Modality.AUDIO: "string (base64) or file upload",
            Modality.NUMERIC: "number",
            Modality.CATEGORICAL: "string | number | boolean",
        }
        groups = {
            "tabular:numeric": self.schema.columns_of(Modality.NUMERIC),
            "tabular:categorical": self.schema.columns_of(Modality.CATEGORICAL),
        }
        inputs = []
        for col, modality in self.schema.columns.items():
            fusion_input = {Modality.NUMERIC: "tabular:numeric", Modality.CATEGORICAL: "tabular:categorical"}
            inputs.append(
                {"name": col, "modality": modality.value, "type": json_types[modality],
                 "fusion_input": fusion_input.get(modality, col)}
            )  # fmt: skip
        metrics = {k: v for k, v in self.predictor.metrics_.items() if k in ("valid", "test") and isinstance(v, dict)}
        return {
            "label": self.schema.label,
            "problem_type": self.schema.problem_type.value,
            "classes": list(self.task.classes) if self.task.is_classification else None,
            "fusion": self.predictor.fusion,
            "inputs": inputs,
            "fusion_inputs": {n: groups.get(n, [n]) for n in self.input_names},
            "categories": self.categories(),
            "metrics": metrics,
        }
