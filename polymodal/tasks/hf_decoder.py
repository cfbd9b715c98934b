"""A pretrained Hugging Face decoder for the `text` problem type (`decoder.pretrained`): a causal LM of the GPT-2
family given cross-attention to the memory (as VisionEncoderDecoder does), or the decoder of a seq2seq model
(T5, BART) reading the memory as its encoder's output. Its tokenizer replaces the word vocabulary.

Ids: polymodal's specials stay 0-3 (<pad>, <bos>, <eos>, <unk>), so the loss, the beam search and the outputs
are those of every text model; the tokenizer's token j is id 4 + j. <bos> feeds the model its start token
(`decoder_start_token_id`, else bos, else eos), <eos> is its eos token. "Dead" ids are never a target nor
generated: <pad>, <bos>, <unk> and 4 + every special token of the tokenizer (its eos is <eos>); their logits are
-inf and the loss leaves them out (`live_columns`).

`decoder.train`: `frozen` (the pretrained weights do not change), `finetune` (all of them learn), `lora` (LoRA
adapters, peft's, on the attention projections of the pretrained layers; alpha = 2 x rank, so scale 2). In every
mode what is new learns: the projection of the memory to the model's width and, for a causal LM, its newly
created cross-attention layers. The step function re-reads the whole prefix (no KV cache yet), like the scratch
transformer decoder. ONNX export is not offered for these models (`polymodal/optimize/onnx_decoder.py` refuses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polymodal.errors import UserError
from polymodal.tasks.base import BOS, EOS, PAD, UNK

SPECIAL = 4  # polymodal's <pad>, <bos>, <eos>, <unk>: ids 0-3, the tokenizer's ids after them
FOLDER = "decoder"  # in the model folder: the decoder's config.json and tokenizer files (weights: model.safetensors)
TRAIN_MODES = ("frozen", "finetune", "lora")


class HFVocabulary:
    """The tokenizer of a pretrained decoder, in polymodal's ids (see the module's docstring). `fresh`: built for a
    fit, so the decoder starts from the pretrained weights (a loaded model builds it from its config instead)."""

    level = "subword"

    def __init__(self, source: str, lowercase: bool = True, fresh: bool = False):
        self.source, self.path, self.lowercase, self.fresh = str(source), str(source), lowercase, fresh
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (OSError, ValueError) as e:
                raise UserError(f"decoder.pretrained {self.source!r}: no tokenizer found at {self.path} ({e}); give "
                                "a hub id or a local folder with the model's tokenizer files") from e  # fmt: skip
        return self._tokenizer

    def __len__(self) -> int:
        return SPECIAL + len(self.tokenizer)

    @property
    def dead(self) -> tuple[int, ...]:
        return (PAD, BOS, UNK, *sorted({SPECIAL + int(i) for i in self.tokenizer.all_special_ids}))

    def encode(self, text: Any) -> list[int]:
        s = str(text)
        t = self.tokenizer
        ids = t(s.lower() if self.lowercase else s, add_special_tokens=False)["input_ids"]
        return [UNK if i == t.unk_token_id else SPECIAL + int(i) for i in ids]

    def decode(self, ids: Any) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= SPECIAL:
                out.append(i - SPECIAL)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    def relink(self, folder: Path) -> None:
        """A loaded model's tokenizer and decoder config are its own copies, in `folder`/decoder/."""
        local = Path(folder) / FOLDER
        if local.is_dir():
            self.path, self._tokenizer = str(local), None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hf", "source": self.source, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HFVocabulary:
        return cls(d["source"], d["lowercase"])

    @classmethod
    def fit(cls, decoder: Any) -> HFVocabulary:
        """Checks the decoder section's pretrained settings; the vocabulary of `decoder.pretrained`."""
        if not decoder.pretrained:
            raise UserError("decoder.name: hf needs decoder.pretrained (a hub id or a local model folder)")
        if decoder.name not in ("transformer", "hf"):
            raise UserError(f"decoder.pretrained is a Hugging Face decoder: it replaces decoder.name "
                            f"{decoder.name!r} (set decoder.name: hf, or leave decoder.pretrained unset)")  # fmt: skip
        if decoder.train not in TRAIN_MODES:
            raise UserError(f"decoder.train must be one of {list(TRAIN_MODES)}, not {decoder.train!r}")
        if decoder.lora_rank < 1:
            raise UserError(f"decoder.lora_rank must be at least 1, not {decoder.lora_rank}")
        return cls(decoder.pretrained, decoder.lowercase, fresh=True)


