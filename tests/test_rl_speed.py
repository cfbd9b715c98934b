"""The RL extractor's fast paths (polymodal.rl.extractor: distinct rows encoded once, the symbolic-cell CNN, early
fusion as a concatenation) compute what the plain modules compute: same outputs and gradients for the same weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs

from polymodal.encoders import ImageCNN
from polymodal.rl import MultimodalExtractor
from polymodal.rl.extractor import _HASH, unique_rows

SPACE = spaces.Dict({
    "direction": spaces.Discrete(4),
    "image": spaces.Box(0, 255, (7, 7, 3), np.uint8),
    "mission": spaces.Box(0, 11, (6,), np.int64),
})  # fmt: skip


def plain_forward(ext: MultimodalExtractor, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The extractor as it was computed before its fast paths: every row through every encoder's own forward (the
    image CNN as ImageCNN), then the fusion module with every input present."""
    emb = {}
    for k in ext.names:
        encoder, x = ext.encoders[ext.keys[k]], ext._adapt(k, obs[k])
        emb[ext.keys[k]] = ImageCNN.forward(encoder, x) if isinstance(encoder, ImageCNN) else encoder(x)
    present = torch.ones(len(obs["image"]), len(ext.names), dtype=torch.bool)
    return ext.fused_norm(ext.fusion(emb, present))


def batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Observations with repeats, as in a replay batch: few missions, states seen twice (a state and its next state
    after a no-op)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 11, (n // 2, 7, 7, 3)).astype(np.uint8)
    missions = rng.integers(0, 12, (3, 6))
    missions[:, 4:] = 0  # padded
    pick = rng.integers(0, n // 2, n)
    raw = {"direction": torch.as_tensor(rng.integers(0, 4, n)), "image": torch.as_tensor(images[pick]),
           "mission": torch.as_tensor(missions[rng.integers(0, 3, n)])}  # fmt: skip
    return preprocess_obs(raw, SPACE)


LIBRARY = {"image": {"arch": "cnn"}, "mission": {"arch": "rnn"}}  # ImageCNN, TextRNN: the fast paths' subjects
LIBRARY_CODES = {"image": {"arch": "cnn", "codes": 12, "grid": 7}, "mission": {"arch": "rnn"}}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cnn_norm": "batch", "encoder_kwargs": LIBRARY},  # PPO's: batch statistics, images not deduplicated
        {"cnn_norm": "group", "fused_norm": True, "encoder_kwargs": LIBRARY},  # DQN's
        {"cnn_norm": "group", "fused_norm": True, "encoder_kwargs": LIBRARY_CODES},
        {"cnn_norm": "batch", "fusion": "attention", "encoder_kwargs": LIBRARY_CODES},
        {"fused_norm": True},  # the light encoders (the defaults): distinct images encoded once
        {"fused_norm": True, "encoder_kwargs": {"image": {"codes": 12, "widths": [8]}}},
    ],
)
def test_fast_forward_and_backward_match_the_plain_modules(one_torch_thread, kwargs):
    torch.manual_seed(0)
    ext = MultimodalExtractor(SPACE, embed_dim=16, hidden=32, **kwargs)
    library = "encoder_kwargs" in kwargs and "arch" in kwargs["encoder_kwargs"]["image"]
    assert isinstance(ext.encoders[ext.keys["image"]], ImageCNN) == library
    ref = copy.deepcopy(ext)
    obs = batch(64, seed=1)
    for training in (True, False):
        ext.train(training), ref.train(training)
        ext.zero_grad(), ref.zero_grad()
        weights = torch.randn(64, ext.features_dim, generator=torch.Generator().manual_seed(2))
        got, want = ext(obs), plain_forward(ref, obs)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
        (got * weights).sum().backward()
        (want * weights).sum().backward()
        grads = dict(ref.named_parameters())
        for name, p in ext.named_parameters():
            g_ref = grads[name].grad
            if p.grad is None:  # early fusion's `missing` vectors: no gradient instead of a zero one
                assert g_ref is None or not g_ref.any(), name
                continue
            scale = float(g_ref.abs().max()) + 1e-3  # float sums in another order: relative to the gradient's size
            assert (p.grad - g_ref).abs().max() <= 1e-5 * scale, (name, (p.grad - g_ref).abs().max(), scale)
        with torch.no_grad():  # acting: one observation, and again from the mission cache
            one = {k: v[:1] for k, v in obs.items()}
            for _ in range(2):
                assert torch.allclose(ext(one), plain_forward(ref, one), atol=1e-5, rtol=1e-4)


def test_unique_rows_is_exact_even_when_the_hash_collides(one_torch_thread, monkeypatch):
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.integers(0, 3, (40, 2, 3)).astype(np.float32))
    uniq, inverse = unique_rows(x)
    assert inverse is not None and len(uniq) == len(torch.unique(x.flatten(1), dim=0))
    assert torch.equal(uniq[inverse], x)
    distinct = torch.arange(12.0).reshape(4, 3)
    assert unique_rows(distinct)[1] is None
    monkeypatch.setitem(_HASH, (6, "cpu"), torch.zeros(6, dtype=torch.long))  # every row hashes to 0
    uniq, inverse = unique_rows(x)
    assert torch.equal(uniq[inverse], x) and len(uniq) == len(torch.unique(x.flatten(1), dim=0))
    ids = torch.as_tensor(rng.integers(0, 5, (30, 4)))
    uniq, inverse = unique_rows(ids)
    assert torch.equal(uniq[inverse], ids)
