"""Fusion strategies. A new one is one file with a `Fusion` subclass and one line in `FUSIONS`."""

from __future__ import annotations

from polymodal.fusion.attention import AttentionFusion
from polymodal.fusion.base import Fusion
from polymodal.fusion.early import EarlyFusion
from polymodal.fusion.late import LateFusion

FUSIONS: dict[str, type[Fusion]] = {
    "early": EarlyFusion,
    "late": LateFusion,
    "attention": AttentionFusion,
}


def build_fusion(name: str, dims: dict[str, int], n_outputs: int, **kwargs) -> Fusion:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return FUSIONS[name](dims, n_outputs, **kwargs)


__all__ = ["FUSIONS", "Fusion", "build_fusion", "EarlyFusion", "LateFusion", "AttentionFusion"]
