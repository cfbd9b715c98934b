"""Text generation from exported graphs (polymodal/optimize/onnx_decoder.py) with ONNX Runtime, without torch: the
main graph gives the memory (or a CTC head's frames), the decoder-step graph the next token's log-probabilities,
and `polymodal.tasks.beam` searches, exactly as the PyTorch network does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError
from polymodal.tasks.beam import beam_search, ctc_greedy, pack
from polymodal.tasks.text import BOS, EOS, PAD, UNK

DECODER_SUFFIX = ".decoder.onnx"


class OnnxTextDecoder:
    def __init__(self, graph: Path, record: dict[str, Any], options: Any):
        import onnxruntime as ort

        self.max_len = int(record["max_len"])
        self.generation = dict(record["generation"])
        self.ctc = bool(record["ctc"])
        self.step_session = None
        if not self.ctc:
            step = graph.with_name(graph.stem + DECODER_SUFFIX)
            if not step.is_file():
                raise UserError(f"{graph} is a text model: its decoder-step graph {step.name} must lie beside it")
            self.step_session = ort.InferenceSession(str(step), options, providers=["CPUExecutionProvider"])

    def run(self, session: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The text task's outputs (rows, n_best, 1 + max_len + 1) for one batch of graph inputs."""
        if self.ctc:
            (frames,) = session.run(["frames"], feed)
            ids, score = ctc_greedy(frames, blank=PAD)
            out = np.full((len(ids), 1, self.max_len + 1), PAD, dtype=np.int64)
            for r, row in enumerate(ids):
                toks = [t for t in row.tolist() if t != PAD][: self.max_len]
                out[r, 0, : len(toks)] = toks
                out[r, 0, len(toks)] = EOS
            return pack(out, score[:, None])
        memory, mask, cache = session.run(["memory", "memory_mask", "cache"], feed)
        g = self.generation
        k = max(1, int(g["beam_size"]))
        mem, msk = np.repeat(memory, k, axis=0), np.repeat(mask, k, axis=0)
        sess = self.step_session

        def step(prefix: np.ndarray, c: np.ndarray, shared: tuple[np.ndarray, np.ndarray]):
            feed = {"prefix": prefix, "memory": shared[0], "memory_mask": shared[1], "cache": c}
            logp, c = sess.run(["log_probs", "cache_out"], feed)
            return logp, c

        ids, scores = beam_search(
            step, np.repeat(cache, k, axis=0), len(memory), bos=BOS, eos=EOS, pad=PAD, max_len=self.max_len,
            beam_size=k, length_penalty=float(g["length_penalty"]), no_repeat_ngram=int(g["no_repeat_ngram"]),
            n_best=int(g["n_best"]), forbidden=(UNK,), shared=(mem, msk),
        )  # fmt: skip
        return pack(ids, scores)
