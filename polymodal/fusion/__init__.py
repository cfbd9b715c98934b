"""Fusion strategies. A new one is one file with a `Fusion` (pooled) or `TokenFusion` (token-level) subclass and
one line in `FUSIONS`; the pieces their constructors share (per-input projections, [CLS] + transformer encoder)
are in `blocks.py`."""

from __future__ import annotations

from polymodal.errors import UserError
from polymodal.fusion.attention import AttentionFusion
from polymodal.fusion.base import Fusion, TokenFusion
from polymodal.fusion.cross_attention import CrossAttentionFusion
from polymodal.fusion.early import EarlyFusion
from polymodal.fusion.film import FiLMFusion
from polymodal.fusion.gmu import GMUFusion
from polymodal.fusion.late import LateFusion
from polymodal.fusion.low_rank import LowRankFusion
from polymodal.fusion.relation import RelationFusion
from polymodal.fusion.tensor import TensorFusion
from polymodal.fusion.token_transformer import TokenTransformerFusion

FUSIONS: dict[str, type[Fusion]] = {
    "early": EarlyFusion,
    "late": LateFusion,
    "attention": AttentionFusion,
    "gmu": GMUFusion,
    "tensor": TensorFusion,
    "low_rank": LowRankFusion,
    "cross_attention": CrossAttentionFusion,
    # Token-level (`TokenFusion`): they read each input's tokens, not one pooled vector.
    "relation": RelationFusion,
    "film": FiLMFusion,
    "token_transformer": TokenTransformerFusion,
}
# Late ensembling of separately trained unimodal models is `fusion/ensemble.py` (ProbabilityEnsemble): it is
# built by `polymodal compare` from trained members, so it is not a choice for end-to-end `fit`.


def build_fusion(name: str, dims: dict[str, int], n_outputs: int, **kwargs) -> Fusion:
    if name not in FUSIONS:
        raise UserError(f"unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return FUSIONS[name](dims, n_outputs, **kwargs)


__all__ = [
    "FUSIONS",
    "Fusion",
    "TokenFusion",
    "build_fusion",
    "EarlyFusion",
    "LateFusion",
    "AttentionFusion",
    "GMUFusion",
    "TensorFusion",
    "LowRankFusion",
    "CrossAttentionFusion",
    "RelationFusion",
    "FiLMFusion",
    "TokenTransformerFusion",
]
