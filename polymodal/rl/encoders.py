"""Light encoders for RL's small observations, the `rl` section's defaults (the library's ImageCNN / TextRNN stay
available: `encoder_kwargs={key: {"arch": "cnn"}}` / `{"arch": "rnn"}`).

An agent runs its network once per environment step and trains it on small batches every few steps, on CPU: a
deep CNN over a 7 x 7 grid and a bidirectional GRU over a five-word mission cost most of a step there, more than
the environment. These encoders read the same inputs for a fraction of that:
  GridEncoder      a small grid (MiniGrid/BabyAI's view, a board): each cell's codes embedded (or its channels as
                   they are), optional 3 x 3 convolutions, then one linear layer over the flattened grid (where
                   things are stays in the weights: the grid is small enough to be read whole)
  MissionEncoder   a short instruction from a small vocabulary: each word's embedding plus its position's, a ReLU,
                   one linear layer over the words side by side and their max
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders import ImageCNN, build_encoder
from polymodal.encoders.tokens import Tokens, grid_coords, single_token
from polymodal.errors import UserError


class ObservationError(UserError):
    """An observation (key or space) that the extractor cannot encode; raised before any training."""


# Images at most this many cells a side get the GridEncoder by default; larger ones the library's ImageCNN.
GRID_MAX = 16


class GridEncoder(nn.Module):
    """(b, channels, h, w) -> (b, dim). `codes` > 0: each channel holds integer codes in [0, codes) (object,
    colour, state), a cell is the sum of its (channel, code) embeddings (as ImageCNN's `codes`; with gradients
    computed as a multi-hot row times the table, since an embedding's backward scatters lookups one by one;
    without, as the lookups summed). `widths`: 3 x 3 convolutions (ReLU, no norm) before the flattening; none by
    default. `grid`: average-pool a map larger than
    `grid` x `grid` cells down to it (None: never). `hw`: the map's (height, width) when it is not `size` square."""

    def __init__(
        self,
        channels: int,
        size: int,
        dim: int = 64,
        hw: tuple[int, int] | None = None,
        widths: tuple[int, ...] = (),
        grid: int | None = None,
        codes: int = 0,
        embed: int = 16,
        tokens: bool = False,
    ):
        super().__init__()
        self.codes, self.size, self.dim = codes, size, dim
        c = channels
        if codes:
            self.cell_embed = nn.Embedding(channels * codes, embed)
            self.register_buffer("code_offset", torch.arange(channels) * codes, persistent=False)
            c = embed
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True)]
            c = w
        self.convs = nn.Sequential(*layers) if layers else None
        self.linear = not layers  # only linear layers: cheaper than any deduplication of its inputs
        self.grid = grid if grid and grid < size else None
        self.pool = nn.AdaptiveAvgPool2d(self.grid) if self.grid else None
        self.cells = (self.grid, self.grid) if self.grid else tuple(hw or (size, size))
        self.proj = nn.Linear(c * self.cells[0] * self.cells[1], dim)
        if tokens:  # one token per cell of the map
            self.token_proj = nn.Sequential(nn.Linear(c, dim), nn.ReLU(inplace=True))

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        """(b, c, h, w) cells (channels last in memory when there are no convolutions: the flattening reads them
        so, and a linear layer does not care about the order as long as it is fixed)."""
        if self.codes:
            ids = (x.round().long() if x.is_floating_point() else x.long()).clamp(0, self.codes - 1)
            ids = ids + self.code_offset[None, :, None, None]
            table = self.cell_embed.weight
            if torch.is_grad_enabled() and table.requires_grad:
                b, _, h, w = x.shape
                hot = torch.zeros(b, h, w, self.cell_embed.num_embeddings, device=x.device)
                hot.scatter_(3, ids.permute(0, 2, 3, 1), 1.0)
                cells = hot @ table  # (b, h, w, embed)
            else:  # no backward to pay for: the lookups, summed (half the multi-hot's time at batch 1)
                cells = nn.functional.embedding(ids, table).sum(1)
            if self.convs is None and self.pool is None:
                return cells
            x = cells.permute(0, 3, 1, 2)
        if self.convs is not None:
            x = self.convs(x)
        if self.pool is not None:
            x = self.pool(x)
        return x.permute(0, 2, 3, 1)  # (b, h, w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self._map(x)
        if tuple(cells.shape[1:3]) != self.cells:
            raise ValueError(f"GridEncoder was built for a {self.cells} map, got {tuple(cells.shape[1:3])}")
        return torch.relu(self.proj(cells.reshape(cells.shape[0], -1)))

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        cells = self._map(x)
        b, h, w, _ = cells.shape
        pooled = torch.relu(self.proj(cells.reshape(b, -1)))
        mask = torch.ones(b, h * w, dtype=torch.bool, device=x.device)
        return Tokens(self.token_proj(cells.reshape(b, h * w, -1)), mask, pooled, grid_coords(h, w, x.device), (h, w))


