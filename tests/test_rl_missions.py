"""Every mission space is text: BabyAI's levels (BabyAIMissionSpace, a subclass of MiniGrid's MissionSpace) train
with `polymodal rl train` like the MiniGrid levels do (issue 28, part 0)."""

from __future__ import annotations

import json

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid and BabyAI envs)
import pytest
from gymnasium import spaces
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.rl.wrappers import is_text_space

LEVELS = ["BabyAI-GoToObj-v0", "BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-PutNextLocal-v0"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_text_spaces_are_recognised_whatever_their_class():
    env = gym.make("BabyAI-GoToObj-v0")
    mission = env.observation_space["mission"]
    assert type(mission).__name__ == "BabyAIMissionSpace" and is_text_space(mission)
    assert is_text_space(gym.make("MiniGrid-Fetch-5x5-N2-v0").observation_space["mission"])
    assert is_text_space(spaces.Text(20))
    assert not is_text_space(spaces.Discrete(3)) and not is_text_space(spaces.Box(0, 1, (2,)))


@pytest.mark.parametrize("level", LEVELS)
def test_rl_train_runs_on_babyai_levels(level, tmp_path):
    out = tmp_path / "rl"
    r = CliRunner().invoke(app, [
        "rl", "train", "--env", level, "--algo", "ppo", "--steps", "256", "--n-envs", "2", "--embed-dim", "16",
        "--eval-every", "256", "--eval-episodes", "2", "--param", "n_steps=64", "--param", "batch_size=64",
        "--param", "n_epochs=1", "-o", str(out), "--no-progress",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "policy.json").read_text())
    assert "mission" in json.dumps(meta["observation_space"])  # the mission was an input, as token ids
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["steps"] >= 256
