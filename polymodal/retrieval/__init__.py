"""Cross-modal retrieval: contrastive alignment of a table's columns (`MultimodalRetriever`), a FAISS index of a
gallery (`GalleryIndex`), search, retrieval metrics, and zero-shot classification with a pretrained CLIP/SigLIP.

Heavy imports (torch, faiss, transformers) happen on first use.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "MultimodalRetriever": "polymodal.retrieval.retriever",
    "is_aligned_folder": "polymodal.retrieval.retriever",
    "GalleryIndex": "polymodal.retrieval.index",
    "IndexMismatch": "polymodal.retrieval.index",
    "retrieval_metrics": "polymodal.retrieval.metrics",
    "zero_shot": "polymodal.retrieval.zeroshot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = list(_LAZY)
