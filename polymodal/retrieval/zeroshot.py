"""Zero-shot image classification with an aligned pretrained pair (CLIP, SigLIP, ...): each class name is put in
a template ("a photo of a {}"), embedded by the text tower, and each image's probabilities are the softmax of its
scaled cosine similarities to those texts. No training."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from polymodal.data.io import read_table, resolve_path
from polymodal.data.media import MediaError, decode_image
from polymodal.data.validate import BadRowsError, Problem, is_missing
from polymodal.errors import UserError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def parse_classes(classes: str | list[str]) -> list[str]:
    names = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
    names = [c for c in names if c]
    if len(names) < 2:
        raise UserError(f"give at least two class names (comma-separated), got {names}")
    if len(set(names)) != len(names):
        raise UserError(f"class names repeat: {names}")
    return names


class ZeroShotClassifier:
    def __init__(self, model: str | os.PathLike[str] = DEFAULT_MODEL, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from polymodal.encoders.pretrained import resolve

        ref = resolve(str(model))  # a local folder, or a hub id found in the cache (clear error when offline)
        self.name, self.path = str(model), ref.path
        self.model = AutoModel.from_pretrained(ref.path).to(device).eval()
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise UserError(f"{model} is not an aligned image-text model (CLIP, SigLIP, ...): it has no text tower")
        self.tokenizer = AutoTokenizer.from_pretrained(ref.path)
        self.processor = AutoImageProcessor.from_pretrained(ref.path)
        self.device, self.torch = device, torch
        size = getattr(self.processor, "crop_size", None) or getattr(self.processor, "size", None) or {}
        self.size = int(size.get("height") or size.get("shortest_edge") or 224) if isinstance(size, dict) else 224
        self.siglip = "siglip" in type(self.model).__name__.lower()

    def _features(self, out: Any) -> Any:
        # Newer transformers return a model output object rather than the pooled tensor.
        return out if isinstance(out, self.torch.Tensor) else getattr(out, "pooler_output", out[0])

    def text_embeddings(self, classes: list[str], template: str) -> np.ndarray:
        if "{}" not in template:
            raise UserError(f"the template must contain {{}} where the class name goes, got {template!r}")
        texts = [template.format(c) for c in classes]
        padding = "max_length" if self.siglip else True  # SigLIP was trained on max-length padded text
        tok = self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        with self.torch.inference_mode():
            emb = self._features(self.model.get_text_features(**tok))
        return self.torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    def image_embeddings(self, images: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        chunks = []
        for s in range(0, len(images), batch_size):
            batch = [im.transpose(1, 2, 0) for im in images[s : s + batch_size]]  # CHW uint8 -> HWC
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with self.torch.inference_mode():
                emb = self._features(self.model.get_image_features(pixel_values=pixels))
            chunks.append(self.torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)

    def scale(self) -> float:
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.detach().exp()) if ls is not None else 100.0

    def probabilities(self, images: list[np.ndarray], classes: list[str], template: str) -> np.ndarray:
        logits = self.scale() * self.image_embeddings(images) @ self.text_embeddings(classes, template).T
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def zero_shot(
    table: Any,
    image: str,
    classes: str | list[str],
    template: str = "a photo of a {}",
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    device: str = "cpu",
) -> pd.DataFrame:
    """The table with `prediction` and `proba_<class>` columns added (rows with an empty image get none)."""
    names = parse_classes(classes)
    if "{}" not in template:
        raise UserError(f"the template must contain {{}} where the class name goes, got {template!r}")
    df, base_dir = read_table(table)
    if image not in df.columns:
        raise UserError(f"column {image!r} is missing from the table (it has {list(df.columns)})")
    clf = ZeroShotClassifier(model, device)
    rows, images, problems = [], [], []
    for i, v in enumerate(df[image].tolist()):
        if is_missing(v):
            continue
        try:
            images.append(decode_image(v if isinstance(v, bytes) else resolve_path(str(v), base_dir), clf.size))
            rows.append(i)
        except MediaError as e:
            problems.append(Problem(i, image, str(e)))
    if problems:
        raise BadRowsError(problems, "the table" if isinstance(table, pd.DataFrame) else str(table))
    proba = clf.probabilities(images, names, template) if images else np.zeros((0, len(names)))
    out = df.copy()
    out["prediction"] = None
    out.loc[rows, "prediction"] = [names[j] for j in proba.argmax(axis=1)]
    for j, c in enumerate(names):
        out[f"proba_{c}"] = np.nan
        out.loc[rows, f"proba_{c}"] = proba[:, j]
    return out
