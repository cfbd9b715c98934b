"""Encoders trained from scratch. Each maps one preprocessed input to a fixed-size embedding `(batch, dim)`.

Built with `tokens=True`, each also gives `forward_tokens(x) -> Tokens` (see encoders/tokens.py): the CNN's
feature-map grid as region tokens with their (x, y), the GRU's per-word outputs with the padding mask, audio
frames, or one token for numbers and categories. The token projection exists only then, so pooled models keep
exactly their weights.
"""

from __future__ import annotations

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens, grid_coords, single_token


def run_channels_last(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run conv blocks on channels-last maps: on CPU, oneDNN's convolution and max-pooling are several times
    faster in that layout (max-pooling of a 32-channel map about 10x) than on the default one. A 1-channel input
    (a spectrogram) is both layouts at once, so each block's output is converted. Same values, same weights."""
    for layer in layers:
        if x.dim() == 4 and x.shape[1] > 1:
            x = x.contiguous(memory_format=torch.channels_last)
        x = layer(x)
    return x.contiguous()


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # One conv per block keeps CPU training fast; depth comes from the number of blocks.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ImageCNN(nn.Module):
    """A small VGG-style CNN: conv blocks with max-pooling, then a coarse `grid` x `grid` average pool (keeping
    where things are, which matters for digits and layouts) and a projection.

    `codes` > 0: a symbolic image, whose channels hold integer codes in [0, codes) rather than intensities (a
    MiniGrid/BabyAI view: object, colour, state per cell). Each (channel, code) gets a learned embedding and a
    cell is the sum of its channels' embeddings (BabyAI 1.1's "bag of words" image input): reading codes as
    intensities would make a ball (6) a slightly brighter key (5). Its grid keeps full resolution (no pooling)."""

    def __init__(
        self,
        channels: int,
        size: int,
        dim: int = 128,
        widths: tuple[int, ...] = (32, 64, 128),
        grid: int = 2,
        tokens: bool = False,
        codes: int = 0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        self.codes = codes
        if codes:
            self.cell_embed = nn.Embedding(channels * codes, widths[0])
            self.register_buffer("code_offset", torch.arange(channels) * codes, persistent=False)
            c = widths[0]
        for i, w in enumerate(widths):
            layers.append(_conv_block(c, w))
            # Stop pooling when the map is already tiny; a symbolic grid's cells are objects: never pooled away.
            if size >> (i + 1) >= 2 and not codes:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(c * grid * grid, dim), nn.ReLU(inplace=True))
        self.dim = dim
        if tokens:  # one region token per cell of the last feature map
            self.token_proj = nn.Sequential(nn.Linear(c, dim), nn.ReLU(inplace=True))

    def _cells(self, x: torch.Tensor) -> torch.Tensor:
        """(b, channels, h, w) codes -> (b, widths[0], h, w) summed embeddings; intensities pass unchanged."""
        if not self.codes:
            return x
        ids = x.round().long().clamp(0, self.codes - 1) + self.code_offset[None, :, None, None]
        return self.cell_embed(ids).sum(dim=1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(run_channels_last(self.features, self._cells(x))))

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        fmap = run_channels_last(self.features, self._cells(x))  # (b, c, h, w)
        b, _, h, w = fmap.shape
        tokens = self.token_proj(fmap.flatten(2).transpose(1, 2))
        mask = torch.ones(b, h * w, dtype=torch.bool, device=x.device)
        return Tokens(tokens, mask, self.proj(self.pool(fmap)), grid_coords(h, w, x.device), (h, w))


class TextRNN(nn.Module):
    """Word embeddings, a bidirectional GRU, masked mean + max pooling over the words, a projection."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        dim: int = 128,
        embed_dim: int = 128,
        hidden: int = 128,
        tokens: bool = False,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Linear(4 * hidden, dim), nn.ReLU(inplace=True))
        self.dim = dim
        if tokens:
            self.token_proj = nn.Sequential(nn.Linear(2 * hidden, dim), nn.ReLU(inplace=True))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(ids))
        return self._pool(h, ids != 0)

    def forward_tokens(self, ids: torch.Tensor) -> Tokens:
        # Packed, so the backward direction starts at each text's last word: padding never changes an output.
        mask = ids != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.rnn(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])
        return Tokens(self.token_proj(h), mask, self._pool(h, mask))

    def _pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1)
        denom = mask.sum(1).clamp(min=1)
        mean = (h * mask).sum(1) / denom
        maxed = h.masked_fill(~mask, float("-inf")).max(1).values
        maxed = torch.where(torch.isfinite(maxed), maxed, torch.zeros_like(maxed))  # rows with no words
        return self.proj(torch.cat([mean, maxed], dim=-1))


class AudioCNN(nn.Module):
    """Log-mel + MFCC frames -> 2-D conv blocks over (feature, time) -> GRU over time -> mean/max pooling."""

    def __init__(
        self,
        n_features: int,
        dim: int = 128,
        widths: tuple[int, ...] = (16, 32, 64),
        hidden: int = 128,
        tokens: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for w in widths:
            layers += [_conv_block(c, w), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        f_out = n_features >> len(widths)
        self.rnn = nn.GRU(c * f_out, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Sequential(nn.Linear(4 * hidden, dim), nn.ReLU(inplace=True))
        self.dim = dim
        if tokens:  # one token per (pooled) frame
            self.token_proj = nn.Sequential(nn.Linear(2 * hidden, dim), nn.ReLU(inplace=True))

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        h = run_channels_last(self.features, x.unsqueeze(1))  # (b, c, f, t)
        # Contiguous: the GRU's input projection is then one matrix product (on the transposed view, at batch 1,
        # a batched product over time steps that took ~200 us more per call on CPU).
        h = h.flatten(1, 2).transpose(1, 2).contiguous()  # (b, t, c*f)
        return self.rnn(h)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._frames(x)
        return self.proj(torch.cat([h.mean(1), h.max(1).values], dim=-1))

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        h = self._frames(x)
        pooled = self.proj(torch.cat([h.mean(1), h.max(1).values], dim=-1))
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=x.device)  # clips are fixed-length frames
        return Tokens(self.token_proj(h), mask, pooled)


class NumericMLP(nn.Module):
    """Standardized numbers with their missing flags -> MLP."""

    def __init__(self, n_features: int, dim: int = 128, hidden: int = 128, dropout: float = 0.1, tokens: bool = False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_tokens(self, x: torch.Tensor) -> Tokens:
        return single_token(self(x))


class CategoricalMLP(nn.Module):
    """One embedding per categorical column (id 0 = missing, 1 = unseen), concatenated -> MLP."""

    def __init__(
        self, cardinalities: list[int], dim: int = 128, hidden: int = 128, dropout: float = 0.1, tokens: bool = False
    ):
        super().__init__()
        sizes = [min(32, max(4, round(1.6 * c**0.56))) for c in cardinalities]
        self.embeds = nn.ModuleList(nn.Embedding(c, s) for c, s in zip(cardinalities, sizes, strict=True))
        self.net = NumericMLP(sum(sizes), dim, hidden, dropout)
        self.dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([e(ids[:, j]) for j, e in enumerate(self.embeds)], dim=-1))

    def forward_tokens(self, ids: torch.Tensor) -> Tokens:
        return single_token(self(ids))
