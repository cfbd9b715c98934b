"""The network of a text model: encoders -> the memory (the fused inputs as a token sequence) -> a decoder.

The memory is one fused token (the fusion's output, projected: every fusion works, pooled or token-level),
then each input's tokens (`decoder.memory: tokens`: words, image regions, audio frames, one token for numbers and
categories) or its pooled embedding as one token (`pooled`), each projected to the decoder's width with a
position encoding and a learned embedding of which input it is. An absent input's tokens are masked and zeroed:
never attended to, never read as data. The fused token is always real (the fusion handles absence itself).

`forward(inputs, present, target)`: with a target (training), the teacher-forced logits (CTC: per-frame logits);
without, the generated text as the text task's outputs (see polymodal/tasks/text.py), decoded by
`polymodal.tasks.beam` with the settings in `generation` (beam size, length penalty, no-repeat n-gram, n-best).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.data.schema import Modality
from polymodal.fusion import FUSIONS, build_fusion
from polymodal.model.network import build_encoders
from polymodal.tasks.beam import beam_search, ctc_greedy, pack
from polymodal.tasks.decoders import build_decoder, sinusoid
from polymodal.tasks.text import BOS, EOS, PAD, UNK, TextTask

GENERATION = ("beam_size", "length_penalty", "no_repeat_ngram", "n_best")


class TextNet(nn.Module):
    def __init__(
        self,
        inputs: dict[str, Modality],
        input_specs: dict[str, dict[str, Any]],
        task: TextTask,
        decoder: Any,
        fusion: str = "attention",
        embed_dim: int | dict[str, int] = 128,
        hidden: int = 128,
        dropout: float = 0.1,
        fusion_options: dict[str, Any] | None = None,
        encoders: dict[str, nn.Module] | None = None,
    ):
        """`decoder`: the config's decoder section; the rest as `MultimodalNet`."""
        super().__init__()
        self.input_names = list(inputs)
        self.modalities = dict(inputs)
        self.fusion_tokens = bool(getattr(FUSIONS.get(fusion), "consumes_tokens", False))
        self.memory_kind = decoder.memory
        self.tokens = self.fusion_tokens or self.memory_kind == "tokens"
        self.keys, self.encoders, dims = build_encoders(inputs, input_specs, embed_dim, self.tokens, encoders)
        d = decoder.dim
        self.fusion = build_fusion(fusion, dims, d, hidden=hidden, dropout=dropout, **(fusion_options or {}))
        self.fused_proj = nn.Linear(self.fusion.out_dim, d)
        self.proj = nn.ModuleDict({k: nn.Linear(dims[k], d) for k in dims})
        self.kind = nn.Embedding(len(self.input_names) + 1, d)  # which input a memory token comes from (0: fused)
        self.dropout = nn.Dropout(dropout)
        self.dim = d
        name = task.settings["name"]  # hf when decoder.pretrained is set (polymodal/tasks/hf_decoder.py)
        hf = {"vocabulary": task.vocabulary, "max_length": task.max_length, "train": decoder.train,
              "lora_rank": decoder.lora_rank} if name == "hf" else {}  # fmt: skip
        self.head = build_decoder(name, task.n_outputs, d, decoder.layers, decoder.heads, decoder.dropout, **hf)
        self.max_len = task.max_length
        self.generation = {k: getattr(decoder, k) for k in GENERATION}
        self.ctc_input = self._ctc_input(decoder.ctc_input, input_specs) if name == "ctc" else None

    def _ctc_input(self, wanted: str | None, specs: dict[str, dict[str, Any]]) -> str:
        from polymodal.errors import UserError

        if self.memory_kind != "tokens":
            raise UserError("decoder.name: ctc reads an input's tokens as time steps: set decoder.memory: tokens")
        if wanted is not None:
            if wanted not in self.input_names:
                raise UserError(f"decoder.ctc_input {wanted!r} is not an input; the inputs are {self.input_names}")
            return wanted
        audio = [n for n, m in self.modalities.items() if m is Modality.AUDIO]
        if audio:
            return audio[0]
        sequences = [n for n, m in self.modalities.items() if m in (Modality.TEXT, Modality.IMAGE)]
        if not sequences:
            raise UserError("decoder.name: ctc needs an audio, text or image input whose tokens are the time steps")
        return sequences[0]

    def memory(self, inputs: dict[str, torch.Tensor], present: torch.Tensor):
        """(memory (batch, n, dim), mask (batch, n), {input: (start, end) of its tokens})."""
        toks: dict[str, Any] = {}
        pooled: dict[str, torch.Tensor] = {}
        for n in self.input_names:
            enc = self.encoders[self.keys[n]]
            if self.tokens:
                toks[self.keys[n]] = enc.forward_tokens(inputs[n]).map(self.dropout)
                pooled[self.keys[n]] = toks[self.keys[n]].pooled
            else:
                pooled[self.keys[n]] = self.dropout(enc(inputs[n]))
        fused = self.fusion(toks if self.fusion_tokens else pooled, present)
        parts = [self.fused_proj(fused)[:, None] + self.kind.weight[0]]
        masks = [torch.ones(present.shape[0], 1, dtype=torch.bool, device=present.device)]
        spans, at = {}, 1
        for i, n in enumerate(self.input_names):
            k = self.keys[n]
            if self.memory_kind == "tokens":
                x, real = toks[k].tokens, toks[k].mask
            else:
                x, real = pooled[k][:, None], torch.ones(present.shape[0], 1, dtype=torch.bool, device=present.device)
            mask = real & present[:, i, None]
            x = torch.where(mask[..., None], self.proj[k](x), torch.zeros((), dtype=x.dtype, device=x.device))
            parts.append(x + sinusoid(x.shape[1], self.dim, x.device) + self.kind.weight[i + 1])
            masks.append(mask)
            spans[n] = (at, at + x.shape[1])
            at += x.shape[1]
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1), spans

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor, target: torch.Tensor | None = None,
                **generation: Any) -> torch.Tensor:  # fmt: skip
        memory, mask, spans = self.memory(inputs, present)
        if self.ctc_input is not None:
            logits = self.head.frames(memory, mask, *spans[self.ctc_input])
            return logits if target is not None else self._ctc_outputs(logits)
        if target is not None:
            bos = torch.full_like(target[:, :1], BOS)
            return self.head(memory, mask, torch.cat([bos, target[:, :-1]], dim=1))
        return torch.from_numpy(self.generate(memory, mask, **generation))

    def _ctc_outputs(self, logits: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1).detach().cpu().numpy()
        ids, score = ctc_greedy(log_probs, blank=PAD)
        out = np.full((ids.shape[0], 1, self.max_len + 1), PAD, dtype=np.int64)
        for r, row in enumerate(ids):
            toks = [t for t in row.tolist() if t != PAD][: self.max_len]
            out[r, 0, : len(toks)] = toks
            out[r, 0, len(toks)] = EOS
        return torch.from_numpy(pack(out, score[:, None]))

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, mask: torch.Tensor, **overrides: Any) -> np.ndarray:
        """Batched beam search (greedy at beam size 1) from the memory: the text task's outputs."""
        return generate_together([self], [(memory, mask)], None, **overrides)


