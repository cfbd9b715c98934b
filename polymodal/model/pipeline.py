"""From a table to model-ready `Features`: decode media, run frozen encoders through the cache, preprocess.

Used by `fit` (after which the preprocessor is fitted) and by the inference engine alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.distinct import load_media_once
from polymodal.data.schema import Modality, Schema, input_column
from polymodal.data.validate import Problem
from polymodal.preprocess import Features, Preprocessor, Table

Frozen = dict[str, tuple[np.ndarray, np.ndarray]]


class FeaturePipeline:
    def __init__(
        self, schema: Schema, preprocessor: Preprocessor, cache_dir: Path | None = None, progress: bool = True
    ):
        self.schema, self.preprocessor = schema, preprocessor
        self.cache_dir, self.progress = cache_dir, progress
        self._extractors: dict = {}  # input -> FrozenExtractor
        self.raw = False  # True: `features` gives the ONNX graph's inputs (preprocessing runs inside the graph)

    @property
    def frozen_inputs(self) -> list[str]:
        """Inputs embedded by a frozen encoder through the feature cache (not those inside an exported graph,
        which are decoded like a fine-tuned encoder's)."""
        return [k for k, p in self.preprocessor.config.pretrained.items() if p["mode"] == "frozen"
                and not p.get("in_graph")]  # fmt: skip

    def extractor(self, name: str):
        # Imported here: the encoders load torch, which a model without frozen inputs never needs (ONNX runtime).
        from polymodal.encoders.cache import FrozenExtractor
        from polymodal.encoders.pretrained import EncoderRef

        if name not in self._extractors:
            p = self.preprocessor.config.pretrained[name]
            self._extractors[name] = FrozenExtractor(
                EncoderRef(**p["ref"]), self.schema.inputs[name], self.preprocessor.state[name],
                cache_dir=self.cache_dir, progress=self.progress, runtime=p.get("runtime", "torch"),
                tokens=bool(p.get("tokens")),
            )  # fmt: skip
        return self._extractors[name]

    def media_options(self) -> dict[str, Any]:
        """How each image, audio and video column is decoded (`load_media`'s size, rate, fit and video arguments);
        the server decodes requests itself with the same options."""
        cfg, st = self.preprocessor.config, self.preprocessor.state
        pretrained = cfg.pretrained
        sizes = {c: st[c]["size"] for c in pretrained if self.schema.inputs[c] is Modality.IMAGE}
        rates = {c: st[c]["sample_rate"] for c in pretrained if self.schema.inputs[c] is Modality.AUDIO}
        fits = {c: st[c].get("fit", "squash") for c in sizes}
        video = dict(n_frames=cfg.video_frames, fps=cfg.video_fps, max_seconds=cfg.video_max_seconds,
                     max_pixels=cfg.video_max_pixels)  # fmt: skip
        return dict(image_size=cfg.image_size, sample_rate=cfg.sample_rate, sizes=sizes, rates=rates,
                    image_fit=cfg.image_fit, fits=fits, video=video)  # fmt: skip

    def decode(
        self, df: pd.DataFrame, base_dir: Path, media: bool = True
    ) -> tuple[dict[str, list], Frozen, list[Problem]]:
        """Read every file once: decoded media for the trained encoders, embeddings for the frozen ones.
        `media=False`: only the frozen encoders' embeddings (the feature pass of a streamed fit)."""
        frozen_names = self.frozen_inputs
        columns = self.schema.columns
        # A video whose inputs are all frozen (frames frozen, sound left out) is read by the feature cache alone.
        whole = [c for c in self.schema.columns_of(Modality.VIDEO)
                 if all(n in frozen_names for n in self.schema.inputs if input_column(n, columns) == c)]  # fmt: skip
        skip = tuple(frozen_names + whole) if media else tuple(columns)
        # Each distinct file once: rows naming it share the array, preprocessed once (Features.index).
        decoded, problems = load_media_once(df, self.schema, base_dir, skip=skip, **self.media_options())
        frozen: Frozen = {}
        for name in frozen_names:
            extractor, again = self.extractor(name), None
            if self.schema.inputs[name] is Modality.VIDEO:  # frames decoded for the sound: reused if alike
                cfg, st, frames = self.preprocessor.config, extractor.st, decoded.pop(name, None)
                alike = (st["size"], st.get("fit", "squash")) == (cfg.image_size, cfg.image_fit)
                again = frames if alike else None
            elif name in decoded:  # a sound track decoded with the frames, at this encoder's rate (media_options)
                again = decoded.pop(name)
            col = input_column(name, columns)  # problems name the table's column
            emb, present, more = extractor(col, df[col].tolist(), base_dir, decoded=again)
            frozen[name] = (emb, present)
            seen = {(q.row, q.column) for q in problems}  # a video decoded for its sound too: one problem
            problems += [p for p in more if (p.row, p.column) not in seen]
        return decoded, frozen, problems

    def features(self, df: Table, media: dict[str, list], frozen: Frozen) -> Features:
        if self.raw:
            return self.preprocessor.graph_inputs(df, media, frozen)
        return self.preprocessor.transform(df, media, frozen)


def take_rows(df: pd.DataFrame, media: dict[str, list], frozen: Frozen, idx: np.ndarray):
    """The same rows of a table, its decoded media and its frozen embeddings."""
    return (
        df.iloc[idx].reset_index(drop=True),
        {k: [v[i] for i in idx] for k, v in media.items()},
        {k: (e[idx], p[idx]) for k, (e, p) in frozen.items()},
    )


def relink_encoders(folder: Path, preprocessor: Preprocessor, specs: dict[str, dict]) -> dict[str, dict]:
    """Point a loaded model's pretrained inputs at files on this machine: a fine-tuned
    encoder at its copy in the folder, a frozen one at its registry package, local folder or hub cache, checked
    against the saved fingerprint."""
    from polymodal.encoders.pretrained import EncoderNotFound, resolve
    from polymodal.model.network import module_keys

    specs = {k: dict(v) for k, v in specs.items()}
    keys = module_keys(list(preprocessor.schema.inputs))
    for name, p in preprocessor.config.pretrained.items():
        saved = p["ref"]
        if p.get("in_graph"):  # a frozen encoder exported inside the ONNX graph: nothing to find
            continue
        if p["mode"] == "finetune":
            local = folder / "encoders" / keys[name]
            specs[name]["from_config"] = str(local if local.exists() else saved["path"])
            for tool in ("tokenizer", "extractor"):
                if tool in preprocessor.state[name] and local.exists():
                    preprocessor.state[name][tool] = str(local)
            continue
        try:
            ref = resolve(saved["name"])
        except EncoderNotFound as e:
            raise EncoderNotFound(
                f"this model's column {name!r} needs the frozen encoder {saved['name']!r}: {e}"
            ) from e
        if ref.fingerprint != saved["fingerprint"]:
            raise EncoderNotFound(
                f"column {name!r} was trained on encoder {saved['name']!r} (fingerprint {saved['fingerprint']}), but "
                f"the files at {ref.path} have fingerprint {ref.fingerprint}: install the exact encoder it was trained "
                "with"
            )
        p["ref"] = ref.to_dict()
        for tool in ("tokenizer", "extractor"):
            if tool in preprocessor.state[name]:
                preprocessor.state[name][tool] = ref.path
    return specs
