"""The model behind the server: rows of values in, one prediction per row out, through the one `InferenceEngine`.

A request goes through two stages. `decode` (per request, in the decoding pool, many at once) turns its image and
audio bytes into arrays with the very decoders and options `predict` uses; `run` (per batch, on the model thread)
builds one table of the batch, preprocesses it in one vectorised pass and runs one forward pass.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.schema import FRAMES, SOUND, Modality, input_column
from polymodal.serving.inputs import VALUE_KINDS, FieldError, RequestError

log = logging.getLogger("polymodal.serving")

# Every media cell a request can produce holds bytes, so the engine never resolves a path. Should one ever slip
# through, it would resolve below /dev/null, which cannot be a folder: nothing on disk can be reached.
NO_FILES = Path("/dev/null/no-files")
UNPROCESSABLE = "could not be processed (a corrupt or unsupported file?)"


@dataclass
class Decoded:
    """One request, ready for the model: its rows (media still as bytes, for frozen encoders that read them) and
    the decoded arrays of each image and audio column, and of each video's frames and sound track (keyed by
    input, "COL:frames" and "COL:sound"; None where absent)."""

    rows: list[dict[str, Any]]
    media: dict[str, list[np.ndarray | None]]

    def __len__(self) -> int:
        return len(self.rows)


class ModelService:
    """Load a model folder once; answer batches of requests with the engine's pipeline + `engine.outputs`."""

    def __init__(self, folder: str | Path, runtime: str = "torch", threads: int | None = None, accelerate: bool = True):
        """`accelerate`: serve a PyTorch model the fastest way that gives its answers on generated examples: its
        ONNX graph, exported at start (serving/graph.py; with the `onnx` extra), else a faster forward pass of the
        network (model/fast.py: ONNX Runtime on the network alone, else its TorchScript trace). `threads`: per
        process (ONNX Runtime: 1 unless given, as for the ONNX runtime)."""
        from polymodal.predictor import MultimodalPredictor

        self.folder, self.threads, self.runtime = Path(folder), threads, runtime
        self._graph_path = None  # serving/graph.py: where the graph exported at start was read from
        if runtime == "onnx":  # ONNX Runtime's own thread pool spins; one thread per worker is the fast default
            self.predictor = MultimodalPredictor._load_onnx(self.folder, None, threads=threads or 1)
        else:
            if threads:
                import torch

                torch.set_num_threads(threads)
            self.predictor = MultimodalPredictor.load(self.folder, runtime=runtime)
        self.engine = self.predictor.engine
        self.schema = self.engine.schema
        self.task = self.engine.task
        self.input_names = list(self.schema.inputs)
        self.classes = [str(c) for c in self.task.classes] if self.task.is_classification else None
        self.decoders = self._decoders()
        self.videos = frozenset(c for c in self.decoders if self.schema.columns[c] is Modality.VIDEO)
        self._column_modality = list(self.schema.columns.items())
        # Files of a kind decoded here (image, audio) take the fast path; any other kind (a modality added later)
        # goes through the engine's own decoding, as in `predict`.
        frozen = set(self.engine.pipeline.frozen_inputs)
        self.fast = all(m in VALUE_KINDS or c in self.decoders or c in frozen for c, m in self._column_modality)
        self.accelerated = accelerate and runtime == "torch" and self._accelerate()

    def _accelerate(self) -> bool:
        """Serve the model through its ONNX graph (serving/graph.py), else a faster forward pass of the network
        checked on the warm-up example (inputs it cannot generate are checked absent)."""
        from polymodal.serving.graph import serve_graph

        if serve_graph(self):
            return True
        pipeline = self.engine.pipeline
        if not self.fast or pipeline.frozen_inputs:  # frozen pretrained encoders: not a traceable network anyway
            return False
        try:
            one = self.decode([self.example_row()])
            features = pipeline.features(self.columns(one.rows), one.media, {})
        except Exception:  # an example this model's preprocessing refuses: serve the network as it is
            log.warning("no example to trace the network on; serving it eagerly", exc_info=True)
            return False
        return self.engine.accelerate(features, threads=self.threads or 1)

    def _decoders(self) -> dict[str, Callable[[bytes], np.ndarray]]:
        """column -> bytes -> array, as `predict` decodes it (frozen encoders read their bytes themselves)."""
        from polymodal.data.media import decode_audio, decode_image
        from polymodal.data.video import decode_video

        pipeline = self.engine.pipeline
        opt, frozen = pipeline.media_options(), set(pipeline.frozen_inputs)
        out: dict[str, Callable[[bytes], np.ndarray]] = {}
        for col in self.schema.columns_of(Modality.IMAGE):
            if col not in frozen:
                size = opt["sizes"].get(col, opt["image_size"])
                out[col] = partial(decode_image, size=size, fit=opt["fits"].get(col, opt["image_fit"]))
        for col in self.schema.columns_of(Modality.AUDIO):
            if col not in frozen:
                out[col] = partial(decode_audio, sample_rate=opt["rates"].get(col, opt["sample_rate"]))
        for col in self.schema.columns_of(Modality.VIDEO):  # frames + sound track, one pass (data/video.py)
            if not any(input_column(n, self.schema.columns) == col for n in frozen):
                out[col] = partial(decode_video, size=opt["image_size"], sample_rate=opt["sample_rate"],
                                   fit=opt["image_fit"], **opt["video"])  # fmt: skip
        return out

    # ---- stage 1: one request's media, in the decoding pool --------------------------------------------------
    def decode(self, rows: list[dict[str, Any]]) -> Decoded:
        """Decode the image and audio bytes of one request's rows; a file that does not decode is a 422 naming
        its instance and field."""
        from polymodal.data.media import MediaError

        media: dict[str, list[np.ndarray | None]] = {}
        errors: list[FieldError] = []
        for col, decode in self.decoders.items() if self.fast else ():
            values: list[np.ndarray | None] = []
            for i, row in enumerate(rows):
                value = row.get(col)
                if value is None:
                    values.append(None)
                    continue
                try:
                    values.append(decode(value))
                except MediaError as e:
                    errors.append(FieldError(i, col, str(e)))
                    values.append(None)
            if col in self.videos:  # a clip is two inputs: its frames and its sound track (None: silent)
                media[col + FRAMES] = [None if c is None else c.frames for c in values]
                media[col + SOUND] = [None if c is None else c.sound for c in values]
            else:
                media[col] = values
        if errors:
            raise RequestError(errors)
        return Decoded(rows, media)

    # ---- stage 2: one forward pass for a batch of requests, on the model thread ------------------------------
    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Rows -> a table like `predict` reads."""
        return pd.DataFrame(self.columns(rows), copy=False)

    def columns(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Rows -> one array per column, which the preprocessor reads like a table (no pandas on the fast path:
        for a lone request its construction cost more than the model). Object arrays, so that an integer
        category next to an empty cell stays 3 (read as "3") instead of becoming 3.0 (an unseen category)."""
        cols = {}
        for col, modality in self._column_modality:
            values = [r.get(col) for r in rows]
            if modality is Modality.NUMERIC:
                cols[col] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                continue
            if modality not in VALUE_KINDS and not all(v is None or isinstance(v, bytes) for v in values):
                raise TypeError(f"media column {col!r} must hold bytes or None")  # never a path
            column = np.empty(len(values), dtype=object)
            column[:] = values
            cols[col] = column
        return cols

    def run(self, requests: list[Decoded]) -> list[list[dict[str, Any]] | RequestError]:
        """One forward pass for several requests; each gets its predictions, or the problems of its own rows."""
        sizes = [len(req) for req in requests]
        rows = [r for req in requests for r in req.rows]
        owner = np.repeat(np.arange(len(requests)), sizes)
        start = np.concatenate([[0], np.cumsum(sizes)])
        try:
            pipeline = self.engine.pipeline
            # The columns as arrays on the fast path; pandas only where the engine's own decoding needs it.
            df = self.columns(rows) if self.fast and not pipeline.frozen_inputs else self.frame(rows)
            if self.fast:
                media = {key: [m for req in requests for m in req.media[key]] for key in requests[0].media}
                frozen, problems = {}, []
                if pipeline.frozen_inputs:  # embeddings of frozen pretrained encoders, through their cache
                    _, frozen, problems = pipeline.decode(df, NO_FILES, media=False)
                features = pipeline.features(df, media, frozen)
            else:
                features, problems = self.engine.features(df, NO_FILES, on_bad_rows="missing")
            outputs = self.engine.outputs(features)
        except Exception:
            if len(requests) > 1:  # find the request that broke the batch; the others are answered normally
                return [self.run([req])[0] for req in requests]
            # A single request whose values crash preprocessing is the client's problem: answer 422 and keep
            # serving. Logged in full in case it is ours.
            log.exception("request could not be processed")
            return [RequestError([FieldError(None, None, UNPROCESSABLE)])]
        bad: dict[int, list[FieldError]] = {}
        for p in problems:  # files the engine could not read (frozen encoders, other kinds)
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
        if getattr(self.task, "is_text", False):  # generated text: the best hypothesis
            text = str(self.task.decode(output[None])[0])
            return {"prediction": text, "probabilities": None, "inputs_used": used, "inputs_missing": missing}
        if self.task.is_multilabel:  # the label set, as the table writes it, and each label on its own ([]: none)
            from polymodal.tasks import split_labels

            prediction = str(self.task.decode(output[None, :])[0])
            proba = dict(zip(self.classes, output.tolist(), strict=True))
            return {"prediction": prediction, "labels": split_labels(prediction), "probabilities": proba,
                    "inputs_used": used, "inputs_missing": missing}  # fmt: skip
        if self.task.is_classification:
            label = self.task.classes[int(np.argmax(output))]
            label = label.item() if isinstance(label, np.generic) else label
            proba = dict(zip(self.classes, output.tolist(), strict=True))
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
                vocab = state.get(col, {}).get("vocab") or []
                row[col] = " ".join(vocab[:5]) or "warm up"
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
            elif modality is Modality.CATEGORICAL:
                vocabs = state["tabular:categorical"]
                vocab = vocabs["vocabs"][vocabs["columns"].index(col)]
                row[col] = vocab[0] if vocab else None
            else:  # a kind with no generated example here: absent (the model's missing-modality path)
                row[col] = None
        return row

    def categories(self) -> dict[str, list[str]]:
        """Known values of each categorical column (the page offers them as choices)."""
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
                {"name": col, "modality": modality.value,
                 "type": json_types.get(modality, "string (base64) or file upload"),
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
            "runtime": self.runtime,
            "executor": self.executor,
        }

    @property
    def executor(self) -> str:
        """What answers: "onnx-graph" (an exported graph, or the folder's model exported at start), "onnx-network"
        (the network alone in ONNX Runtime), "torchscript" (traced) or "pytorch" (eager, or folded only)."""
        if self.engine.runtime == "onnx":
            return "onnx-graph"
        fast = self.engine.fast
        return fast.executor if fast is not None else "pytorch"
