"""`MultimodalExtractor`: polymodal's encoders and fusions as a Stable-Baselines3 features extractor.

One encoder per key of a gymnasium `Dict` observation space, chosen from the key's space (the light encoders of
polymodal.rl.encoders by default; `encoder_kwargs={key: {"arch": ...}}` picks the library's instead):
  image `Box` (H x W x C or C x H x W)       -> GridEncoder up to 16 cells a side, else ImageCNN  (modality image)
  token ids: 1-D integer `Box` (TextTokens)  -> MissionEncoder (arch "rnn": TextRNN)              (modality text)
  vector: 1-D float `Box` (or any, flattened) -> NumericMLP                                       (modality numeric)
  `Discrete` / `MultiDiscrete`                -> CategoryEncoder (arch "mlp": CategoricalMLP)    (categorical)
  spectrogram: 2-D float `Box` (features x frames) -> AudioCNN                                    (modality audio)
then any fusion of `polymodal.fusion.FUSIONS` over the embeddings, with every input present. A token-level fusion
(relation, film, token_transformer) reads each encoder's tokens instead: the image's grid of regions, the
mission's words, one token for a vector or a category.

Symbolic grid views (MiniGrid/BabyAI's `image`: object, colour and state codes per cell, not pixels) are encoded
best as codes: `encoder_kwargs={"image": {"codes": 16}}` embeds each cell's codes (GridEncoder's / ImageCNN's).

SB3 preprocesses observations before the extractor sees them (uint8 images / 255, `Discrete` one-hot, every
`Box` to float): `_adapt` turns each back into what the polymodal encoder takes (channels first, ids, ...).

Transfer: `model=FOLDER, transfer={obs_key: input_name}` builds those keys' encoders from a trained polymodal
model folder (its config and safetensors weights), frozen (`freeze=True`) or trained on with the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from polymodal.data.schema import Modality
from polymodal.encoders import build_encoder
from polymodal.fusion import FUSIONS, build_fusion
from polymodal.fusion.early import EarlyFusion
from polymodal.model.network import module_keys
from polymodal.preprocess import category_key
from polymodal.rl.encoders import CNN_NORMS, CategoryEncoder, MissionEncoder, ObservationError, build_rl_encoder
from polymodal.rl.wrappers import Vocabulary, is_text_space


@dataclass
class InputPlan:
    """How one observation key is encoded: the modality, the encoder's spec, and how to adapt SB3's tensor."""

    modality: Modality
    spec: dict[str, Any]
    channels_last: bool = False  # images: H x W x C in the space
    lookup: list[int] = field(default_factory=list)  # categorical: Discrete value index -> category id
    norm: tuple[list[float], list[float]] | None = None  # transferred images/vectors: the model's mean, std
    flags: int = 0  # transferred numeric input: missing-value flags appended (always 0: observations are complete)
    hw: tuple[int, int] | None = None  # images: (height, width)


def _is_channels_last(shape: tuple[int, ...]) -> bool:
    # SB3's rule (is_image_space_channels_first): the smallest dimension is the channel axis.
    return int(np.argmin(shape)) == 2


def plan_input(key: str, space: spaces.Space, modality: str | None = None) -> InputPlan:
    """Pick the encoder of one observation key, or raise ObservationError naming the key and the fix."""
    if is_text_space(space):
        raise ObservationError(
            f"observation key {key!r} is a Text space: wrap the env with polymodal.rl.TextTokens (polymodal rl "
            "train does) so the extractor gets fixed-length token ids"
        )
    if isinstance(space, spaces.Discrete):
        return InputPlan(
            Modality.CATEGORICAL, {"cardinalities": [int(space.n) + 2]}, lookup=list(range(2, space.n + 2))
        )
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return InputPlan(Modality.CATEGORICAL, {"cardinalities": [int(n) + 2 for n in space.nvec]})
    if isinstance(space, spaces.MultiBinary) and np.ndim(space.n) == 0:
        return InputPlan(Modality.NUMERIC, {"n_features": int(space.n)})
    if not isinstance(space, spaces.Box):
        raise ObservationError(
            f"observation key {key!r} has a {type(space).__name__} space ({space}), which the extractor cannot "
            "encode: it takes Box (image, token ids, vector, spectrogram), Discrete and MultiDiscrete. Flatten or "
            "drop the key with a gymnasium wrapper (polymodal.rl.DropKeys)"
        )
    shape = space.shape
    chosen = Modality(modality) if modality else None
    if chosen is None:
        if len(shape) == 3:
            chosen = Modality.IMAGE
        elif len(shape) == 1 and np.issubdtype(space.dtype, np.integer) and space.dtype != np.uint8:
            chosen = Modality.TEXT
        elif len(shape) == 2:
            chosen = Modality.AUDIO
        elif len(shape) <= 1:
            chosen = Modality.NUMERIC
        else:
            raise ObservationError(
                f"observation key {key!r} is a Box of shape {shape}: the extractor encodes images (3-D), "
                "spectrograms (2-D), token ids and vectors (1-D). Pass modalities={key!r: 'numeric'} to flatten it"
            )
    if chosen is Modality.IMAGE:
        if len(shape) != 3:
            raise ObservationError(f"observation key {key!r}: an image needs a 3-D Box, not shape {shape}")
        last = _is_channels_last(shape)
        c, h, w = (shape[2], shape[0], shape[1]) if last else shape
        spec = {"channels": int(c), "size": int(min(h, w))}
        return InputPlan(Modality.IMAGE, spec, channels_last=last, hw=(int(h), int(w)))
    if chosen is Modality.TEXT:
        if len(shape) != 1:
            raise ObservationError(f"observation key {key!r}: token ids need a 1-D Box, not shape {shape}")
        return InputPlan(Modality.TEXT, {"vocab_size": int(np.max(space.high)) + 1, "max_len": int(shape[0])})
    if chosen is Modality.AUDIO:
        if len(shape) != 2 or shape[0] < 8 or shape[1] < 8:
            raise ObservationError(
                f"observation key {key!r}: a spectrogram needs a 2-D Box (features, frames) of at least 8 x 8, "
                f"not shape {shape}; pass modalities={{{key!r}: 'numeric'}} to flatten it instead"
            )
        return InputPlan(Modality.AUDIO, {"n_features": int(shape[0])})
    if chosen is Modality.NUMERIC:
        return InputPlan(Modality.NUMERIC, {"n_features": int(np.prod(shape, dtype=int)) or 1})
    raise ObservationError(f"observation key {key!r}: modality {chosen.value!r} does not fit a Box {shape}")


def plan_inputs(space: spaces.Space, modalities: dict[str, str] | None = None) -> dict[str, InputPlan]:
    """Plan every key of a `Dict` space (checked up front, so a bad key fails before any training)."""
    if not isinstance(space, spaces.Dict):
        raise ObservationError(
            f"the extractor takes a Dict observation space, not {space}: wrap the env with polymodal.rl.AsDict"
        )
    modalities = modalities or {}
    unknown = sorted(set(modalities) - set(space.spaces))
    if unknown:
        raise ObservationError(f"modalities given for keys {unknown} that the observation does not have")
    return {k: plan_input(k, s, modalities.get(k)) for k, s in space.spaces.items()}


def _load_encoders(
    folder: str | Path, transfer: dict[str, str], plans: dict[str, InputPlan], tokens: bool = False
) -> dict[str, nn.Module]:
    """Build the transferred keys' encoders from a polymodal model folder and load their weights. With `tokens`
    (a token-level fusion) an encoder of a pooled model gets a new token projection, the only weights not loaded."""
    from polymodal.config import Config, from_legacy
    from polymodal.data.schema import Schema
    from polymodal.model.artifact import load_folder

    config, state, preprocess, _ = load_folder(Path(folder))
    tree = Config.from_dict(config["config"]) if "config" in config else from_legacy(config, preprocess["config"])
    inputs = Schema.from_dict(config["schema"]).inputs
    keys = module_keys(list(inputs))
    out: dict[str, nn.Module] = {}
    for obs_key, name in transfer.items():
        if obs_key not in plans:
            raise ObservationError(f"transfer maps observation key {obs_key!r}, which the observation does not have")
        if name not in inputs:
            raise ObservationError(f"model {folder} has no input {name!r} (for key {obs_key!r}); it has {list(inputs)}")
        plan, modality, spec = plans[obs_key], inputs[name], dict(config["input_specs"][name])
        if "in_dim" in spec or "pretrained" in spec:
            raise ObservationError(
                f"input {name!r} of {folder} uses a pretrained encoder; transfer takes the scratch encoders only"
            )
        if modality is not plan.modality:
            raise ObservationError(
                f"observation key {obs_key!r} is {plan.modality.value} but model input {name!r} is {modality.value}"
            )
        st = preprocess["state"][name]
        if modality is Modality.IMAGE:
            if spec["channels"] != plan.spec["channels"]:
                raise ObservationError(f"{obs_key!r} has {plan.spec['channels']} channels, {name!r} {spec['channels']}")
            plan.norm = (st["mean"], st["std"])
        elif modality is Modality.TEXT and plan.spec["vocab_size"] > spec["vocab_size"]:
            raise ObservationError(
                f"{obs_key!r} token ids go up to {plan.spec['vocab_size'] - 1} but {name!r} knows {spec['vocab_size']}"
                " ids: tokenize with the model's vocabulary (polymodal.rl.vocabulary_from_model)"
            )
        elif modality is Modality.NUMERIC:
            n = len(st["columns"])
            if plan.spec["n_features"] != n:
                raise ObservationError(f"{obs_key!r} has {plan.spec['n_features']} numbers, {name!r} takes {n}")
            plan.norm, plan.flags = (st["mean"], st["std"]), n
        elif modality is Modality.CATEGORICAL:
            if len(st["vocabs"]) != 1 or len(plan.lookup) == 0:
                raise ObservationError(f"transfer of {name!r} needs a Discrete key and a single categorical column")
            index = {v: i + 2 for i, v in enumerate(st["vocabs"][0])}
            plan.lookup = [index.get(category_key(v), 1) for v in range(len(plan.lookup))]
        plan.spec = spec
        encoder = build_encoder(modality, spec, tree.encoders.dim(modality.value), tokens=tokens)
        prefix = f"encoders.{keys[name]}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not tokens:
            weights = {k: v for k, v in weights.items() if not k.startswith("token_proj.")}
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("token_proj.")]
        if missing or unexpected:
            raise ObservationError(
                f"model {folder}: the saved weights of input {name!r} do not fit its encoder (missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}): the folder is damaged or was edited; save the model "
                "again (MultimodalPredictor.save) or transfer from another folder"
            )
        out[obs_key] = encoder
    return out


_HASH: dict[tuple[int, str], torch.Tensor] = {}


def unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The distinct rows of `x` (any shape, rows along dim 0) and each row's index among them; None when every row
    is distinct. A row's bits hashed to one int64 (multiply-add, wrapping) and `torch.unique` on those keys: several
    times faster than `torch.unique(dim=0)`'s lexicographic sort. Exact: a hash collision is detected (the rows
    rebuilt from the distinct ones differ) and the sort is used instead."""
    n = x.shape[0]
    bits = x.reshape(n, -1)
    if bits.is_floating_point():  # compared by their bits: the hash needs integers (-0.0 vs 0.0: two rows, still exact)
        bits = bits.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[bits.element_size()])
    key = (bits.shape[1], str(x.device))
    if key not in _HASH:
        gen = torch.Generator().manual_seed(bits.shape[1])
        _HASH[key] = torch.randint(-(2**62), 2**62, (bits.shape[1],), generator=gen).to(x.device)
    uniq_keys, inverse = torch.unique((bits.long() * _HASH[key]).sum(1), return_inverse=True)
    if len(uniq_keys) == n:
        return x, None
    rows = torch.arange(n, device=x.device)
    first = torch.empty(len(uniq_keys), dtype=torch.long, device=x.device).scatter_(0, inverse, rows)
    if not torch.equal(bits[first][inverse], bits):  # a collision: astronomically rare, handled exactly anyway
        uniq_rows, inverse = torch.unique(bits, dim=0, return_inverse=True)
        first = torch.empty(len(uniq_rows), dtype=torch.long, device=x.device).scatter_(0, inverse, rows)
    return x[first], inverse


