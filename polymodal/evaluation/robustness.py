"""Robustness to missing and noisy modalities, and how much each modality contributes.

For a fitted model and a labelled test set:
- **missing**: the task metric when one input is hidden from the model (the presence mask says absent);
  `clean - missing` is the drop-one-modality ablation.
- **noise**: the metric under noise of increasing severity applied to one input at a time, at `levels` levels.
  Noise is applied to the *raw* decoded data, before preprocessing, so it is the corruption a user's data would
  have (the preprocessing, fitted on clean training data, is not re-fitted):
    image: Gaussian blur (sigma 1.5 px * s per 32 px of image side) then Gaussian pixel noise (std 0.3 * s
      on the 0..1 scale); audio: additive white noise at an SNR of 20 - 25 * s dB (15, 10, 5, 0, -5 dB for 5
      levels); text: word dropout (p = 0.4 * s, at least one word kept) then a typo (swap, deletion or
      substitution of a letter) in each remaining word with p = 0.4 * s; numeric: Gaussian noise with std
      s * the column's training std; categorical: each value replaced by a random training category with p = 0.5 * s;
  where s = level / levels, from 1 / levels up to 1.
- **relative robustness** (as in MultiBench): the area under the metric-vs-severity curve (trapezoid over
  s = 0, 1/levels, ..., 1, clean at s = 0) divided by the clean metric; 1 means no loss. For a metric where lower
  is better (RMSE) it is clean / area, so that too is at most about 1 and lower means less robust.
- **permutation importance**: the metric drop when one input is shuffled across rows (its presence with it),
  averaged over `permutations` shuffles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from polymodal.data.schema import CATEGORICAL_INPUT, NUMERIC_INPUT, Modality, Schema, input_column
from polymodal.data.validate import is_missing
from polymodal.errors import UserError
from polymodal.evaluation.subset import input_columns, select_features, sub_preprocessor, sub_schema
from polymodal.preprocess import Features, Preprocessor
from polymodal.tasks import Task

NOISE = {
    Modality.IMAGE: "Gaussian blur (sigma 1.5 s px per 32 px) + Gaussian pixel noise (std 0.3 s)",
    Modality.AUDIO: "additive white noise at SNR 20 - 25 s dB",
    Modality.TEXT: "word dropout (p 0.4 s) + typos (p 0.4 s per word)",
    Modality.NUMERIC: "Gaussian noise (std s x training std)",
    Modality.CATEGORICAL: "random category swap (p 0.5 s)",
    Modality.VIDEO: "the image noise on every frame (a video's sound track: the audio noise)",
}


class Scorable(Protocol):
    """What robustness needs of a model: `InferenceEngine` and `EnsembleModel` both qualify."""

    schema: Schema
    task: Task
    preprocessor: Preprocessor

    def outputs(self, features: Features, batch_size: int = 256, present: np.ndarray | None = None) -> np.ndarray: ...


def metric_of(task: Task) -> tuple[str, bool]:
    """The task metric robustness and the leaderboard rank by, and whether higher is better."""
    if task.is_multilabel:
        return ("f1_micro", True)
    if task.is_text:  # the generation metric it monitors (WER, CIDEr...: decoder.metric)
        name, mode = task.monitor
        return (name, mode == "max")
    return ("accuracy", True) if task.is_classification else ("rmse", False)


# ---- noise on raw data ------------------------------------------------------------------------------
def noise_images(images: list[np.ndarray | None], s: float, rng: np.random.Generator) -> list[np.ndarray | None]:
    from scipy.ndimage import gaussian_filter

    out: list[np.ndarray | None] = []
    for im in images:
        if im is None:
            out.append(None)
            continue
        sigma = 1.5 * s * im.shape[-1] / 32  # the same blur relative to the picture at any resolution
        x = gaussian_filter(im.astype(np.float32) / 255.0, sigma=(0, sigma, sigma))
        x = x + rng.normal(0.0, 0.3 * s, size=x.shape)
        out.append((np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    return out


def noise_audio(waves: list[np.ndarray | None], s: float, rng: np.random.Generator) -> list[np.ndarray | None]:
    snr_db = 20.0 - 25.0 * s
    out: list[np.ndarray | None] = []
    for w in waves:
        if w is None:
            out.append(None)
            continue
        power = float(np.mean(w.astype(np.float64) ** 2)) or 1e-10
        noise = rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), size=w.shape)
        out.append((w + noise).astype(np.float32))
    return out


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 2:
        return _LETTERS[rng.integers(26)]
    i = int(rng.integers(len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + _LETTERS[rng.integers(26)] + word[i + 1 :]


def noise_text(values: pd.Series, s: float, rng: np.random.Generator) -> pd.Series:
    def one(v: object) -> object:
        if is_missing(v):
            return v
        words = str(v).split()
        keep = rng.random(len(words)) >= 0.4 * s
        if not keep.any():
            keep[rng.integers(len(words))] = True  # noise degrades the text; removing it is the 'missing' test
        words = [w for w, k in zip(words, keep, strict=True) if k]
        return " ".join(_typo(w, rng) if rng.random() < 0.4 * s else w for w in words)

    return values.map(one)


def noise_numeric(df: pd.DataFrame, columns: list[str], std: list[float], s: float, rng: np.random.Generator):
    df = df.copy()
    for c, sd in zip(columns, std, strict=True):
        x = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        df[c] = x + rng.normal(0.0, s * sd, size=x.shape)  # NaN stays NaN: a missing value is not noised
    return df


def noise_categorical(df: pd.DataFrame, columns: list[str], vocabs: list[list[str]], s: float, rng):
    df = df.copy()
    for c, vocab in zip(columns, vocabs, strict=True):
        # A copy: under pandas 3 (copy-on-write) `to_numpy()` may return a read-only view of the column.
        values = df[c].astype(object).to_numpy(copy=True)
        swap = (rng.random(len(values)) < 0.5 * s) & ~np.array([is_missing(v) for v in values], dtype=bool)
        if vocab:
            values[swap] = [vocab[i] for i in rng.integers(len(vocab), size=int(swap.sum()))]
        df[c] = values
    return df


def check_noise_rows(noise_rows: int | None) -> None:
    if noise_rows is not None and noise_rows < 1:
        raise UserError(f"noise_rows must be at least 1 (or None for every test row), not {noise_rows}")


def noise_sample(n: int, noise_rows: int | None) -> np.ndarray | None:
    """The test rows the noise curves are measured on: all, or a fixed random sample of `noise_rows`."""
    check_noise_rows(noise_rows)
    if noise_rows is None or noise_rows >= n:
        return None
    return np.sort(np.random.default_rng(0).choice(n, size=noise_rows, replace=False))


class NoisyInputs:
    """Noisy versions of one input's preprocessed array, built lazily and cached by (input, level).

    Built from one preprocessor; any model whose inputs were preprocessed with the same state (the entries of
    one seed of a compare, which share the training rows) can use the same cache, so noise is made once.
    `rows`: measure on these test rows only (a fixed sample; None = all). Frozen pretrained inputs need the
    `pipeline` that embedded them (and `base_dir` for relative paths): their files are decoded as the encoder
    reads them, noised, and embedded again through the feature cache. Their embeddings depend only on the noise,
    not on the preprocessing, so `frozen_memo` may be shared by NoisyInputs of the same rows, levels and seed
    (a compare's seeds: its noise is the same for every seed, so entries meet identical corruptions).
    """

    def __init__(
        self,
        preprocessor: Preprocessor,
        df: pd.DataFrame,
        media: dict[str, list],
        levels: int = 5,
        seed: int = 0,
        *,
        rows: np.ndarray | None = None,
        pipeline: Any = None,
        base_dir: Path | None = None,
        frozen_memo: dict | None = None,
    ):
        if rows is not None:
            df = df.iloc[rows].reset_index(drop=True)
            media = {k: [v[i] for i in rows] for k, v in media.items()}
        self.preprocessor, self.df, self.media, self.levels, self.seed = preprocessor, df, media, levels, seed
        self.rows, self.pipeline, self.base_dir = rows, pipeline, base_dir or Path.cwd()
        self._cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._frozen = frozen_memo if frozen_memo is not None else {}

    def _is_frozen(self, name: str) -> bool:
        pretrained = getattr(self.preprocessor.config, "pretrained", {}) or {}
        return pretrained.get(name, {}).get("mode") == "frozen"

    def supports(self, name: str) -> bool:
        """A frozen pretrained input can be noised only with the pipeline that embeds its files."""
        return not self._is_frozen(name) or self.pipeline is not None

    def get(self, name: str, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(array, present) of input `name` with noise at `level` (1..levels), for the rows in `rows`."""
        key = (name, level)
        if key not in self._cache:
            self._cache[key] = self._make(name, level)
        return self._cache[key]

    def _noise(self, name: str, level: int, df: pd.DataFrame, media: dict[str, list]):
        """`df` and `media` with input `name`'s raw data noised at `level`."""
        schema = self.preprocessor.schema
        modality = schema.inputs[name]
        s = level / self.levels
        rng = np.random.default_rng([self.seed, level, list(schema.inputs).index(name)])
        state = self.preprocessor.state[name]
        media = dict(media)
        if modality is Modality.IMAGE:
            media[name] = noise_images(media[name], s, rng)
        elif modality is Modality.AUDIO:
            media[name] = noise_audio(media[name], s, rng)
        elif modality is Modality.VIDEO:
            media[name] = [None if c is None else np.stack(noise_images(list(c), s, rng)) for c in media[name]]
        elif modality is Modality.TEXT:
            df = df.assign(**{name: noise_text(df[name], s, rng)})
        elif name == NUMERIC_INPUT:
            df = noise_numeric(df, state["columns"], state["std"], s, rng)
        elif name == CATEGORICAL_INPUT:
            df = noise_categorical(df, state["columns"], state["vocabs"], s, rng)
        return df, media

    def _frozen_embeddings(self, name: str, level: int) -> tuple[np.ndarray, np.ndarray]:
        key = (name, level)
        if key not in self._frozen:
            extractor = self.pipeline.extractor(name)
            if self.preprocessor.schema.inputs[name] is Modality.TEXT:
                df, _ = self._noise(name, level, self.df, {})
                items = df[name].tolist()
            else:  # decode as the encoder reads its files, then the same noise as for a trained encoder
                column = input_column(name, self.preprocessor.schema.columns)  # a video's frames: its column's
                decoded = extractor.decode(self.df[column].tolist(), self.base_dir)
                items = self._noise(name, level, self.df, {name: decoded})[1][name]
            self._frozen[key] = extractor.embed_decoded(name, items)
        return self._frozen[key]

    def _make(self, name: str, level: int) -> tuple[np.ndarray, np.ndarray]:
        one = sub_schema(self.preprocessor.schema, [name])
        cols = input_columns(self.preprocessor.schema, name)
        frozen = None
        if self._is_frozen(name):
            df, media, frozen = self.df, self.media, {name: self._frozen_embeddings(name, level)}
        else:
            df, media = self._noise(name, level, self.df, self.media)
        table = list(dict.fromkeys(input_column(c, self.preprocessor.schema.columns) for c in cols))  # a video's
        f = sub_preprocessor(self.preprocessor, one).transform(
            df[table], {k: v for k, v in media.items() if k in cols}, frozen
        )
        return f.inputs[name], f.present[:, 0]


# ---- measuring ---------------------------------------------------------------------------------------
def relative_robustness(scores: list[float], higher_is_better: bool) -> float:
    """Area under the metric-vs-severity curve over [0, 1] (scores[0] is clean), normalized by the clean score."""
    y = np.asarray(scores, dtype=float)
    area = float(np.sum((y[1:] + y[:-1]) / 2) / (len(y) - 1))
    clean = float(y[0])
    if higher_is_better:
        return area / clean if clean > 0 else float("nan")
    return clean / area if area > 0 else float("nan")


def evaluate_robustness(
    model: Scorable,
    features: Features,
    targets: np.ndarray,
    noisy: NoisyInputs | None = None,
    permutations: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Clean, missing-one-input, noisy-input and permuted-input scores of `model` on labelled `features`.

    `features` may hold more inputs than the model uses (a compare's shared arrays); `targets` are encoded
    (`task.encode_targets`). Returns a JSON-able dict.
    """
    names = list(model.schema.inputs)
    feats = select_features(features, names)
    task = model.task
    metric, higher = metric_of(task)

    def score(f: Features, present: np.ndarray | None = None) -> float:
        return task.score(targets, model.outputs(f, present=present))

    clean = score(feats)
    out: dict[str, Any] = {"metric": metric, "higher_is_better": higher, "clean": clean, "inputs": names}
    out["missing"] = {}
    for j, n in enumerate(names):
        mask = np.ones_like(feats.present)
        mask[:, j] = False
        out["missing"][n] = score(feats, mask)
    rng = np.random.default_rng(seed)
    out["permutation"] = {}
    for j, n in enumerate(names):
        drops = []
        for _ in range(permutations):
            perm = rng.permutation(len(feats))
            inputs = dict(feats.inputs, **{n: feats.inputs[n][perm]})
            present = feats.present.copy()
            present[:, j] = feats.present[perm, j]
            s = score(Features(inputs, present, names))
            drops.append(clean - s if higher else s - clean)
        out["permutation"][n] = float(np.mean(drops)) if drops else float("nan")
    out["ablation"] = {n: (clean - m if higher else m - clean) for n, m in out["missing"].items()}
    if noisy is not None:
        out["levels"] = noisy.levels
        out["noise"] = {}
        # The noise curves are measured on the NoisyInputs' rows (all, or a fixed sample), clean point included.
        sub = feats if noisy.rows is None else feats.take(noisy.rows)
        sub_targets = targets if noisy.rows is None else targets[noisy.rows]
        out["noise_rows"] = len(sub)
        clean_sub = clean if noisy.rows is None else task.score(sub_targets, model.outputs(sub))
        for j, n in enumerate(names):
            if not noisy.supports(n):
                out["noise"][n] = {"modality": model.schema.inputs[n].value, "scores": None,
                                   "noise": "not measured: a frozen pretrained input needs its pipeline to re-embed",
                                   "relative_robustness": None}  # fmt: skip
                continue
            scores = [clean_sub]
            for level in range(1, noisy.levels + 1):
                arr, pres = noisy.get(n, level)
                present = sub.present.copy()
                present[:, j] = pres
                noisy_f = Features(dict(sub.inputs, **{n: arr}), present, names)
                scores.append(task.score(sub_targets, model.outputs(noisy_f)))
            out["noise"][n] = {
                "modality": model.schema.inputs[n].value,
                "noise": NOISE[model.schema.inputs[n]],
                "scores": scores,
                "relative_robustness": relative_robustness(scores, higher),
            }
    return out
