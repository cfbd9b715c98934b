"""Preprocessing for pretrained encoders: their own tokenizer, pixel normalization and audio feature extractor.

Settings are read once from the encoder's folder (AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor; no
torchvision) and stored as plain JSON, so a saved model re-creates its inputs exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polymodal.data.schema import Modality

# EfficientNet-Lite was trained (in TensorFlow) on pixels scaled to [-1, 1].
LITE0_SETTINGS = {"size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
# Google's speech_embedding (polymodal/encoders/speech.py): 16 kHz; one window is 12,512 samples (0.782 s), each
# further embedding 1,280 samples (80 ms) more.
SPEECH_SETTINGS = {"sample_rate": 16000, "min_samples": 12512, "step_samples": 1280}
PADS = ("center", "repeat", "after")  # measured on FSDD: benchmarks/speech_padding.py


def fit_length(wave: np.ndarray, n: int, pad: str = "after") -> np.ndarray:
    """A clip cut to its first `n` samples or, shorter, padded to `n`: with zeros on both sides (`center`), the clip
    again and again (`repeat`), or zeros after it (`after`)."""
    w = np.asarray(wave, dtype=np.float32)[:n]
    if pad == "repeat" and 0 < len(w) < n:
        w = np.tile(w, -(-n // len(w)))[:n]
    out = np.zeros(n, dtype=np.float32)
    start = (n - len(w)) // 2 if pad == "center" else 0
    out[start : start + len(w)] = w
    return out


def speech_length(n_samples: int, min_samples: int = 12512, step: int = 1280) -> int:
    """The clip length the speech encoder reads: at least one window, rounded up to a whole number of windows."""
    return min_samples + step * -(-max(n_samples - min_samples, 0) // step)


def _side(size: Any) -> int | None:
    """A processor's size is an int, a dict or (transformers 5) a SizeDict: the square side we resize to."""
    if size is None or isinstance(size, int):
        return size
    for key in ("height", "shortest_edge"):
        v = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if v:
            return int(v)
    return None


def _image_settings(path: str) -> dict[str, Any]:
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    size = _side(getattr(proc, "crop_size", None)) or _side(getattr(proc, "size", None)) or 224
    mean = getattr(proc, "image_mean", None) or [0.5, 0.5, 0.5]
    std = getattr(proc, "image_std", None) or [0.5, 0.5, 0.5]
    return {"size": int(size), "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def settings(modality: Modality, kind: str, path: str) -> dict[str, Any]:
    """What preprocessing this encoder expects, as JSON-able settings."""
    if modality is Modality.IMAGE:
        return dict(LITE0_SETTINGS) if kind == "efficientnet-lite0" else _image_settings(path)
    if modality is Modality.TEXT:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return {
            "tokenizer": path,
            "pad_id": int(tok.pad_token_id or 0),
            "model_max": int(min(tok.model_max_length, 512)),
        }
    if modality is Modality.AUDIO and kind == "speech-embedding":
        return dict(SPEECH_SETTINGS)
    if modality is Modality.AUDIO:
        from transformers import AutoFeatureExtractor

        fe = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        return {"extractor": path, "sample_rate": int(getattr(fe, "sampling_rate", 16000))}
    raise ValueError(f"no pretrained preprocessing for {modality.value}")


class PretrainedInputs:
    """Turns raw values (texts, decoded images, waveforms) into an encoder's input arrays."""

    def __init__(self, modality: Modality, st: dict[str, Any]):
        self.modality, self.st = modality, st
        self._tool = None

    def _load_tool(self):
        if self._tool is None:
            if self.modality is Modality.TEXT:
                from transformers import AutoTokenizer

                self._tool = AutoTokenizer.from_pretrained(self.st["tokenizer"], local_files_only=True)
            elif self.modality is Modality.AUDIO:
                from transformers import AutoFeatureExtractor

                self._tool = AutoFeatureExtractor.from_pretrained(self.st["extractor"], local_files_only=True)
        return self._tool

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [
            len(ids) for ids in self._load_tool()(texts, truncation=True, max_length=self.st["model_max"])["input_ids"]
        ]

    def __call__(self, values: list[Any], pad_to_longest: bool = False) -> np.ndarray:
        """Model inputs for a batch. Text pads to the fitted length so arrays stack across a dataset, or, with
        `pad_to_longest` (one-off extraction), only to the batch's longest text: far less wasted compute."""
        if self.modality is Modality.TEXT:
            enc = self._load_tool()(
                [str(v) for v in values],
                padding="longest" if pad_to_longest else "max_length",
                truncation=True,
                max_length=self.st["max_len"],
            )
            return np.asarray(enc["input_ids"], dtype=np.int64)
        if self.modality is Modality.IMAGE:
            mean = np.asarray(self.st["mean"], dtype=np.float32)[:, None, None]
            std = np.asarray(self.st["std"], dtype=np.float32)[:, None, None]
            return np.stack([(v.astype(np.float32) / 255.0 - mean) / std for v in values]).astype(np.float32)
        n = self.st["n_samples"]
        if "extractor" not in self.st:  # the speech encoder reads the waveform itself
            return np.stack([fit_length(w, n, self.st.get("pad", "after")) for w in values])
        waves = np.zeros((len(values), n), dtype=np.float32)
        for i, w in enumerate(values):
            waves[i, : min(len(w), n)] = w[:n]
        out = self._load_tool()(list(waves), sampling_rate=self.st["sample_rate"], return_tensors="np")
        key = "input_values" if "input_values" in out else "input_features"
        return np.asarray(out[key], dtype=np.float32)


def file_seconds(values: list, base_dir: Path, video: bool = False) -> list[float]:
    """The durations of the sound files (`video`: of the videos) named by `values`, read from their headers;
    files that do not open are skipped (validation reports them)."""
    import soundfile as sf

    from polymodal.data.io import resolve_path
    from polymodal.data.video import video_seconds

    seconds = []
    for v in values:
        try:
            path = resolve_path(str(v), base_dir)
            duration = video_seconds(path) if video else sf.info(str(path)).duration
        except Exception:  # noqa: BLE001 - broken files are reported by validation, not here
            continue
        if duration is not None:
            seconds.append(float(duration))
    return seconds