def live_columns(logits: torch.Tensor, target: torch.Tensor, dead: tuple[int, ...]):
    """The logits without the dead columns and the targets in their ids, dead targets (padding, unknown) -100:
    what cross-entropy with label smoothing needs (a -inf column would make it infinite)."""
    keep = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(dead)] = False
    remap = torch.where(keep, torch.cumsum(keep, 0) - 1, torch.full_like(keep, -100, dtype=torch.long))
    return logits[..., keep], remap[target]


def _attention_projections(model: nn.Module, new: set[str]) -> list[str]:
    """The Linear / Conv1D layers directly inside an attention module, outside the new (cross-attention) layers."""
    from transformers.pytorch_utils import Conv1D

    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | Conv1D) and "." in name:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if "Attention" in type(parent).__name__ and not any(n.startswith(name + ".") for n in new):
                out.append(name)
    return out


class HFDecoder(nn.Module):
    """The decoder contract (`polymodal/tasks/decoders.py`) over a pretrained Hugging Face model."""

    autoregressive = True

    def __init__(self, vocabulary: HFVocabulary, dim: int, max_length: int, train: str = "lora", lora_rank: int = 8):
        super().__init__()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

        self.vocabulary = vocabulary
        try:
            config = AutoConfig.from_pretrained(vocabulary.path)
        except (OSError, ValueError) as e:
            raise UserError(
                f"decoder.pretrained {vocabulary.source!r}: no model config at {vocabulary.path} ({e})"
            ) from e
        self.seq2seq = bool(config.is_encoder_decoder)
        auto = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        if not self.seq2seq:
            config.add_cross_attention, config.is_decoder = True, True
        missing: set[str] = set()
        if vocabulary.fresh:
            model, info = auto.from_pretrained(vocabulary.path, config=config, output_loading_info=True)
            missing = set(info.get("missing_keys", []))
        else:  # a saved model: its weights come from model.safetensors
            model = auto.from_config(config)
        if self.seq2seq:  # the memory is the encoder's output: the pretrained encoder is left out
            _drop_encoder(model)
        elif "encoder_hidden_states" not in _forward_args(model):
            raise UserError(f"decoder.pretrained {vocabulary.source!r} ({type(model).__name__}) cannot attend to "
                            "the inputs: use a causal LM that takes cross-attention (GPT-2 family) or a seq2seq "
                            "model (T5, BART)")  # fmt: skip
        self.model = model
        names = {n for n, _ in model.named_parameters()}
        new = {n for n in names if n in missing or (not self.seq2seq and "cross" in n)}
        self._check_length(config, max_length)
        if train == "lora":
            from peft import LoraConfig, inject_adapter_in_model
            from transformers.pytorch_utils import Conv1D

            targets = _attention_projections(model, new)
            conv = any(isinstance(model.get_submodule(t), Conv1D) for t in targets)
            lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=targets, fan_in_fan_out=conv)
            self.model = model = inject_adapter_in_model(lora, model)
        for n, p in model.named_parameters():
            p.requires_grad = train == "finetune" or n in new or "lora_" in n
        hidden = int(config.get_text_config().hidden_size)
        self.proj = nn.Linear(dim, hidden)
        self.tied = _tied(model)
        self._register_state_dict_hook(_drop_tied)
        self.register_load_state_dict_pre_hook(_fill_tied)
        tok = vocabulary.tokenizer
        eos = _first(getattr(config, "eos_token_id", None), tok.eos_token_id)
        start = _first(getattr(config, "decoder_start_token_id", None), getattr(config, "bos_token_id", None),
                       tok.bos_token_id, eos)  # fmt: skip
        if eos is None or start is None:
            raise UserError(f"decoder.pretrained {vocabulary.source!r} names no end-of-sequence token (eos_token_id)")
        n = len(vocabulary)
        rows = model.get_output_embeddings().weight.shape[0]
        if n - SPECIAL > rows:  # a tokenizer with added tokens the model has no output for
            raise UserError(f"decoder.pretrained {vocabulary.source!r}: its tokenizer has {n - SPECIAL} tokens, "
                            f"its output layer only {rows}")  # fmt: skip
        to_hf = np.arange(n) - SPECIAL  # polymodal id -> the model's input id
        to_hf[[PAD, BOS, EOS, UNK]] = [eos, start, eos, eos]
        self.register_buffer("to_hf", torch.as_tensor(np.clip(to_hf, 0, None)), persistent=False)
        gather = to_hf.copy()
        gather[[PAD, BOS, UNK]] = 0  # dead anyway
        self.register_buffer("gather", torch.as_tensor(np.clip(gather, 0, None)), persistent=False)
        dead = torch.zeros(n, dtype=torch.bool)
        dead[list(vocabulary.dead)] = True
        self.register_buffer("dead", dead, persistent=False)

    @staticmethod
    def _check_length(config: Any, max_length: int) -> None:
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length + 1 > limit:
            raise UserError(f"decoder.max_length + 1 ({max_length + 1}) is more than the {limit} positions the "
                            "pretrained decoder has: lower decoder.max_length")  # fmt: skip

    def forward(self, memory: torch.Tensor, mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc, ids, att = self.proj(memory), self.to_hf[tgt_in], mask.long()
        if self.seq2seq:
            out = self.model(encoder_outputs=(enc,), attention_mask=att, decoder_input_ids=ids, use_cache=False)
        else:
            out = self.model(input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=att, use_cache=False)
        logits = out.logits.float()[..., self.gather]
        return logits.masked_fill(self.dead, float("-inf"))

    def init_cache(self, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return memory.new_zeros(memory.shape[0], 1, 1)  # nothing carried: each step re-reads the prefix

    def step(self, prefix: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, cache: torch.Tensor):
        return self(memory, mask, prefix)[:, -1], cache

    def save_files(self, scratch: Path) -> dict[str, Path]:
        """The model's config and tokenizer files written under `scratch`, by their names in the model folder."""
        out = Path(scratch) / FOLDER
        self.model.config.save_pretrained(out)
        self.vocabulary.tokenizer.save_pretrained(out)
        return {f"{FOLDER}/{f.name}": f for f in sorted(out.iterdir()) if f.is_file()}


def _first(*values: Any) -> int | None:
    for v in values:
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return None


def _forward_args(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _drop_encoder(model: nn.Module) -> None:
    """Replace the seq2seq model's encoder by a stub (its forward is never called when encoder outputs are given)."""
    encoder = model.get_encoder()
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is encoder:
                setattr(parent, name, nn.Identity())
                return


def _tied(model: nn.Module) -> list[tuple[str, str]]:
    """(alias, source) of parameters shared under two names (tied embeddings): safetensors stores one tensor once."""
    seen: dict[int, str] = {}
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.append(("model." + name, "model." + seen[id(p)]))
        else:
            seen[id(p)] = name
    return out


def _drop_tied(module: HFDecoder, state: dict[str, Any], prefix: str, _: Any) -> None:
    for alias, _source in module.tied:
        state.pop(prefix + alias, None)


def _fill_tied(module: HFDecoder, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for alias, source in module.tied:
        if prefix + source in state:
            state.setdefault(prefix + alias, state[prefix + source])
