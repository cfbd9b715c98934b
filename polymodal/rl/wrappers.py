"""Gymnasium observation wrappers that make any env's observation a `Dict` the extractor can encode.

- `TextTokens`: every `Text` entry (MiniGrid/BabyAI's `mission`) -> fixed-length token ids (`Box` of int64) with
  a `Vocabulary` that is saved beside the policy, so a loaded policy tokenizes exactly as in training.
- `AsDict`: a non-`Dict` observation becomes `{"obs": ...}` (SB3's MultiInputPolicy wants a `Dict`).
- `DropKeys`: hide keys from the agent (the benchmark's policy blind to the instruction).
- `BagOfWords`: a `Text` entry -> a word-count vector, and uint8 images -> float (the benchmark's baseline with
  SB3's own CombinedExtractor, which would otherwise need images of at least 36x36 pixels for its NatureCNN).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from polymodal.errors import UserError
from polymodal.preprocess import PAD, UNK, tokenize


class Vocabulary:
    """Words -> ids with polymodal's text convention (0 = padding, 1 = unknown word, words from 2), a fixed length."""

    def __init__(self, words: list[str], max_len: int):
        self.words = list(words)
        self.max_len = int(max_len)
        self._index = {w: i + 2 for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], max_len: int | None = None, slack: int = 2) -> Vocabulary:
        """From sample texts (e.g. the missions of a few hundred resets): every word seen, most frequent first."""
        texts = list(texts)
        counts = Counter(tok for t in texts for tok in tokenize(t))
        longest = max((len(tokenize(t)) for t in texts), default=1)
        return cls([w for w, _ in counts.most_common()], max_len or longest + slack)

    @property
    def size(self) -> int:
        return len(self.words) + 2

    def encode(self, text: str) -> np.ndarray:
        ids = [self._index.get(t, UNK) for t in tokenize(str(text))][: self.max_len]
        out = np.full(self.max_len, PAD, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "max_len": self.max_len, "pad_id": PAD, "unk_id": UNK}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        return cls(d["words"], d["max_len"])


def is_text_space(space: spaces.Space) -> bool:
    """gymnasium's Text, or MiniGrid's MissionSpace and its subclasses (BabyAI's BabyAIMissionSpace): spaces of
    strings that are not Text subclasses. Matched by class name along the MRO, so minigrid need not be imported."""
    return isinstance(space, spaces.Text) or any(c.__name__ == "MissionSpace" for c in type(space).__mro__)


def text_keys(space: spaces.Space) -> list[str]:
    return [k for k, s in space.spaces.items() if is_text_space(s)] if isinstance(space, spaces.Dict) else []


def sample_texts(env: gym.Env, resets: int = 200, seed: int = 0) -> list[str]:
    """The `Text` observations of `resets` fresh episodes: what the vocabulary is built from."""
    keys = text_keys(env.observation_space)
    texts = []
    for i in range(resets if keys else 0):
        obs, _ = env.reset(seed=seed + i)
        texts += [str(obs[k]) for k in keys]
    return texts


class TextTokens(gym.ObservationWrapper):
    """Each `Text` entry of a `Dict` observation -> `Box(0, vocab.size - 1, (max_len,), int64)` token ids."""

    def __init__(self, env: gym.Env, vocab: Vocabulary):
        super().__init__(env)
        self.vocab = vocab
        self.keys = text_keys(env.observation_space)
        ids = spaces.Box(0, vocab.size - 1, (vocab.max_len,), np.int64)
        self.observation_space = spaces.Dict(
            {k: ids if k in self.keys else s for k, s in env.observation_space.spaces.items()}
        )

    def observation(self, obs: dict) -> dict:
        return {k: self.vocab.encode(v) if k in self.keys else v for k, v in obs.items()}


class AsDict(gym.ObservationWrapper):
    """A single observation space -> `Dict({"obs": space})`."""

    def __init__(self, env: gym.Env, key: str = "obs"):
        super().__init__(env)
        self.key = key
        self.observation_space = spaces.Dict({key: env.observation_space})

    def observation(self, obs: Any) -> dict:
        return {self.key: obs}


class DropKeys(gym.ObservationWrapper):
    def __init__(self, env: gym.Env, keys: list[str]):
        super().__init__(env)
        missing = [k for k in keys if k not in env.observation_space.spaces]
        if missing:
            raise UserError(f"cannot hide observation keys {missing}: the env has {list(env.observation_space.spaces)}")
        self.keys = set(keys)
        self.observation_space = spaces.Dict(
            {k: s for k, s in env.observation_space.spaces.items() if k not in self.keys}
        )

    def observation(self, obs: dict) -> dict:
        return {k: v for k, v in obs.items() if k not in self.keys}


class BagOfWords(gym.ObservationWrapper):
    """`Text` entries -> word counts over `vocab` (float), uint8 images -> float32 (flattened by SB3's default)."""

    def __init__(self, env: gym.Env, vocab: Vocabulary):
        super().__init__(env)
        self.vocab = vocab
        self.keys = text_keys(env.observation_space)
        out = {}
        for k, s in env.observation_space.spaces.items():
            if k in self.keys:
                out[k] = spaces.Box(0.0, float(vocab.max_len), (vocab.size,), np.float32)
            elif isinstance(s, spaces.Box) and s.dtype == np.uint8:
                out[k] = spaces.Box(s.low.astype(np.float32), s.high.astype(np.float32), s.shape, np.float32)
            else:
                out[k] = s
        self.observation_space = spaces.Dict(out)

    def observation(self, obs: dict) -> dict:
        out = {}
        for k, v in obs.items():
            if k in self.keys:
                out[k] = np.bincount(self.vocab.encode(v), minlength=self.vocab.size).astype(np.float32)
                out[k][PAD] = 0.0
            else:
                out[k] = np.asarray(v, dtype=np.float32) if self.observation_space[k].dtype == np.float32 else v
        return out
