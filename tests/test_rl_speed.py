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


RAW_SPACE = spaces.Dict({
    "direction": spaces.Discrete(4),
    "image": spaces.Box(0, 255, (7, 7, 3), np.uint8),  # channels last: SB3's VecTransposeImage is not applied here
    "pixels": spaces.Box(0, 255, (3, 10, 10), np.uint8),  # intensities: SB3 divides them by 255
    "mission": spaces.Box(0, 11, (6,), np.int64),
    "flags": spaces.MultiDiscrete([3, 2]),
    "speed": spaces.Box(-1.0, 1.0, (2,), np.float32),
})  # fmt: skip


def raw_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """What a replay buffer hands back: each key in its space's dtype (Discrete as (n, 1))."""
    rng = np.random.default_rng(seed)
    return {
        "direction": torch.as_tensor(rng.integers(0, 4, (n, 1))),
        "image": torch.as_tensor(rng.integers(0, 11, (n, 7, 7, 3)).astype(np.uint8)),
        "pixels": torch.as_tensor(rng.integers(0, 256, (n, 3, 10, 10)).astype(np.uint8)),
        "mission": torch.as_tensor(rng.integers(0, 12, (n, 6))),
        "flags": torch.as_tensor(rng.integers(0, 2, (n, 2))),
        "speed": torch.as_tensor(rng.uniform(-1, 1, (n, 2)).astype(np.float32)),
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fused_norm": True, "encoder_kwargs": {"image": {"codes": 12}}},  # the DQN defaults' light encoders
        {"fusion": "attention", "encoder_kwargs": {"image": {"codes": 12, "widths": [8]}}},
        {"fusion": "relation", "encoder_kwargs": {"image": {"codes": 12}}},  # tokens: no one-hot shortcut
        {"encoder_kwargs": {"image": {"arch": "cnn", "codes": 12, "grid": 7}, "mission": {"arch": "rnn"}}},
    ],
)
def test_raw_observations_give_the_features_of_preprocessed_ones(one_torch_thread, kwargs):
    """forward_raw (what the DQN policies call: no preprocess_obs) equals forward after SB3's preprocessing, in
    values and gradients, with and without gradients enabled."""
    torch.manual_seed(0)
    ext = MultimodalExtractor(RAW_SPACE, embed_dim=16, hidden=32, cnn_norm="group", **kwargs)
    raw = raw_batch(32, seed=3)
    pre = preprocess_obs(raw, RAW_SPACE)
    for grad in (True, False):
        ext.zero_grad()
        with torch.set_grad_enabled(grad):
            got, want = ext.forward_raw(raw), ext(pre)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
        if grad:
            weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(4))
            (got * weights).sum().backward()
            from_raw = {n: p.grad.clone() for n, p in ext.named_parameters() if p.grad is not None}
            ext.zero_grad()
            (want * weights).sum().backward()
            for name, p in ext.named_parameters():
                if p.grad is None:
                    assert name not in from_raw
                    continue
                scale = float(p.grad.abs().max()) + 1e-3
                assert (from_raw[name] - p.grad).abs().max() <= 1e-5 * scale, name


def test_dqn_policy_reads_raw_observations_and_vectorized_ones_fast(one_torch_thread):
    """The DQN policy's Q-network feeds the extractor raw observations; its obs_to_tensor fast path (a VecEnv's
    arrays) gives SB3's tensors, and anything else still goes through SB3's checks."""
    from stable_baselines3.common.policies import BasePolicy

    from polymodal.rl.dqn import FusedDQNPolicy, FusedQNetwork

    space = spaces.Dict({k: RAW_SPACE[k] for k in ("direction", "mission", "speed")})
    policy = FusedDQNPolicy(space, spaces.Discrete(3), lambda _: 1e-3, features_extractor_class=MultimodalExtractor)
    assert isinstance(policy.q_net, FusedQNetwork)
    raw = {k: v[:5] for k, v in raw_batch(5, seed=5).items() if k in space.spaces}
    ext = policy.q_net.features_extractor
    with torch.no_grad():
        want = policy.q_net.q_net(ext(preprocess_obs(raw, space)))
        assert torch.allclose(policy.q_net(raw), want, atol=1e-6)
    arrays = {
        "direction": np.array([2, 0]),
        "mission": np.ones((2, 6), np.int64),
        "speed": np.zeros((2, 2), np.float32),
    }
    fast, vectorized = policy.obs_to_tensor(arrays)
    slow, slow_vectorized = BasePolicy.obs_to_tensor(policy, arrays)
    assert vectorized and slow_vectorized
    for k in arrays:
        assert fast[k].dtype == slow[k].dtype and torch.equal(fast[k], slow[k]), k
    single = {"direction": np.array(1), "mission": np.ones(6, np.int64), "speed": np.zeros(2, np.float32)}
    tensors, vectorized = policy.obs_to_tensor(single)  # one observation, no batch axis: SB3's path adds it
    assert not vectorized and tensors["mission"].shape == (1, 6) and tensors["direction"].shape == (1,)
