"""Decoders of the `text` problem type, behind one contract. Each reads the fused inputs as a token sequence, the
memory `(batch, n, dim)` with its mask (False: padding or an absent input, never attended to).

Autoregressive (`TransformerDecoder`, `GRUDecoder`):
- `forward(memory, mask, tgt_in) -> logits (batch, t, vocab)`: teacher forcing on `tgt_in` (<bos> + target);
- `init_cache(memory, mask) -> cache`: what the decoder carries between steps, one row per hypothesis;
- `step(prefix, memory, mask, cache) -> (logits (batch, vocab), cache)`: the next token's logits given the tokens
  so far. The ONNX decoder-step graph is exactly this function.
- optionally `step_memory(memory) -> memory`: the memory as `step` reads it, computed once per decoding (the
  transformer's cross-attention keys and values); without it `step` reads the memory itself.
`CTCHead` is not autoregressive: `frames(memory, mask, start, end) -> logits (batch, end - start, vocab)` over
the memory positions of one input (its time steps), blank = id 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def sinusoid(n: int | torch.Tensor, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, dim) sinusoidal position encodings (computed, so any length and traceable)."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = pos * freq[None, :]
    out = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
    return out[:, :dim]


class Attention(nn.Module):
    """Multi-head attention written out (reshapes with -1, masks from comparisons), so the traced ONNX graph keeps
    every length dynamic (torch's MultiheadAttention bakes the traced length into the decoder step)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            from polymodal.errors import UserError

            raise UserError(f"decoder.dim ({dim}) must be a multiple of decoder.heads ({heads})")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.kv, self.o = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, source: torch.Tensor, allowed: torch.Tensor, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`allowed` (batch or 1, t or 1, n): True where a query may attend to a key. `kv`: `self.kv(source)`
        computed beforehand (the decoder's cache of the memory's keys and values), else computed here."""
        b, h, d = x.shape[0], self.heads, self.head_dim
        q = self.q(x).reshape(b, -1, h, d).transpose(1, 2)
        k, v = (self.kv(source) if kv is None else kv).reshape(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        weights = self.drop(torch.softmax(scores, dim=-1))
        return self.o(torch.matmul(weights, v).transpose(1, 2).reshape(b, -1, h * d))


class DecoderLayer(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the memory, feed-forward; each residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn, self.cross_attn = Attention(dim, heads, dropout), Attention(dim, heads, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor, mask: torch.Tensor,
                memory_kv: torch.Tensor | None = None):  # fmt: skip
        y = self.norms[0](x)
        x = x + self.drop(self.self_attn(y, y, causal))
        x = x + self.drop(self.cross_attn(self.norms[1](x), memory, mask[:, None, :], memory_kv))
        return x + self.drop(self.ff(self.norms[2](x)))

    def step(self, x: torch.Tensor, past: torch.Tensor, mask: torch.Tensor, memory_kv: torch.Tensor):
        """One new token `x` (batch, 1, dim) given `past` (batch, t, 2 * dim), the keys and values of the tokens
        before it: (its output, `past` with its own keys and values appended)."""
        y = self.norms[0](x)
        past = torch.cat([past, self.self_attn.kv(y)], dim=1)
        everything = torch.ones_like(past[:1, None, :, 0], dtype=torch.bool)  # (1, 1, t + 1): all are before it
        x = x + self.self_attn(y, y, everything, past)
        x = x + self.cross_attn(self.norms[1](x), memory_kv, mask[:, None, :], memory_kv)
        return x + self.ff(self.norms[2](x)), past


class TransformerDecoder(nn.Module):
    """Pre-norm transformer decoder: causal self-attention over the tokens so far, cross-attention to the memory."""

    autoregressive = True

    def __init__(self, vocab: int, dim: int = 128, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, memory: torch.Tensor, mask: torch.Tensor, tgt_in: torch.Tensor,
                memory_kv: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """`memory_kv` (batch, n, layers, 2 * dim): each layer's keys and values of the memory, computed
        beforehand (`step_memory`); else computed here."""
        t = tgt_in.shape[1]
        x = self.embed(tgt_in) * math.sqrt(self.dim) + sinusoid(t, self.dim, tgt_in.device)
        pos = torch.arange(t, device=tgt_in.device)
        causal = (pos[None, :] <= pos[:, None])[None]  # (1, t, t): a token sees itself and those before it
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, causal, mask, None if memory_kv is None else memory_kv[:, :, i])
        return self.out(self.norm(x))

    def init_cache(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, 0, layers * 2 * dim): the self-attention keys and values of the tokens so far, none yet."""
        return memory.new_zeros(memory.shape[0], 0, len(self.layers) * 2 * self.dim)

    def step_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """(batch, n, layers * 2 * dim): each layer's keys and values of the memory, projected once per decoding
        instead of at every step (35-50 % of a step at beam 4, batch 32: benchmarks/text_decoding.py). Not in the
        cache: the cache is reordered as hypotheses are kept, and these are the same for every hypothesis of a row."""
        return torch.cat([layer.cross_attn.kv(memory) for layer in self.layers], dim=-1)

    def step(self, prefix: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, cache: torch.Tensor):
        """`memory`: `step_memory`'s; `cache`: the keys and values of every token of `prefix` but the last, one
        slice per layer. Only the last token goes through the layers: each step costs the same at any length,
        instead of re-reading the whole prefix (the same logits as `forward`'s last position: tested)."""
        t = prefix.shape[1]
        x = self.embed(prefix[:, -1:]) * math.sqrt(self.dim) + sinusoid(t, self.dim, prefix.device)[-1:]
        kv = memory.reshape(memory.shape[0], memory.shape[1], len(self.layers), -1)
        past = cache.reshape(cache.shape[0], cache.shape[1], len(self.layers), 2 * self.dim)
        new = []
        for i, layer in enumerate(self.layers):
            x, kept = layer.step(x, past[:, :, i], mask, kv[:, :, i])
            new.append(kept)
        return self.out(self.norm(x))[:, -1], torch.cat(new, dim=-1)


class GRUDecoder(nn.Module):
    """A GRU over [previous token; attended memory], with dot-product attention to the memory before and after it
    (Luong-style); its first state comes from the mean of the memory."""

    autoregressive = True

    def __init__(self, vocab: int, dim: int = 128, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.dim, self.n_layers = dim, layers
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.start = nn.Linear(dim, layers * dim)
        self.gru = nn.GRU(2 * dim, dim, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.query = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.Linear(2 * dim, dim), nn.Tanh(), nn.Linear(dim, vocab))

    def _attend(self, h: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bnd,bd->bn", memory, self.query(h)) / math.sqrt(self.dim)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return torch.einsum("bn,bnd->bd", weights, memory)

    def init_cache(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(memory.dtype)
        mean = (memory * m).sum(1) / m.sum(1).clamp(min=1)
        return torch.tanh(self.start(mean)).view(-1, self.n_layers, self.dim)  # (batch, layers, dim)

    def _one(self, token: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor):
        context = self._attend(hidden[:, -1], memory, mask)
        x = torch.cat([self.drop(self.embed(token)), context], dim=-1)[:, None]
        out, h = self.gru(x, hidden.transpose(0, 1).contiguous())
        out = out[:, 0]
        logits = self.out(torch.cat([self.drop(out), self._attend(out, memory, mask)], dim=-1))
        return logits, h.transpose(0, 1)

    def forward(self, memory: torch.Tensor, mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        hidden = self.init_cache(memory, mask)
        steps = []
        for t in range(tgt_in.shape[1]):
            logits, hidden = self._one(tgt_in[:, t], memory, mask, hidden)
            steps.append(logits)
        return torch.stack(steps, dim=1)

    def step(self, prefix: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, cache: torch.Tensor):
        return self._one(prefix[:, -1], memory, mask, cache)


class CTCHead(nn.Module):
    """A transformer encoder over the whole memory (so the other inputs inform each time step), then per-token
    logits at the positions of the input whose tokens are the time steps. Id 0 is the CTC blank."""

    autoregressive = False

    def __init__(self, vocab: int, dim: int = 128, layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, vocab)

    def frames(self, memory: torch.Tensor, mask: torch.Tensor, start: int, end: int) -> torch.Tensor:
        h = self.encoder(memory, src_key_padding_mask=~mask)
        return self.out(h[:, start:end])


def build_decoder(
    name: str, vocab: int, dim: int, layers: int, heads: int, dropout: float, **pretrained: Any
) -> nn.Module:
    """`pretrained`: for `hf`, `HFDecoder`'s arguments (vocabulary, max_length, train, lora_rank)."""
    if name == "hf":  # a pretrained Hugging Face decoder (polymodal/tasks/hf_decoder.py)
        from polymodal.tasks.hf_decoder import HFDecoder

        return HFDecoder(dim=dim, **pretrained)
    if name == "transformer":
        return TransformerDecoder(vocab, dim, layers, heads, dropout)
    if name == "gru":
        return GRUDecoder(vocab, dim, layers, dropout)
    if name == "ctc":
        return CTCHead(vocab, dim, layers, heads, dropout)
    from polymodal.errors import UserError

    raise UserError(f"unknown decoder {name!r} (decoder.name); choose transformer, gru, ctc or hf")
