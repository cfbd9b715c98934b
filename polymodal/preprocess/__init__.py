"""Per-modality preprocessing, fitted on training data only and saved as JSON with the model.

`Preprocessor.fit` learns vocabularies and statistics; `transform` turns a table (plus its decoded media)
into `Features`: one array per fusion input and a presence mask. Everything here is numpy; the arrays
become the tensors of a batch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from polymodal.config import PreprocessConfig
from polymodal.data.schema import CATEGORICAL_INPUT, NUMERIC_INPUT, Modality, ProblemType, Schema, input_column
from polymodal.data.validate import is_missing
from polymodal.preprocess.audio import log_mel_mfcc
from polymodal.preprocess.features import Features, distinct_items
from polymodal.preprocess.video import frames_settings, video_frames, video_state

PAD, UNK = 0, 1
CLIP_SIGMAS = 100.0
CAT_MISSING, CAT_UNKNOWN = 0, 1
MEDIA_SAMPLE = 2000  # image/audio statistics: the first this many present files of each column
_TOKEN = re.compile(r"\w+|[^\w\s]")
# What `transform` reads: a table, or its columns as arrays of one length (the server builds no pandas frame per
# request: on a lone request, pandas' construction and indexing cost more than the model).
Table: TypeAlias = pd.DataFrame | Mapping[str, np.ndarray]


def n_rows(table: Table) -> int:
    return len(table) if isinstance(table, pd.DataFrame) else len(next(iter(table.values()), ()))


def _floats(values: Any) -> np.ndarray:
    """A column as float64, a value that is not a number read as NaN (pandas' `to_numeric(errors="coerce")`)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return np.asarray(pd.to_numeric(np.asarray(values, dtype=object), errors="coerce"), dtype=np.float64)


def category_key(value: Any) -> str:
    """The vocabulary key of a categorical value: 3, 3.0 and "3" are the same category."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, np.generic):
        return category_key(value.item())
    return str(value)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _row_bytes(cfg: PreprocessConfig) -> dict[Modality, int]:
    return {
        Modality.TEXT: 8 * cfg.max_text_tokens + 200,
        Modality.IMAGE: 5 * 3 * cfg.image_size**2,  # uint8 pixels, then float32
        Modality.AUDIO: int(4 * cfg.sample_rate * cfg.max_audio_seconds / 2),  # a waveform of typical length
        Modality.NUMERIC: 24,
        Modality.CATEGORICAL: 60,
        # uint8 frames, and a sound track like an audio column's
        Modality.VIDEO: cfg.video_frames * 3 * cfg.image_size**2 + int(4 * cfg.sample_rate * cfg.max_audio_seconds / 2),
    }


def estimate_row_bytes(schema: Schema, cfg: PreprocessConfig) -> int:
    """About how much memory one row takes once decoded and preprocessed (what streaming saves)."""
    per = _row_bytes(cfg)
    return 100 + sum(per[m] for m in schema.columns.values())


def max_row_bytes(n_columns: int, cfg: PreprocessConfig) -> int:
    """`estimate_row_bytes` of a row whose every column is of the costliest kind: an upper bound that needs no
    schema (a table below it in total never streams)."""
    return 100 + n_columns * max(_row_bytes(cfg).values())


class Preprocessor:
    """Fits on the training table; transforms any table with the same schema."""

    def __init__(self, schema: Schema, config: PreprocessConfig | None = None):
        self.schema = schema
        self.config = config or PreprocessConfig()
        self.state: dict[str, Any] = {}
        self._token_index: dict[str, dict[str, int]] = {}  # built once per text column, not saved
        self._tools: dict[int, Any] = {}  # pretrained tokenizers / feature extractors, loaded once
        # Text inputs an exported ONNX graph tokenizes itself (set by its loader): `raw` gives their strings.
        self.text_in_graph: frozenset[str] = frozenset()

    # ---- fitting -------------------------------------------------------------------------------
    def fit_pretrained(self, df: pd.DataFrame, base_dir: Path) -> Preprocessor:
        """Settings of the pretrained inputs (their tokenizer, pixel statistics, sample rate, lengths).

        Called before media is decoded, since it decides the image size and sample rate to decode at.
        """
        from polymodal.preprocess.pretrained import PretrainedInputs, file_seconds, settings, speech_length

        for name, p in self.config.pretrained.items():
            modality = self.schema.inputs[name]
            if name in self.config.fixed:  # a readout's input: prepared as its text model's fit prepared it
                self.state[name] = dict(self.config.fixed[name])
                continue
            if modality is Modality.VIDEO:  # a video's frames: decoded by the encoder's settings, checked here
                self.state[name] = frames_settings(p, self.config)
                continue
            st = settings(modality, p["ref"]["kind"], p["ref"]["path"])
            values = [v for v in df[input_column(name, self.schema.columns)] if not is_missing(v)][:5000]
            if modality is Modality.TEXT:
                lengths = PretrainedInputs(modality, st).token_lengths([str(v) for v in values])
                st["max_len"] = int(np.clip(np.percentile(lengths, 95) if lengths else 8, 8, st["model_max"]))
            elif modality is Modality.AUDIO:
                if p.get("track"):  # a video's sound track, decoded from the file within the video limits
                    st |= {"track": True, "max_seconds": self.config.video_max_seconds,
                           "max_pixels": self.config.video_max_pixels}  # fmt: skip
                seconds = file_seconds(values[:300], base_dir, bool(p.get("track")))
                typical = np.percentile(seconds, self.audio_percentile) if seconds else self.config.max_audio_seconds
                st["n_samples"] = int(st["sample_rate"] * float(np.clip(typical, 0.1, self.config.max_audio_seconds)))
                if "min_samples" in st:  # speech-embedding: whole windows, at least speech_seconds long
                    shortest = int(self.config.speech_seconds * st["sample_rate"])
                    st["n_samples"] = speech_length(max(st["n_samples"], shortest), st["min_samples"],
                                                    st["step_samples"])  # fmt: skip
                    st["pad"] = self.config.speech_pad
            elif self.config.image_fit != "squash":  # only then: feature caches made before the option still match
                st["fit"] = self.config.image_fit
            self.state[name] = st
        return self

    @property
    def audio_percentile(self) -> float:
        """The percentile of training durations that clips are cut or padded to (preprocess.audio_percentile)."""
        if self.config.audio_percentile is not None:
            return float(np.clip(self.config.audio_percentile, 1, 100))
        return 100.0 if self.schema.problem_type is ProblemType.TEXT else 95.0

    def fit(self, df: pd.DataFrame, media: dict[str, list[np.ndarray | None]]) -> Preprocessor:
        """Fit everything but the pretrained inputs (see fit_pretrained) on the training rows."""
        fitting = self.start_fit()
        fitting.update(df, media)
        return fitting.finish()

    def start_fit(self) -> Fitting:
        """Fit in one pass over chunks of the training rows: `update(rows, media)` per chunk, then `finish()`."""
        return Fitting(self)

    # ---- transforming --------------------------------------------------------------------------
    def transform(
        self,
        df: Table,
        media: dict[str, list[np.ndarray | None]],
        frozen: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        raw: bool = False,
    ) -> Features:
        """Arrays for every input. `frozen` holds the (embeddings, present) of frozen pretrained inputs.
        `raw`: the inputs of the exported ONNX graph instead, which holds the rest of the preprocessing (see
        `graph_inputs`). A media input whose rows share decoded files is preprocessed once per distinct file and
        kept as distinct items with a row index (`Features.index`; not in `raw`, the graph takes rows)."""
        names = list(self.schema.inputs)
        present = np.zeros((n_rows(df), len(names)), dtype=bool)
        inputs: dict[str, np.ndarray] = {}
        index: dict[str, np.ndarray] = {}
        for j, (name, modality) in enumerate(self.schema.inputs.items()):
            shared = None if raw or name not in media else distinct_items(media[name])
            if shared is not None and self.config.pretrained.get(name, {}).get("mode") != "frozen":
                inputs[name], item_present = self._input(name, modality, df, {name: shared[0]}, frozen, raw)
                present[:, j], index[name] = item_present[shared[1]], shared[1]
            else:
                inputs[name], present[:, j] = self._input(name, modality, df, media, frozen, raw)
        return Features(inputs, present, names, index)

    def _input(self, name: str, modality: Modality, df: Table, media: dict[str, list], frozen: Any,
               raw: bool) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(array, present) of one input: per row, or per item of `media[name]` for a media input."""
        p = self.config.pretrained.get(name, {})
        mode = p.get("mode")
        if mode == "frozen" and not (raw and p.get("in_graph")):
            self.state[name]["dim"] = int(frozen[name][0].shape[-1])
            return frozen[name]
        if mode is not None and modality is not Modality.VIDEO:  # fine-tuned, or frozen inside a graph
            values = media[name] if modality in (Modality.IMAGE, Modality.AUDIO) else list(df[name])
            return self._pretrained(modality, values, self.state[name])
        if modality is Modality.TEXT and raw and name in self.text_in_graph:
            missing = np.array([is_missing(v) for v in df[name]], dtype=bool)
            texts = np.array(["" if m else str(v) for v, m in zip(df[name], missing, strict=True)], object)
            return texts, ~missing  # the graph also hides a row with no token
        if modality is Modality.TEXT:
            return self._text(name, df[name], self.state[name])
        if modality is Modality.VIDEO:  # uint8 frames, in the graph too: the encoder normalizes them
            return video_frames(media[name], self.config)
        if modality is Modality.IMAGE:
            return (self._raw_image if raw else self._image)(media[name], self.state[name])
        if modality is Modality.AUDIO:
            return (self._raw_audio if raw else self._audio)(media[name], self.state[name])
        if modality is Modality.NUMERIC:
            return (self._raw_numeric if raw else self._numeric)(df, self.state[name])
        return self._categorical(df, self.state[name])

    def graph_inputs(
        self,
        df: Table,
        media: dict[str, list[np.ndarray | None]],
        frozen: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Features:
        """The inputs of the exported ONNX graph (polymodal/optimize/export.py): decoded uint8 pixels, waveforms
        padded to the fitted length, raw numbers (NaN where missing) as float64; token ids and category ids as
        in `transform` (the lookups stay in Python); the same presence mask."""
        return self.transform(df, media, frozen, raw=True)

    def _raw_image(self, imgs: list[np.ndarray | None], st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        s = self.config.image_size
        out = np.zeros((len(imgs), 3, s, s), dtype=np.uint8)
        present = np.array([m is not None for m in imgs], dtype=bool)
        for i, m in enumerate(imgs):
            if m is not None:
                out[i] = m
        return out, present

    def _raw_audio(self, waves: list[np.ndarray | None], st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        present = np.array([w is not None for w in waves], dtype=bool)
        blank = np.zeros(0, np.float32)
        return self._pad_waves([w if w is not None else blank for w in waves], st["n_samples"]), present

    def _raw_numeric(self, df: Table, st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x = self._numeric_frame(df, st["columns"])
        missing = ~np.isfinite(x)
        return np.where(missing, np.nan, x), ~missing.all(axis=1)

    def _pretrained(self, modality: Modality, values: list, st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs of a fine-tuned pretrained encoder; an absent row gets a blank input that the mask hides."""
        from polymodal.preprocess.pretrained import PretrainedInputs

        if modality is Modality.TEXT:
            present = np.array([not is_missing(v) for v in values], dtype=bool)
            blank: Any = ""
        else:  # decoded media: None where the cell was empty
            present = np.array([v is not None for v in values], dtype=bool)
            size = st.get("size", 1)
            blank = np.zeros((3, size, size), np.uint8) if modality is Modality.IMAGE else np.zeros(1, np.float32)
        key = id(st)
        if key not in self._tools:
            self._tools[key] = PretrainedInputs(modality, st)
        filled = [v if ok else blank for v, ok in zip(values, present, strict=True)]
        return self._tools[key](filled), present

    def audio_warps(self, train: Any) -> dict[str, Any]:
        """The training-time augmentation of each scratch audio input from the train section (pretrained audio
        encoders are left alone): a `SpectralWarp` (train.audio_warp), or with speed perturbation or SpecAugment masks
        an `AudioAugment` doing all of them. A number instead of the section: that warp strength alone."""
        from polymodal.preprocess.augment import AudioAugment, SpectralWarp

        cfg = self.config
        keys = ("speed", "freq_masks", "freq_width", "time_masks", "time_width")
        extra = {} if isinstance(train, int | float) else {k: getattr(train, f"audio_{k}") for k in keys}
        strength = train if isinstance(train, int | float) else train.audio_warp
        out = {}
        for name, m in self.schema.inputs.items():
            # a readout's input (cfg.fixed) is not augmented: its text model is frozen and learns nothing from it,
            # and the fusion would see readouts that no test row gives (polymodal/model/readout.py)
            if m is not Modality.AUDIO or name in cfg.pretrained or name in cfg.fixed:
                continue
            args = (self.state[name]["mean"], self.state[name]["std"], cfg.n_mels, cfg.n_mfcc, cfg.sample_rate)
            augment = AudioAugment(*args, strength, **extra)
            if augment.speed > 0 or augment.freq_masks > 0 or augment.time_masks > 0:
                out[name] = augment
            elif strength > 0:
                out[name] = SpectralWarp(*args, strength)
        return out

    def video_augmenters(self, train: Any = None) -> dict[str, Any]:
        """A training-time `ClipAugment` for each video's frames: temporal jitter, image augmentation per clip, with
        the train section's image_rotate and image_scale (not for a frozen encoder's, nor a readout's: see
        `audio_warps`)."""
        from polymodal.preprocess.video import ClipAugment

        affine = {"rotate": getattr(train, "image_rotate", 0.0), "scale": getattr(train, "image_scale", 0.0)}
        return {n: ClipAugment(self.config.video_jitter, **affine) for n, m in self.schema.inputs.items()
                if m is Modality.VIDEO and self.config.pretrained.get(n, {}).get("mode") != "frozen"
                and n not in self.config.fixed}  # fmt: skip

    def input_specs(self) -> dict[str, dict[str, Any]]:
        """What each encoder needs to know about its input (sizes, vocabularies)."""
        cfg, specs = self.config, {}
        for name, modality in self.schema.inputs.items():
            st = self.state[name]
            p = cfg.pretrained.get(name)
            if p and modality is Modality.VIDEO:  # cached vectors per time step, or the encoder inside
                pixel = {k: st[k] for k in ("size", "mean", "std")}
                specs[name] = ({"frames": st["steps"], "in_dim": st["dim"]} if p["mode"] == "frozen" else
                               {"frames": st["steps"], "pretrained": p["ref"], "pixel": pixel,
                                "finetune_layers": p.get("layers"), "lora": bool(p.get("lora"))})  # fmt: skip
            elif p and p["mode"] == "frozen":
                # cached token outputs: a sequence per row (an image's may form a grid of regions)
                tokens = {"sequence": True, "image": modality is Modality.IMAGE} if p.get("tokens") else {}
                specs[name] = {"in_dim": st["dim"], **tokens}
            elif p:
                specs[name] = {"pretrained": p["ref"], "pad_id": st.get("pad_id", 0), "layers": p.get("layers"),
                               "lora": bool(p.get("lora"))}  # fmt: skip
            elif modality is Modality.TEXT:
                specs[name] = {"vocab_size": len(st["vocab"]) + 2, "max_len": st["max_len"]}
            elif modality is Modality.IMAGE:
                specs[name] = {"channels": 3, "size": cfg.image_size}
            elif modality is Modality.VIDEO:
                specs[name] = {"channels": 3, "size": cfg.image_size, "frames": cfg.video_frames, **st}
            elif modality is Modality.AUDIO:
                specs[name] = {"n_features": cfg.n_mels + cfg.n_mfcc}
            elif modality is Modality.NUMERIC:
                specs[name] = {"n_features": 2 * len(st["columns"])}
            else:
                specs[name] = {"cardinalities": [len(v) + 2 for v in st["vocabs"]]}
        return specs

    def _text(self, name: str, values: Sequence[Any], st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._token_index:
            self._token_index[name] = {t: i + 2 for i, t in enumerate(st["vocab"])}
        index = self._token_index[name]
        out = np.full((len(values), st["max_len"]), PAD, dtype=np.int64)
        present = np.zeros(len(values), dtype=bool)
        for i, v in enumerate(values):
            if is_missing(v):
                continue
            ids = [index.get(t, UNK) for t in tokenize(str(v))][: st["max_len"]]
            if ids:
                out[i, : len(ids)] = ids
                present[i] = True
        return out, present

    def _image(self, imgs: list[np.ndarray | None], st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        s = self.config.image_size
        out = np.zeros((len(imgs), 3, s, s), dtype=np.float32)
        mean = np.asarray(st["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(st["std"], dtype=np.float32)[:, None, None]
        present = np.array([m is not None for m in imgs], dtype=bool)
        for i, m in enumerate(imgs):
            if m is not None:
                out[i] = (m.astype(np.float32) / 255.0 - mean) / std
        return out, present

    @staticmethod
    def _pad_waves(waves: list[np.ndarray], n_samples: int) -> np.ndarray:
        out = np.zeros((len(waves), n_samples), dtype=np.float32)
        for i, w in enumerate(waves):
            out[i, : min(len(w), n_samples)] = w[:n_samples]
        return out

    def _audio(self, waves: list[np.ndarray | None], st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        present = np.array([w is not None for w in waves], dtype=bool)
        idx = np.flatnonzero(present)
        n_frames = 1 + st["n_samples"] // (self.config.sample_rate // 100)
        out = np.zeros((len(waves), self.config.n_mels + self.config.n_mfcc, n_frames), dtype=np.float32)
        mean = np.asarray(st["mean"], dtype=np.float32)[:, None]
        std = np.asarray(st["std"], dtype=np.float32)[:, None]
        for start in range(0, len(idx), 256):
            chunk = idx[start : start + 256]
            feats = log_mel_mfcc(self._pad_waves([waves[i] for i in chunk], st["n_samples"]), self.config)
            out[chunk] = (feats - mean) / std
        return out, present

    @staticmethod
    def _numeric_frame(df: Table, cols: list[str]) -> np.ndarray:
        # A value that is not a number is treated like an empty cell: imputed, with its missing flag set.
        return np.stack([_floats(df[c]) for c in cols], axis=1)

    def _numeric(self, df: Table, st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x = self._numeric_frame(df, st["columns"])
        missing = ~np.isfinite(x)
        z = (x - np.asarray(st["mean"])) / np.asarray(st["std"])
        z[missing] = 0.0
        z = np.clip(z, -CLIP_SIGMAS, CLIP_SIGMAS)  # an absurd value (1e308) must not overflow float32
        out = np.concatenate([z, missing.astype(np.float64)], axis=1).astype(np.float32)
        return out, ~missing.all(axis=1)

    def _categorical(self, df: Table, st: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((n_rows(df), len(st["columns"])), dtype=np.int64)
        for j, (col, vocab) in enumerate(zip(st["columns"], st["vocabs"], strict=True)):
            index = {v: i + 2 for i, v in enumerate(vocab)}
            out[:, j] = [CAT_MISSING if is_missing(v) else index.get(category_key(v), CAT_UNKNOWN) for v in df[col]]
        return out, (out != CAT_MISSING).any(axis=1)

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "state": self.state}

    @classmethod
    def from_dict(cls, schema: Schema, d: dict[str, Any]) -> Preprocessor:
        p = cls(schema, PreprocessConfig(**d["config"]))
        p.state = d["state"]
        return p


class Fitting:
    """The statistics of `Preprocessor.fit`, gathered chunk by chunk, so a table larger than memory is fitted in
    one streaming pass. Vocabularies, text lengths, numeric moments and categories see every row; image and audio
    statistics are taken on the first MEDIA_SAMPLE present files of each column (in memory too, so both paths
    fit the same numbers)."""

    def __init__(self, preprocessor: Preprocessor):
        self.p = preprocessor
        schema, cfg = preprocessor.schema, preprocessor.config
        own = [c for c in schema.columns if c not in cfg.pretrained]
        self.text = {c: (Counter(), []) for c in schema.columns_of(Modality.TEXT) if c in own}
        self.media = {c: [] for c in own if schema.columns[c] in (Modality.IMAGE, Modality.AUDIO)}
        self.media |= {n: [] for c in schema.columns_of(Modality.VIDEO) for n in schema.inputs
                       if n.startswith(c + ":") and n not in cfg.pretrained}  # fmt: skip
        self.num_cols = schema.columns_of(Modality.NUMERIC)
        # Per numeric column: count, mean, M2 (Chan et al.'s parallel update, stable over many chunks)
        self.moments = np.zeros((3, len(self.num_cols)))
        self.cat_cols = schema.columns_of(Modality.CATEGORICAL)
        self.categories = [Counter() for _ in self.cat_cols]

    def needs_media(self) -> bool:
        """Whether the next chunk's decoded media is still wanted."""
        return any(len(v) < MEDIA_SAMPLE for v in self.media.values())

    def update(self, df: pd.DataFrame, media: dict[str, list[np.ndarray | None]]) -> None:
        for col, (counts, lengths) in self.text.items():
            tokens = [tokenize(str(v)) for v in df[col] if not is_missing(v)]
            for t in tokens:
                counts.update(t)
            lengths.append(np.array([len(t) for t in tokens], dtype=np.int32))
        for col, sample in self.media.items():
            if col in media and len(sample) < MEDIA_SAMPLE:
                sample.extend(m for m in media[col][: 2 * MEDIA_SAMPLE] if m is not None)
                del sample[MEDIA_SAMPLE:]
        if self.num_cols:
            x = Preprocessor._numeric_frame(df, self.num_cols)
            ok = np.isfinite(x)
            n = ok.sum(axis=0).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(n > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
                m2 = np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0)
            n0, mean0, m20 = self.moments
            total = n0 + n
            delta = mean - mean0
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where(total > 0, n / np.maximum(total, 1), 0.0)
            self.moments = np.stack([total, mean0 + delta * w, m20 + m2 + delta**2 * n0 * w])
        for counts, col in zip(self.categories, self.cat_cols, strict=True):
            counts.update(category_key(v) for v in df[col] if not is_missing(v))

    def finish(self) -> Preprocessor:
        p, cfg = self.p, self.p.config
        st = {k: v for k, v in p.state.items() if k in cfg.pretrained}
        for col, (counts, lengths) in self.text.items():
            vocab = [t for t, n in counts.most_common(cfg.max_vocab) if n >= cfg.min_token_count]
            lens = np.concatenate(lengths) if lengths else np.zeros(0)
            max_len = int(np.clip(np.percentile(lens, 95) if len(lens) else 1, 1, cfg.max_text_tokens))
            st[col] = {"vocab": vocab, "max_len": max_len}
        for col, sample in self.media.items():
            if col not in p.schema.columns and (p.schema.inputs[col] is Modality.VIDEO or not sample):
                st[col] = video_state(p.schema.inputs[col], sample, cfg)  # frames; a sound track no clip has
                continue
            if not sample:
                raise ValueError(f"no {col!r} file could be read in the training rows")
            if p.schema.inputs[col] is Modality.IMAGE:
                stack = np.stack(sample).astype(np.float32) / 255.0
                st[col] = {
                    "mean": stack.mean(axis=(0, 2, 3)).tolist(),
                    "std": np.maximum(stack.std(axis=(0, 2, 3)), 1e-3).tolist(),
                }
            else:
                seconds = np.percentile([len(w) for w in sample], p.audio_percentile) / cfg.sample_rate
                n_samples = int(cfg.sample_rate * float(np.clip(seconds, 0.1, cfg.max_audio_seconds)))
                feats = log_mel_mfcc(p._pad_waves(sample, n_samples), cfg)
                st[col] = {
                    "n_samples": n_samples,
                    "mean": feats.mean(axis=(0, 2)).tolist(),
                    "std": np.maximum(feats.std(axis=(0, 2)), 1e-3).tolist(),
                }
        if self.num_cols:
            n, mean, m2 = self.moments
            with np.errstate(invalid="ignore", divide="ignore"):
                std = np.where(n > 0, np.sqrt(m2 / np.maximum(n, 1)), 1.0)
            st[NUMERIC_INPUT] = {
                "columns": self.num_cols,
                "mean": np.where(n > 0, mean, 0.0).tolist(),
                "std": np.nan_to_num(std, nan=1.0).clip(1e-6).tolist(),
            }
        if self.cat_cols:
            st[CATEGORICAL_INPUT] = {
                "columns": self.cat_cols,
                "vocabs": [[v for v, _ in c.most_common(cfg.max_categories)] for c in self.categories],
            }
        st |= {k: dict(v) for k, v in cfg.fixed.items() if k in p.schema.inputs}  # a readout's, as its folder has it
        p.state = st
        p._token_index = {}
        return p