def _clear_act_cache(module: MultimodalExtractor, _: Any) -> None:
    if module.act_cache:
        module.act_cache.clear()


class MultimodalExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: one polymodal encoder per observation key, then a polymodal fusion.

    Use with `MultiInputPolicy` and `policy_kwargs={"features_extractor_class": MultimodalExtractor,
    "features_extractor_kwargs": {"fusion": "attention"}}` for DQN, PPO, A2C, ... (SB3 builds it from the env's
    observation space).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        fusion: str = "early",
        embed_dim: int = 64,
        hidden: int = 128,
        modalities: dict[str, str] | None = None,
        encoder_kwargs: dict[str, dict[str, Any]] | None = None,
        model: str | None = None,
        transfer: dict[str, str] | None = None,
        freeze: bool = True,
        fused_norm: bool = False,
        cnn_norm: str = "batch",
        grid_widths: tuple[int, ...] = (),
    ):
        if fusion not in FUSIONS:
            raise ObservationError(f"unknown fusion {fusion!r}; choose one of {sorted(FUSIONS)}")
        if cnn_norm not in CNN_NORMS:
            raise ObservationError(f"unknown cnn_norm {cnn_norm!r}; choose one of {sorted(CNN_NORMS)}")
        plans = plan_inputs(observation_space, modalities)
        # A token-level fusion reads each encoder's tokens (`forward_tokens`), as in the table model's network.
        tokens = bool(FUSIONS[fusion].consumes_tokens)
        loaded = _load_encoders(model, transfer or {}, plans, tokens) if model else {}
        names = list(plans)
        keys = module_keys(names)
        encoders = {}
        for k, plan in plans.items():
            dim = loaded[k].dim if k in loaded else embed_dim
            kw = (encoder_kwargs or {}).get(k, {})
            encoders[keys[k]] = loaded.get(k) or build_rl_encoder(plan.modality, plan.spec, kw, dim, tokens,
                                                                   cnn_norm, plan.hw, tuple(grid_widths))  # fmt: skip
        dims = {keys[k]: encoders[keys[k]].dim for k in names}
        # Late fusion returns "logits": here its outputs are the features, so it gets `hidden` outputs.
        fused = build_fusion(fusion, dims, hidden, hidden=hidden, dropout=0.0)
        width = fused.out_dim or hidden
        super().__init__(observation_space, features_dim=width)
        # A LayerNorm after the fusion keeps the Q head's input on one scale whatever each encoder's drifts to.
        self.fused_norm = nn.LayerNorm(width) if fused_norm else nn.Identity()
        # Token ids -> pooled text embedding of the rows seen since the encoder's weights last changed (see _text).
        self._text_cache: dict[str, tuple[tuple[float, ...], dict[bytes, torch.Tensor]]] = {}
        self._text_params: dict[str, list[torch.Tensor]] = {}
        # Acting (one observation, no gradients): the light mission encoder's output per mission, while the weights
        # stay the same. Off (None) unless the trainer clears it at every weight change: FusedDQN does, after each
        # optimizer step; loading weights clears it too.
        self.act_cache: dict[tuple[str, bytes], torch.Tensor] | None = None
        # An encoder whose cost hardly grows with the batch (the library's mission GRU, run through time): callers
        # that can should encode one large batch rather than two (FusedDQN's Double-DQN pass).
        self.costs_per_call = any(
            plans[k].modality is Modality.TEXT and not isinstance(encoders[keys[k]], MissionEncoder) for k in names
        )
        self.register_load_state_dict_post_hook(_clear_act_cache)
        self.names, self.keys, self.plans, self.tokens = names, keys, plans, tokens
        # Symbolic views in a uint8 Box: SB3 divides them by 255, `_adapt` multiplies back (decided once, here).
        self.rescaled = {
            k for k in names
            if getattr(encoders[keys[k]], "codes", 0) and is_image_space(observation_space.spaces[k])
        }  # fmt: skip
        self.encoders = nn.ModuleDict(encoders)
        self.one_hot = {
            k for k in names
            if isinstance(encoders[keys[k]], CategoryEncoder) and not tokens and plans[k].lookup
            and isinstance(observation_space.spaces[k], spaces.Discrete)
        }  # fmt: skip
        # Keys whose rows are deduplicated within a batch (see _encode), and those whose encoder has batch norms. A
        # grid read by one linear layer costs less than finding its distinct rows: not deduplicated.
        self.dedup = {
            k for k in names
            if plans[k].modality in (Modality.IMAGE, Modality.AUDIO) and not getattr(encoders[keys[k]], "linear", False)
        }  # fmt: skip
        self.batch_normed = {
            k for k in names if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoders[keys[k]].modules())
        }  # fmt: skip
        self.fusion = fused
        self.frozen = {keys[k] for k in loaded} if freeze else set()
        for k in self.frozen:
            self.encoders[k].requires_grad_(False)
            projection = getattr(self.encoders[k], "token_proj", None)
            if projection is not None:  # a token projection is not part of what was transferred: it learns
                projection.requires_grad_(True)
        for k, plan in plans.items():
            if plan.lookup:
                self.register_buffer(f"lookup_{keys[k]}", torch.tensor(plan.lookup, dtype=torch.long), persistent=False)
            if plan.norm is not None:
                mean, std = (torch.tensor(v, dtype=torch.float32) for v in plan.norm)
                self.register_buffer(f"mean_{keys[k]}", mean, persistent=False)
                self.register_buffer(f"std_{keys[k]}", std, persistent=False)

    def train(self, mode: bool = True) -> MultimodalExtractor:
        super().train(mode)
        for k in self.frozen:  # a frozen encoder keeps its batch-norm statistics
            self.encoders[k].eval()
        return self

    def _adapt(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """SB3's preprocessed tensor -> the encoder's input."""
        plan, mk = self.plans[key], self.keys[key]
        m = plan.modality
        if m is Modality.IMAGE:
            x = x.float()
            if plan.channels_last:  # SB3 transposes uint8 images itself; other image Boxes arrive as they are
                x = x.permute(0, 3, 1, 2)
            if key in self.rescaled:
                return x * 255.0  # the uint8 codes, back from SB3's / 255
            if plan.norm is not None:
                x = (x - getattr(self, f"mean_{mk}")[:, None, None]) / getattr(self, f"std_{mk}")[:, None, None]
            return x
        if m is Modality.TEXT:
            return x.long()
        if m is Modality.CATEGORICAL:
            x = x.flatten(1)  # rollout buffers keep Discrete observations as (batch, 1): one-hot (batch, 1, n)
            space = self._observation_space.spaces[key]
            if isinstance(space, spaces.Discrete):  # SB3 one-hot encodes Discrete observations
                return getattr(self, f"lookup_{mk}")[x.argmax(dim=-1)].unsqueeze(1)
            parts = torch.split(x, [int(n) for n in space.nvec], dim=-1)
            return torch.stack([p.argmax(dim=-1) + 2 for p in parts], dim=1)
        if m is Modality.AUDIO:
            return x.float()
        x = x.float().flatten(1)
        if plan.norm is not None:
            x = (x - getattr(self, f"mean_{mk}")) / getattr(self, f"std_{mk}")
            x = torch.cat([x, torch.zeros(x.shape[0], plan.flags, dtype=x.dtype, device=x.device)], dim=1)
        return x

    def _text(self, key: str, encoder: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """The pooled embedding of token ids, each distinct row encoded once. A mission rarely changes within an
        episode and a replay batch holds few distinct ones: with gradients, the distinct rows are encoded and
        scattered back; without (acting, TD targets), rows are also remembered while the weights stay the same."""
        uniq, inverse = (ids, None) if ids.shape[0] == 1 else unique_rows(ids)
        if torch.is_grad_enabled():
            out = encoder(uniq)
            return out if inverse is None else out[inverse]
        if key not in self._text_params:  # listed once: walking the module's parameters costs more than the lookup
            self._text_params[key] = list(encoder.parameters())
        params = self._text_params[key]
        # The weights' fingerprint: version counters miss fused optimizers and SB3's `.data` target updates.
        version = tuple(torch.stack([p.sum() for p in params]).tolist())
        seen_version, seen = self._text_cache.get(key, ((), {}))
        if seen_version != version or len(seen) > 4096:
            seen = {}
            self._text_cache[key] = (version, seen)
        rows = [r.tobytes() for r in uniq.cpu().numpy()]
        todo = [i for i, r in enumerate(rows) if r not in seen]
        if todo:
            for i, e in zip(todo, encoder(uniq[todo]), strict=True):
                seen[rows[i]] = e
        out = torch.stack([seen[r] for r in rows])
        return out if inverse is None else out[inverse]

    def _encode(self, key: str, encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One key's embedding. Images (and spectrograms) in a batch repeat (a DQN batch holds states and next
        states; a no-op action leaves the view as it was): each distinct one is encoded once and gathered back, the
        gradient summed over its copies, which is what encoding every copy gives, unless batch statistics are
        learnt (BatchNorm in training mode), which the copies would change."""
        if self.plans[key].modality is Modality.TEXT:
            if not isinstance(encoder, MissionEncoder):
                return self._text(key, encoder, x)
            # The light mission encoder costs less than finding the distinct rows: every row is encoded, except
            # when acting with the cache on.
            cache = self.act_cache
            if cache is None or x.shape[0] != 1 or x.device.type != "cpu" or torch.is_grad_enabled():
                return encoder(x)
            row = (key, x.numpy().tobytes())
            if row not in cache:
                if len(cache) > 4096:
                    cache.clear()
                cache[row] = encoder(x)
            return cache[row]
        if key not in self.dedup or x.shape[0] < 16 or (encoder.training and key in self.batch_normed):
            return encoder(x)
        uniq, inverse = unique_rows(x)
        out = encoder(uniq)
        return out if inverse is None else out[inverse]

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """SB3's contract: observations after `preprocess_obs`."""
        emb = {}
        for k in self.names:
            if k in self.one_hot:  # SB3's one-hot of a Discrete key times the embedding table: no ids rebuilt
                mk = self.keys[k]
                emb[mk] = self.encoders[mk].from_one_hot(observations[k].flatten(1), getattr(self, f"lookup_{mk}"))
            else:
                emb[self.keys[k]] = self._embed(k, self._adapt(k, observations[k]))
        return self._fuse(emb, observations)

    def forward_raw(self, observations: dict[str, torch.Tensor], normalize_images: bool = True) -> torch.Tensor:
        """The same features from the observations before SB3's `preprocess_obs` (as policies call it with
        `extract_features`, polymodal.rl.dqn): cell codes are read as they are (not / 255, then x 255 back), a
        `Discrete` key's ids index its table (no one-hot), token ids stay ids; every other key is preprocessed
        as SB3 would. Preprocessing costs more than these encoders on small batches (each call checks the space
        again, numpy included)."""
        emb = {}
        for k in self.names:
            x, mk = observations[k], self.keys[k]
            if k in self.one_hot:  # the Discrete value -> its category id, one column
                emb[mk] = self.encoders[mk](getattr(self, f"lookup_{mk}")[x.long().reshape(-1, 1)])
                continue
            if k in self.rescaled:  # the codes as integers (GridEncoder reads them so)
                x = x.permute(0, 3, 1, 2) if self.plans[k].channels_last else x
            elif self.plans[k].modality is Modality.TEXT:
                x = x.long()
            else:
                space = self._observation_space.spaces[k]
                x = self._adapt(k, preprocess_obs(x, space, normalize_images=normalize_images))
            emb[mk] = self._embed(k, x)
        return self._fuse(emb, observations)

    def _embed(self, key: str, x: torch.Tensor) -> torch.Tensor | Any:
        encoder = self.encoders[self.keys[key]]
        return encoder.forward_tokens(x) if self.tokens else self._encode(key, encoder, x)

    def _fuse(self, emb: dict[str, Any], observations: dict[str, torch.Tensor]) -> torch.Tensor:
        if type(self.fusion) is EarlyFusion:  # every input is present: its concatenation, without the `where`s
            return self.fused_norm(torch.cat([emb[k] for k in self.fusion.names], dim=-1))
        first = next(iter(observations.values()))
        present = torch.ones(first.shape[0], len(self.names), dtype=torch.bool, device=first.device)
        return self.fused_norm(self.fusion(emb, present))


def vocabulary_from_model(folder: str | Path, input_name: str) -> Vocabulary:
    """The text vocabulary a polymodal model folder was trained with, to tokenize observations for transfer."""
    from polymodal.model.artifact import PREPROCESS, read_json

    state = read_json(Path(folder) / PREPROCESS)["state"]
    if input_name not in state or "vocab" not in state[input_name]:
        raise ObservationError(f"model {folder} has no scratch text input {input_name!r}")
    return Vocabulary(state[input_name]["vocab"], state[input_name]["max_len"])
