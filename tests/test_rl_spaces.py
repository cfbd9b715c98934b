"""An agent's saved observation and action spaces come back from their JSON as they were, unbounded boxes
included (strict JSON has no infinity: CartPole's velocity bounds once came back as NaN and refused to load)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from polymodal.model.artifact import read_json, write_json
from polymodal.rl.agent import space_from_dict, space_to_dict


def round_trip(space: spaces.Space, tmp_path) -> spaces.Space:
    write_json(tmp_path / "space.json", space_to_dict(space))
    return space_from_dict(read_json(tmp_path / "space.json"))


def test_unbounded_and_bounded_boxes_round_trip(tmp_path):
    cartpole = gym.make("CartPole-v1").observation_space
    back = round_trip(cartpole, tmp_path)
    assert back == cartpole and np.isinf(back.high[1]) and np.isneginf(back.low[3])
    for box in (
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(0, 255, (7, 7, 3), np.uint8),
        spaces.Box(np.array([0.0, -1.0]), np.array([1.0, np.inf]), dtype=np.float64),
    ):
        assert round_trip(box, tmp_path) == box
    nested = spaces.Dict({"image": spaces.Box(0, 10, (7, 7, 3), np.uint8), "speed": cartpole})
    assert round_trip(nested, tmp_path) == nested