class MissionEncoder(nn.Module):
    """(b, max_len) token ids (0 = padding) -> (b, dim): ReLU(word embedding + position embedding) per word, then
    one linear layer (and a ReLU) over those words laid side by side and their max. Side by side, a word keeps its
    whole embedding and its place: averaged over a five-word mission, the one word that differs ("red" / "blue")
    would be a fifth of it, and an agent whose encoders learn slowly then hardly tells missions apart; the max
    gives the same words at other places ("get a red key", "you must fetch a red key") features in common."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, embed_dim: int = 32, tokens: bool = False, **_):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_len, embed_dim) * 0.1)
        self.proj = nn.Linear((max_len + 1) * embed_dim, dim)
        self.dim = dim
        if tokens:
            self.token_proj = nn.Sequential(nn.Linear(embed_dim, dim), nn.ReLU(inplace=True))

    def _words(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (ids != 0).unsqueeze(-1)
        h = torch.relu(self.embed(ids) + self.position) * mask  # padding: 0, after the ReLU too
        return h, mask

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        # h >= 0 and padding is 0: the max over every position is the max over the words (0 when there are none).
        return torch.relu(self.proj(torch.cat([h.flatten(1), h.amax(1)], dim=-1)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._pool(self._words(ids)[0])

    def forward_tokens(self, ids: torch.Tensor) -> Tokens:
        h, mask = self._words(ids)
        return Tokens(self.token_proj(h), mask.squeeze(-1), self._pool(h))


# RL nets are trained for many small steps on CPU: by default the scratch encoders are narrower than for tables.
RL_ENCODER_DEFAULTS: dict[Modality, dict[str, Any]] = {
    Modality.IMAGE: {"widths": (16, 32, 64)},
    Modality.TEXT: {"embed_dim": 32, "hidden": 64},
    Modality.AUDIO: {"widths": (8, 16, 32), "hidden": 64},
    Modality.NUMERIC: {"hidden": 64, "dropout": 0.0},
    Modality.CATEGORICAL: {"hidden": 64, "dropout": 0.0},
}


# What replaces the scratch CNNs' BatchNorm: "batch" keeps it; "group" one group per channel map's layer norm
# (GroupNorm(1, c), the same in training and acting); "none" drops it. BatchNorm acts on running statistics but
# learns on the batch's, a gap that bootstrapped Q targets can amplify.
CNN_NORMS = ("batch", "group", "none")


class _CodesCNN(ImageCNN):
    """ImageCNN over symbolic cells, the same weights computed faster for RL's many small batches: a cell's summed
    code embeddings as a multi-hot row times the embedding table (an embedding's backward scatters every lookup one
    by one), and no pooling when the grid is the map's own size."""

    def _cells(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.round().long().clamp(0, self.codes - 1) + self.code_offset[None, :, None, None]
        hot = torch.zeros(x.shape[0], x.shape[2], x.shape[3], self.cell_embed.num_embeddings, device=x.device)
        hot.scatter_(3, ids.permute(0, 2, 3, 1), 1.0)
        return (hot @ self.cell_embed.weight).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(self._cells(x))
        if tuple(fmap.shape[-2:]) != (self.pool.output_size,) * 2:
            fmap = self.pool(fmap)
        return self.proj(fmap)


def _renorm(encoder: nn.Module, how: str) -> nn.Module:
    if type(encoder) is ImageCNN and encoder.codes and isinstance(encoder.pool.output_size, int):
        encoder.__class__ = _CodesCNN  # same module tree and state dict, faster forward and backward
    if how == "batch":
        return encoder
    for name, child in list(encoder.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(encoder, name, nn.GroupNorm(1, child.num_features) if how == "group" else nn.Identity())
        else:
            _renorm(child, how)
    return encoder


class CategoryEncoder(nn.Module):
    """(b, columns) category ids -> (b, dim): each column's id embedded at `dim` straight away, the columns summed,
    a ReLU (a one-hot through one linear layer: what a handful of categories, like a heading, needs)."""

    def __init__(self, cardinalities: list[int], dim: int = 64, tokens: bool = False, **_):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(c, dim) for c in cardinalities)
        self.dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.embeds[0](ids[:, 0])
        for j in range(1, len(self.embeds)):
            out = out + self.embeds[j](ids[:, j])
        return torch.relu(out)

    def from_one_hot(self, hot: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One column given as a one-hot row (SB3's Discrete observation) whose position p is category index[p]:
        the same as forward on the ids, in fewer operations."""
        return torch.relu(hot @ self.embeds[0].weight[index])

    def forward_tokens(self, ids: torch.Tensor) -> Tokens:
        return single_token(self(ids))


# `encoder_kwargs[key]["arch"]`: which encoder an image / text / categorical key gets. None: the light one (for an
# image, a grid of at most GRID_MAX cells a side), "cnn" / "rnn" / "mlp": the library's ImageCNN / TextRNN /
# CategoricalMLP (the defaults before issue 28, and what policy folders saved before then hold).
ARCHS = {Modality.IMAGE: ("grid", "cnn"), Modality.TEXT: ("bag", "rnn"), Modality.CATEGORICAL: ("embed", "mlp")}
LEGACY_ARCHS = {Modality.IMAGE: "cnn", Modality.TEXT: "rnn", Modality.CATEGORICAL: "mlp"}


def build_rl_encoder(
    modality: Modality,
    spec: dict[str, Any],
    kwargs: dict[str, Any],
    dim: int,
    tokens: bool,
    cnn_norm: str,
    hw: tuple[int, int] | None = None,
    grid_widths: tuple[int, ...] = (),
) -> nn.Module:
    """One key's scratch encoder: `spec` from its space (polymodal.rl.extractor.plan_input), `kwargs` the user's
    (`encoder_kwargs[key]`, with an optional "arch"), `cnn_norm` for the library's CNNs, `grid_widths` the
    GridEncoder's convolutions unless `kwargs` names them."""
    kwargs = dict(kwargs)
    arch = kwargs.pop("arch", None)
    allowed = ARCHS.get(modality, ())
    if arch is not None and arch not in allowed:
        raise ObservationError(
            f"encoder arch {arch!r} does not fit a {modality.value} key: choose one of {list(allowed) or 'none'}"
        )
    if modality is Modality.IMAGE and (arch == "grid" or (arch is None and spec["size"] <= GRID_MAX)):
        kwargs.setdefault("widths", grid_widths)
        kwargs["widths"] = tuple(kwargs["widths"])
        return GridEncoder(**spec, **kwargs, hw=hw, dim=dim, tokens=tokens)
    if modality is Modality.TEXT and arch != "rnn":
        return MissionEncoder(**spec, **kwargs, dim=dim, tokens=tokens)
    if modality is Modality.CATEGORICAL and arch != "mlp":
        return CategoryEncoder(**spec, **kwargs, dim=dim, tokens=tokens)
    built = build_encoder(modality, {**spec, **RL_ENCODER_DEFAULTS[modality], **kwargs}, dim, tokens=tokens)
    return _renorm(built, cnn_norm)