@torch.no_grad()
def generate_together(
    nets: list[TextNet],
    memories: list[tuple[torch.Tensor, torch.Tensor]],
    weights: torch.Tensor | None,
    **overrides: Any,
) -> np.ndarray:
    """Late fusion of generated text (a product of experts): several text networks trained apart, each reading its
    own memory, decoded by one beam search whose step scores are the weighted mean of the networks' log-probabilities,
    normalized again. `weights` (rows, networks): a row's weight of each network, 0 for one whose input the row
    lacks (rows are normalized to sum 1); None with one network: its own log-probabilities (`TextNet.generate`).
    The networks must share the vocabulary; the first one's generation settings apply. Returns the text task's
    outputs."""
    g = nets[0].generation | {k: v for k, v in overrides.items() if v is not None}
    k = max(1, int(g["beam_size"]))
    shared, caches = [], []
    for net, (memory, mask) in zip(nets, memories, strict=True):
        read = getattr(net.head, "step_memory", None)
        shared.append(((read(memory) if read else memory).repeat_interleave(k, 0), mask.repeat_interleave(k, 0)))
        caches.append(net.head.init_cache(memory, mask).repeat_interleave(k, 0))
    device = memories[0][0].device
    if weights is None:
        if len(nets) != 1:
            raise ValueError("generate_together needs the weights of several networks")
        w = None
    else:
        w = weights.float()
        w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))  # no member present: every one speaks
        w = (w / w.sum(1, keepdim=True)).repeat_interleave(k, 0).to(device)

    def step(prefix: np.ndarray, cache: tuple, rows: tuple):
        p = torch.as_tensor(prefix, device=device)
        if w is None:  # one network: its log-probabilities as they are (what the exported decoder step computes)
            logits, c = nets[0].head.step(p, *rows[0], cache[0])
            return torch.log_softmax(logits.float(), dim=-1).cpu().numpy(), (c,)
        *mems, weight = rows
        total, new = None, []
        for j, net in enumerate(nets):
            logits, c = net.head.step(p, *mems[j], cache[j])
            part = weight[:, j : j + 1] * torch.log_softmax(logits.float(), dim=-1)
            total = part if total is None else total + part
            new.append(c)
        return torch.log_softmax(total, dim=-1).cpu().numpy(), tuple(new)

    ids, scores = beam_search(
        step, tuple(caches), memories[0][0].shape[0], bos=BOS, eos=EOS, pad=PAD, max_len=nets[0].max_len,
        beam_size=k, length_penalty=float(g["length_penalty"]), no_repeat_ngram=int(g["no_repeat_ngram"]),
        n_best=int(g["n_best"]), forbidden=(UNK,), shared=tuple(shared) if w is None else (*shared, w),
    )  # fmt: skip
    return pack(ids, scores)
