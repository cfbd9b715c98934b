"""`encoders.readout`: an input read through a fitted text model of it (a "branch" that learnt to say what the
input holds: the digits a video shows, the words its sound track speaks), frozen, in place of an encoder.

What it is for: a label that depends only on how two inputs relate (do the spoken digits match the shown ones,
in order?) gives no gradient to any single input's features, so a fusion over raw encoder tokens sits on a
plateau (docs/benchmarks/video.md). Read through their text models, both inputs become short sequences of word
distributions that a fusion can compare position by position.

The readout decodes greedily for `steps` steps (`encoders.readout_steps`, default the folder's
`decoder.max_length`) and gives one token per step: the decoder's probabilities over the words of every readout
input's vocabulary (their sorted union after the four specials, so a word is the same feature whatever input
says it), placed in the step's own block of a `steps x words` vector. The order is in the features: the pooled
embedding (the sum of the real tokens) is the steps' distributions side by side, and a token-level fusion knows
each token's step. Steps after the first generated <eos> are padding. With `encoders.video.temporal: mean` (the
order-blind entry of `compare`) a video input's steps share one block: the pooled embedding is then the bag of
words, in no order.

The folder's architecture travels in this model's `input_specs` (its config, schema, input specs and task) and its
weights in this model's weights, so a saved model needs the folder no more.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polymodal.encoders.tokens import Tokens
from polymodal.errors import UserError
from polymodal.tasks.base import BOS, EOS, PAD, UNK
from polymodal.tasks.text import SPECIALS

log = logging.getLogger(__name__)
MEMO_ROWS = 200_000  # training rows' readouts memoized (under 1 kB each); past that, started afresh


def readout_specs(cfg: Any, schema: Any, input_specs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """A new fit's `encoders.readout`, checked: (the input specs with each readout input's description in place,
    {input: the folder's weights}). Inputs this model lacks are skipped (compare's single-input entries)."""
    from polymodal.model.artifact import load_folder

    wanted = {n: f for n, f in cfg.encoders.readout.items() if n in schema.inputs}
    for name in set(cfg.encoders.readout) - set(wanted):
        log.warning("encoders.readout: %r is not an input of this model; skipped", name)
    both = sorted(set(wanted) & set(cfg.encoders.init_from))
    if both:
        raise UserError(f"encoders.readout and encoders.init_from both name {both}: a readout input keeps its text "
                        "model's encoder, so name it in one of them")  # fmt: skip
    specs, weights, described = dict(input_specs), {}, {}
    for name, folder in wanted.items():
        where = f"encoders.readout[{name!r}]"
        if not (Path(folder) / "config.json").is_file():
            raise UserError(f"{where}: {folder} is not a fitted model folder (no config.json)")
        config, state, _, _ = load_folder(Path(folder))
        inputs = _inputs(config)
        if config["schema"].get("problem_type") != "text":
            kind = config["schema"].get("problem_type")
            raise UserError(f"{where}: {folder} is not a text model (problem_type {kind!r}): fit one whose label "
                            "is the input's caption")  # fmt: skip
        if inputs != [name]:
            raise UserError(f"{where}: {folder} reads {inputs}; a readout's text model must read {name!r} alone "
                            "(fit it with the other inputs ignored)")  # fmt: skip
        decoder = config["config"]["decoder"]
        if decoder["name"] not in ("gru", "transformer") or decoder.get("pretrained"):
            raise UserError(f"{where}: {folder}'s decoder is {decoder['name']!r}; a readout decodes step by step: "
                            "fit the text model with decoder.name gru or transformer")  # fmt: skip
        if config.get("compression", {}).get("quantize"):
            raise UserError(f"{where}: {folder} is an int8 model; read out its float folder")
        theirs, ours = config["input_specs"][name], input_specs[name]
        if {k: v for k, v in theirs.items() if k not in ("mean", "std")} != {
            k: v for k, v in ours.items() if k not in ("mean", "std")
        }:
            raise UserError(f"{where}: {folder} was fitted on {name!r} prepared otherwise ({theirs}, here {ours}): "
                            "fit both with the same preprocess and encoder settings for that input")  # fmt: skip
        steps = cfg.encoders.readout_steps or int(config["task"]["settings"]["max_length"])
        described[name] = {"folder": str(Path(folder).resolve()), "config": config["config"],
                           "schema": config["schema"], "input_specs": config["input_specs"],
                           "task": config["task"], "steps": steps}  # fmt: skip
        weights[name] = state
    words = sorted({w for d in described.values() for w in d["task"]["vocabulary"]["tokens"][len(SPECIALS) :]})
    for name, d in described.items():
        specs[name] = {"readout": d | {"words": [*SPECIALS, *words]}}
    return specs, weights


def _inputs(config: dict[str, Any]) -> list[str]:
    from polymodal.data.schema import Schema

    return list(Schema.from_dict(config["schema"]).inputs)


class Readout(nn.Module):
    """The encoder of a readout input (see the module docstring): `forward` the pooled embedding, `forward_tokens`
    one token per decoded step. Frozen: its text model stays in eval mode and takes no gradient. `net`: the text
    model's network (reading one input), `vocabulary`: its tokens by id, `words`: the shared features' words;
    `temporal` "mean": the steps share one block (order-blind)."""

    def __init__(self, net: nn.Module, vocabulary: list[str], steps: int, words: list[str],
                 temporal: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.net.eval()
        self.input = net.input_names[0]
        self.steps = steps
        at = {w: i for i, w in enumerate(words)}
        # (their vocabulary, the shared words): their probabilities as the shared features, by matrix product
        self.register_buffer("to_words", torch.zeros(len(vocabulary), len(words)), persistent=False)
        for i, w in enumerate(vocabulary):
            self.to_words[i, at[w]] = 1.0
        self.width = len(words)
        self.ordered = temporal != "mean"
        self.dim = self.steps * self.width if self.ordered else self.width
        self._memo: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}  # row content -> its readout

    def train(self, mode: bool = True) -> Readout:
        super().train(mode)
        self.net.eval()  # frozen: no dropout, BatchNorm's statistics as fitted
        return self

    @torch.no_grad()
    def distributions(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """((batch, steps, words) the probabilities at each greedy step, (batch, steps) True up to the first
        <eos>). In training, memoized by each row's content: the text model is frozen and its input never
        augmented, so a row gives the same readout every epoch, and a fit decodes each training row once (a
        fine-tuned speech encoder inside a readout costs about 19 ms a 2.6 s clip here). Not in eval mode: validation
        rows are few, and a served model must not grow with its requests."""
        if not self.training or not isinstance(x, torch.Tensor) or torch.jit.is_tracing():
            return self._decode(x)
        raw = x.detach().cpu().contiguous().reshape(len(x), -1).view(torch.uint8).numpy()  # any dtype, as bytes
        keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in raw]
        new: dict[bytes, int] = {}  # a row not read before -> its first place in the batch
        for i, k in enumerate(keys):
            if k not in self._memo:
                new.setdefault(k, i)
        if new:
            p, real = self._decode(x[list(new.values())])
            if len(self._memo) + len(new) > MEMO_ROWS:
                self._memo.clear()
            for j, k in enumerate(new):
                self._memo[k] = (p[j].cpu(), real[j].cpu())
        p, real = zip(*(self._memo[k] for k in keys), strict=True)
        return torch.stack(p).to(self.to_words.device), torch.stack(real).to(self.to_words.device)

    def _decode(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        head = self.net.head
        b = _rows(x)
        device = self.to_words.device
        present = torch.ones(b, 1, dtype=torch.bool, device=device)
        memory, mask, _ = self.net.memory({self.input: x}, present)
        cache = head.init_cache(memory, mask)
        read = head.step_memory(memory) if hasattr(head, "step_memory") else memory
        prefix = torch.full((b, 1), BOS, dtype=torch.long, device=device)
        alive = torch.ones(b, dtype=torch.bool, device=device)
        never = torch.zeros(self.to_words.shape[0], dtype=torch.bool, device=device)
        never[[PAD, BOS, UNK]] = True  # what greedy generation never picks (as `polymodal.tasks.beam`)
        probs, real = [], []
        for _ in range(self.steps):
            logits, cache = head.step(prefix, read, mask, cache)
            probs.append(torch.softmax(logits.float(), dim=-1))
            real.append(alive)
            token = logits.masked_fill(never, float("-inf")).argmax(dim=-1)
            alive = alive & (token != EOS)
            prefix = torch.cat([prefix, token[:, None]], dim=1)
        return torch.stack(probs, dim=1) @ self.to_words, torch.stack(real, dim=1)

    def forward_tokens(self, x: Any) -> Tokens:
        p, real = self.distributions(x)
        if self.ordered:  # step t's distribution in block t
            eye = torch.eye(self.steps, dtype=p.dtype, device=p.device)
            p = (eye[None, :, :, None] * p[:, :, None, :]).flatten(2)
        p = p * real[..., None].to(p.dtype)
        return Tokens(p, real, p.sum(dim=1))

    def forward(self, x: Any) -> torch.Tensor:
        return self.forward_tokens(x).pooled


def _rows(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, dict):
        return _rows(next(iter(x.values())))
    if isinstance(x, (tuple, list)):
        return _rows(x[0])
    raise TypeError(f"cannot tell the batch size of a {type(x).__name__}")
