"""The one inference engine: raw rows (file paths or in-memory bytes) -> model outputs.

`predict`, `evaluate`, `compare` and `serve` all go through `InferenceEngine`, so they cannot disagree.
The network is a PyTorch `MultimodalNet`, or an `OnnxNet` (ONNX Runtime, preprocessing inside the graph): then
the engine gives the graph its raw inputs and never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from polymodal.data.schema import Schema
from polymodal.data.validate import BadRowsError, Problem, check_columns
from polymodal.model.pipeline import FeaturePipeline
from polymodal.preprocess import Features, Preprocessor
from polymodal.tasks import Task

if TYPE_CHECKING:
    import torch

    from polymodal.model.fast import FastForward
    from polymodal.model.network import MultimodalNet
    from polymodal.model.onnx_runtime import OnnxNet


class InferenceEngine:
    def __init__(
        self,
        schema: Schema,
        preprocessor: Preprocessor,
        task: Task,
        net: MultimodalNet | OnnxNet,
        cache_dir: Path | None = None,
    ):
        self.schema, self.preprocessor, self.task, self.net = schema, preprocessor, task, net.eval()
        self.pipeline = FeaturePipeline(schema, preprocessor, cache_dir=cache_dir, progress=False)
        self.runtime = getattr(net, "runtime", "torch")
        self.pipeline.raw = self.runtime == "onnx"
        self.fast: FastForward | None = None  # the index-free forward, traced (`accelerate`)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def features(self, df: pd.DataFrame, base_dir: Path, on_bad_rows: str = "error") -> tuple[Features, list[Problem]]:
        """Decode and preprocess rows. Bad rows raise, or with on_bad_rows='missing' become an absent modality."""
        for col in self.schema.columns:
            if col not in df.columns:
                df = df.assign(**{col: None})  # an input column left out: absent for every row
        check_columns(df, self.schema, training=False)
        media, frozen, problems = self.pipeline.decode(df, base_dir)
        if problems and on_bad_rows == "error":
            raise BadRowsError(problems)
        return self.pipeline.features(df, media, frozen), problems

    def outputs(self, features: Features, batch_size: int = 256, present: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (classification) or predictions (regression). `present` can hide inputs on purpose."""
        if present is not None:
            features = features.with_present(features.present & present)
        if self.runtime == "onnx":  # the graph's output already is the task's output (softmax / unstandardized)
            chunks = [self.net.run(features.take(np.arange(s, min(s + batch_size, len(features)))).expand())
                      for s in range(0, len(features), batch_size)]  # the graph takes every input per row  # fmt: skip
        else:
            chunks = self._torch_outputs(features, batch_size)
        n_out = self.task.n_outputs if self.task.is_classification else None
        if not chunks:
            return np.zeros((0, n_out) if n_out else (0,), dtype=np.float32)
        return np.concatenate(chunks)

    def accelerate(self, examples: Features, threads: int | None = None) -> bool:
        """Serve the forward pass through `model.fast` (BatchNorm folded; ONNX Runtime with `threads` threads, or a
        trace), checked against the network on batches of `examples`' first row with inputs present and absent.
        False: the network stays as it is."""
        if self.runtime != "torch" or self.device.type != "cpu" or not len(examples):
            return False
        from polymodal.model.batch import Collate
        from polymodal.model.fast import accelerate

        one = examples.expand().take(np.zeros(1, dtype=np.int64))
        n = len(one.input_names)
        full, odd = one.present[0], np.arange(n) % 2 == 1
        patterns = [[full], [full, full & odd, full & ~odd], [full & ~odd, np.zeros(n, dtype=bool)]]
        checks = []
        for rows in patterns:
            batch = Collate(one.take(np.zeros(len(rows), dtype=np.int64)).with_present(np.array(rows)))(
                list(range(len(rows)))
            )
            checks.append((batch["inputs"], batch["present"]))
        self.fast = accelerate(self.net, checks, onnx_threads=threads)
        return self.fast is not None

    def predict_table(self, df: pd.DataFrame, base_dir: Path, batch_size: int = 256) -> np.ndarray:
        features, _ = self.features(df, base_dir)
        return self.outputs(features, batch_size)

    def _torch_outputs(self, features: Features, batch_size: int) -> list[np.ndarray]:
        import torch

        from polymodal.model.batch import iterate_batches, to_device

        # Rows sharing a file (Features.index) are batched together, so each distinct file is encoded once; the
        # outputs go back to the table's order (in eval mode a row's output does not depend on its batch).
        distinct = getattr(self.net, "distinct_inputs", False)  # a text network reads every input per row
        groups = features.groups() if distinct else None
        order = None if groups is None else np.argsort(groups, kind="stable")
        chunks = []
        rows = features if order is None else features.take(order)
        with torch.inference_mode():
            for batch in iterate_batches(rows, batch_size, distinct=distinct):
                batch = to_device(batch, self.device)
                if "index" in batch or self.fast is None:  # rows sharing a file: the network itself reads `index`
                    index = {"index": batch["index"]} if "index" in batch else {}
                    logits = self.net(batch["inputs"], batch["present"], **index)
                else:
                    logits = self.fast(batch["inputs"], batch["present"])
                chunks.append(self.task.outputs(logits))
        if order is None or not chunks:
            return chunks
        out = np.empty_like(np.concatenate(chunks))
        out[order] = np.concatenate(chunks)
        return [out]
