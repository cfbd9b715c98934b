"""Reinforcement learning with the polymodal extractor (polymodal.rl): extractor, instruction following with DQN,
save/load, transfer from a polymodal model folder, the set-up errors, the CLI."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from gymnasium import spaces
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.rl import (
    Agent,
    AgentConfig,
    MultimodalExtractor,
    ObservationError,
    RLSetupError,
    TextTokens,
    Vocabulary,
    train,
)
from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}
# Small encoders keep the tests fast on 2 CPU cores.
TINY = {"image": {"widths": [8, 16]}, "mission": {"embed_dim": 8, "hidden": 16}}


class ColourChoice(gym.Env):
    """A red and a blue square, in random order (left / right); the mission names one colour ("go to the red
    square"). Action 0 = left, 1 = right; reward 1 only for the side of the named colour. One step per episode.
    Neither the image nor the mission alone beats chance: the agent must fuse them."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (8, 8, 3), np.uint8),
                "mission": spaces.Text(40, charset="abcdefghijklmnopqrstuvwxyz "),
            }
        )
        self.action_space = spaces.Discrete(2)

    def _obs(self) -> dict:
        img = np.zeros((8, 8, 3), np.uint8)
        img[2:6, 0:4] = COLOURS[self.order[0]]
        img[2:6, 4:8] = COLOURS[self.order[1]]
        return {"image": img, "mission": f"go to the {self.target} square"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.order = ["red", "blue"] if self.np_random.integers(2) else ["blue", "red"]
        self.target = str(self.np_random.choice(["red", "blue"]))
        return self._obs(), {}

    def step(self, action):
        ok = self.order[int(action)] == self.target
        return self._obs(), float(ok), True, False, {"is_success": ok}


gym.register("PolymodalColourChoice-v0", entry_point=ColourChoice)
gym.register("PolymodalColourChoiceBox-v0", entry_point=ColourChoice)  # same observations, used with Box actions


def _cfg(**kw) -> AgentConfig:
    base = dict(
        env_id="PolymodalColourChoice-v0", algo="dqn", steps=1500, embed_dim=16, hidden=32, eval_every=500,
        eval_episodes=100, vocab_resets=40, encoder_kwargs=TINY, net_arch=[32],
        hyperparameters={"learning_starts": 200, "train_freq": 2, "target_update_interval": 200,
                         "exploration_fraction": 0.4, "learning_rate": 2e-3, "batch_size": 32},
    )  # fmt: skip
    return AgentConfig(**{**base, **kw})


def _space() -> spaces.Dict:
    return spaces.Dict(
        {
            "image": spaces.Box(0, 255, (3, 8, 8), np.uint8),
            "mission": spaces.Box(0, 9, (6,), np.int64),
            "vector": spaces.Box(-1.0, 1.0, (5,), np.float32),
            "direction": spaces.Discrete(4),
        }
    )


@pytest.mark.parametrize("fusion", ["early", "attention", "late"])
def test_extractor_shape_and_gradient_flow(fusion):
    from stable_baselines3.common.preprocessing import preprocess_obs

    space = _space()
    ext = MultimodalExtractor(space, fusion=fusion, embed_dim=16, hidden=24, encoder_kwargs=TINY)
    obs = {k: torch.as_tensor(np.stack([space[k].sample() for _ in range(6)])) for k in space.spaces}
    feats = ext(preprocess_obs(obs, space))
    assert feats.shape == (6, ext.features_dim)
    # The light RL encoders by default (polymodal.rl.encoders): a small grid, a short mission, a category.
    assert {type(e).__name__ for e in ext.encoders.values()} == {
        "GridEncoder", "MissionEncoder", "NumericMLP", "CategoryEncoder"
    }  # fmt: skip
    feats.pow(2).sum().backward()
    for key, enc in ext.encoders.items():
        grads = [p.grad for p in enc.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), key
        assert sum(float(g.abs().sum()) for g in grads) > 0, key


@pytest.mark.parametrize("fusion", ["film", "relation", "token_transformer"])
def test_extractor_with_token_level_fusion(fusion):
    """The token fusions read the encoders' tokens (image regions, mission words, one token per vector/category):
    the output has the fusion's width and every encoder learns through it."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    space = _space()
    ext = MultimodalExtractor(space, fusion=fusion, embed_dim=16, hidden=24, encoder_kwargs=TINY)
    assert ext.tokens and hasattr(ext.encoders[ext.keys["image"]], "token_proj")
    obs = {k: torch.as_tensor(np.stack([space[k].sample() for _ in range(6)])) for k in space.spaces}
    feats = ext(preprocess_obs(obs, space))
    assert feats.shape == (6, ext.features_dim) and torch.isfinite(feats).all()
    feats.pow(2).sum().backward()
    for key, enc in ext.encoders.items():
        assert sum(float(p.grad.abs().sum()) for p in enc.parameters() if p.grad is not None) > 0, key
    # The mission decides: the same views with other missions give other features.
    other = dict(obs, mission=torch.as_tensor(np.stack([space["mission"].sample() for _ in range(6)])))
    ext.eval()
    with torch.no_grad():
        assert not torch.allclose(ext(preprocess_obs(obs, space)), ext(preprocess_obs(other, space)))


def test_encoder_arch_picks_the_library_encoders_and_old_policy_folders_load(tmp_path, one_torch_thread):
    """`arch` gives the library's ImageCNN / TextRNN / CategoricalMLP (the defaults before the light encoders); a
    policy folder saved in the format before them (no `arch` in its config) loads into the encoders it was built
    with; an arch that does not fit the key is refused."""
    space = _space()
    legacy = {"image": {"arch": "cnn", "widths": [8]}, "mission": {"arch": "rnn"}, "direction": {"arch": "mlp"}}
    ext = MultimodalExtractor(space, embed_dim=16, hidden=24, encoder_kwargs=legacy)
    assert {type(e).__name__ for e in ext.encoders.values()} == {"ImageCNN", "TextRNN", "NumericMLP", "CategoricalMLP"}
    big = spaces.Dict({"image": spaces.Box(0, 255, (3, 32, 32), np.uint8)})  # beyond a small grid: the CNN
    assert type(MultimodalExtractor(big).encoders["i0_image"]).__name__ == "ImageCNN"
    with pytest.raises(ObservationError, match="arch 'rnn'"):
        MultimodalExtractor(space, encoder_kwargs={"image": {"arch": "rnn"}})

    kw = {"image": {"arch": "cnn", "widths": [8]}, "mission": {"arch": "rnn", "embed_dim": 8, "hidden": 16}}
    agent = train(_cfg(steps=300, eval_every=300, eval_episodes=5, encoder_kwargs=kw))
    folder = agent.save(tmp_path / "old")
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["format"] == "polymodal-rl/2"
    meta["format"] = "polymodal-rl/1"
    meta["config"]["encoder_kwargs"] = {k: {n: v for n, v in d.items() if n != "arch"} for k, d in kw.items()}
    (folder / "policy.json").write_text(json.dumps(meta))
    loaded = Agent.load(folder)  # strict: every saved weight fits the rebuilt encoders
    encoders = loaded.model.policy.q_net.features_extractor.encoders
    assert {type(e).__name__ for e in encoders.values()} == {"ImageCNN", "TextRNN"}
    obs = {k: np.asarray(v)[None] for k, v in agent.make_env().reset(seed=3)[0].items()}
    assert loaded.predict(obs) == agent.predict(obs)


def test_symbolic_grid_codes_are_embedded_not_read_as_intensities():
    """MiniGrid's view holds codes (object, colour, state) in a uint8 Box that SB3 divides by 255: with
    `codes`, the extractor gets the integers back and each cell is the sum of its channels' code embeddings."""
    from stable_baselines3.common.preprocessing import preprocess_obs

    space = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "d": spaces.Discrete(4)})
    for arch in ("grid", "cnn"):  # the light grid encoder (cells: b, h, w, e) and ImageCNN (b, e, h, w)
        ext = MultimodalExtractor(space, encoder_kwargs={"image": {"codes": 11, "arch": arch}})
        enc = ext.encoders[ext.keys["image"]]
        cells = enc._map if arch == "grid" else (lambda x, enc=enc: enc._cells(x).permute(0, 2, 3, 1))
        grid = np.random.default_rng(0).integers(0, 11, (2, 7, 7, 3)).astype(np.uint8)
        x = ext._adapt("image", preprocess_obs({"image": torch.as_tensor(grid)}, space)["image"])
        assert torch.equal(x, torch.as_tensor(grid).permute(0, 3, 1, 2).float())  # the codes, channels first
        table = enc.cell_embed.weight
        expected = table[grid[1, 4, 2, 0]] + table[11 + grid[1, 4, 2, 1]] + table[22 + grid[1, 4, 2, 2]]
        assert torch.allclose(cells(x)[1, 4, 2], expected)
        # A key (5) and a ball (6) of the same colour are different embeddings, not intensities 1/255 apart.
        a, b = x.clone(), x.clone()
        a[0, 0, 3, 3], b[0, 0, 3, 3] = 5, 6
        assert (cells(a) - cells(b)).abs().max() > 0.1


def test_channels_last_image_and_discrete_ids():
    space = spaces.Dict({"image": spaces.Box(0.0, 1.0, (8, 8, 3), np.float32), "d": spaces.Discrete(3)})
    ext = MultimodalExtractor(space, encoder_kwargs=TINY)
    assert ext.plans["image"].channels_last and ext.plans["image"].spec["channels"] == 3
    one_hot = torch.eye(3)[[2, 0]]
    assert ext._adapt("d", one_hot).tolist() == [[4], [2]]  # 0 = missing, 1 = unseen, values from 2
    assert ext._adapt("image", torch.zeros(2, 8, 8, 3)).shape == (2, 3, 8, 8)


def test_dqn_learns_the_instruction_a_blind_policy_cannot_and_save_load_acts_identically(tmp_path, one_torch_thread):
    agent = train(_cfg())
    blind = train(_cfg(hide=["mission"]))
    seen = agent.evaluate(200)["success_rate"]
    unseen = blind.evaluate(200)["success_rate"]
    assert seen >= 0.95, agent.history
    assert unseen <= 0.65, blind.history  # chance is 0.5; 200 episodes: 0.65 is 4 standard deviations above
    assert len(agent.history) >= 3 and agent.history[0]["steps"] == 0

    folder = agent.save(tmp_path / "policy")
    assert {p.name for p in folder.iterdir()} >= {"policy.safetensors", "policy.json", "vocab.json", "curve.png"}
    assert not [p for p in folder.rglob("*") if p.suffix in (".zip", ".pkl", ".pt")]
    meta = json.loads((folder / "policy.json").read_text())
    assert meta["config"]["algo"] == "dqn" and meta["observation_space"]["spaces"]["mission"]["type"] == "Box"
    loaded = Agent.load(folder)
    assert loaded.vocab.words == agent.vocab.words
    env = agent.make_env()
    for i in range(40):
        obs, _ = env.reset(seed=500 + i)
        assert loaded.predict(obs) == agent.predict(obs)
        q = agent.model.q_net(agent.model.policy.obs_to_tensor(obs)[0])
        q2 = loaded.model.q_net(loaded.model.policy.obs_to_tensor(obs)[0])
        assert torch.equal(q, q2)
    assert loaded.evaluate(50) == agent.evaluate(50)


def test_film_agent_learns_the_instruction(one_torch_thread):
    """A token-level fusion inside the policy: FiLM (the mission scales and shifts the image's feature maps) with
    DQN learns the instructed task as the pooled fusion does."""
    agent = train(_cfg(fusion="film", hidden=16))
    assert agent.evaluate(200)["success_rate"] >= 0.9, agent.history


def test_text_tokens_wrapper_and_vocabulary():
    vocab = Vocabulary.build(["go to the red square", "go to the blue square"])
    env = TextTokens(ColourChoice(), vocab)
    obs, _ = env.reset(seed=0)
    assert env.observation_space["mission"].shape == (vocab.max_len,)
    assert obs["mission"].dtype == np.int64 and env.observation_space["mission"].contains(obs["mission"])
    assert vocab.encode("go to the green square").tolist()[:5] == vocab.encode("go to the zzz square").tolist()[:5]
    assert 1 in vocab.encode("go to the green square").tolist()  # unknown word -> 1
    assert Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict()))).encode("the red").tolist() == (
        vocab.encode("the red").tolist()
    )


def test_observation_key_it_cannot_encode():
    bad = spaces.Dict({"image": spaces.Box(0, 255, (8, 8, 3), np.uint8), "pair": spaces.Tuple((spaces.Discrete(2),))})
    with pytest.raises(ObservationError, match=r"observation key 'pair' has a Tuple space.*DropKeys"):
        MultimodalExtractor(bad)
    with pytest.raises(ObservationError, match=r"'mission' is a Text space.*TextTokens"):
        MultimodalExtractor(spaces.Dict({"mission": spaces.Text(10)}))
    with pytest.raises(ObservationError, match=r"'video' is a Box of shape \(2, 3, 8, 8\)"):
        MultimodalExtractor(spaces.Dict({"video": spaces.Box(0, 1, (2, 3, 8, 8))}))
    with pytest.raises(ObservationError, match="unknown fusion 'nope'"):
        MultimodalExtractor(_space(), fusion="nope")


def test_action_space_and_env_id_errors_before_training(tmp_path):
    with pytest.raises(RLSetupError, match=r"DQN cannot act in 'Pendulum-v1'.*Box.*takes Discrete.*--algo ppo"):
        train(AgentConfig("Pendulum-v1", algo="dqn", steps=10))
    with pytest.raises(RLSetupError, match=r"unknown gymnasium env id 'CartPol-v1'; close ids: .*CartPole-v1"):
        train(AgentConfig("CartPol-v1", algo="ppo", steps=10))
    with pytest.raises(RLSetupError, match="unknown algorithm 'sac'"):
        AgentConfig("CartPole-v1", algo="sac")
    out = tmp_path / "never"
    r = CliRunner().invoke(app, ["rl", "train", "--env", "Pendulum-v1", "--algo", "dqn", "-o", str(out)])
    assert r.exit_code == 2 and "DQN cannot act" in r.output and not out.exists()


def test_cli_train_and_evaluate_on_a_tiny_env(tmp_path):
    out = tmp_path / "rl1"
    r = CliRunner().invoke(app, [
        "rl", "train", "--env", "PolymodalColourChoice-v0", "--algo", "ppo", "--steps", "256", "--n-envs", "2",
        "--fusion", "attention", "--embed-dim", "16", "--eval-every", "128", "--eval-episodes", "10",
        "--param", "n_steps=64", "--param", "batch_size=64", "--param", "n_epochs=1", "-o", str(out), "--no-progress",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "saved policy" in r.output
    assert (out / "curve.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["steps"] for h in metrics["history"]][0] == 0 and metrics["history"][-1]["steps"] >= 256
    # PPO: the last evaluation's episodes again with sampled actions, beside the most probable ones
    assert metrics["final_sampled"]["episodes"] == 10 and "sampled actions" in r.output
    meta = json.loads((out / "policy.json").read_text())
    assert meta["config"]["fusion"] == "attention" and meta["hyperparameters"]["n_steps"] == 64
    r = CliRunner().invoke(app, ["rl", "evaluate", str(out), "--episodes", "20"])
    assert r.exit_code == 0, r.output
    assert '"episodes": 20' in r.output and "success" in r.output and "deterministic actions" in r.output
    sampled = [CliRunner().invoke(app, ["rl", "evaluate", str(out), "--episodes", "20", "--sample"]) for _ in "ab"]
    assert sampled[0].exit_code == 0 and "sampled actions" in sampled[0].output, sampled[0].output
    assert sampled[0].output == sampled[1].output  # seeded: the same episodes and the same sampled actions
    from polymodal.rl import Agent

    agent = Agent.load(out)
    torch.manual_seed(5), np.random.seed(5)
    untouched = (torch.rand(1).item(), np.random.rand())
    torch.manual_seed(5), np.random.seed(5)
    agent.evaluate(5, seed=7, deterministic=False)
    assert (torch.rand(1).item(), np.random.rand()) == untouched  # evaluation leaves training's randomness alone

    # The same settings from the config tree's rl section; a flag and --set override the file.
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({"rl": {
        "env_id": "PolymodalColourChoice-v0", "algo": "ppo", "steps": 128, "n_envs": 2, "fusion": "attention",
        "embed_dim": 16, "eval_every": 128, "eval_episodes": 5,
        "hyperparameters": {"n_steps": 64, "batch_size": 64, "n_epochs": 1},
    }}))  # fmt: skip
    out2 = tmp_path / "rl2"
    r = CliRunner().invoke(app, ["rl", "train", "--config", str(cfg), "--fusion", "gmu", "--set", "rl.embed_dim=8",
                                 "-o", str(out2), "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((out2 / "policy.json").read_text())["config"]
    assert (meta["fusion"], meta["embed_dim"], meta["steps"], meta["hyperparameters"]["n_steps"]) == ("gmu", 8, 128, 64)
    r = CliRunner().invoke(app, ["rl", "train", "--config", str(cfg), "--set", "rl.stepz=5", "-o", str(out2)])
    assert r.exit_code == 2 and "rl.steps" in r.output, r.output
    r = CliRunner().invoke(app, ["rl", "train", "-o", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--env" in r.output, r.output


def test_transfer_encoders_from_a_polymodal_model(tmp_path):
    """Pretrain a text model (mission -> colour), then build the agent's mission encoder from its folder."""
    from polymodal import MultimodalPredictor

    rng = np.random.default_rng(0)
    colours = rng.choice(["red", "blue"], 60)
    df = pd.DataFrame({"mission": [f"go to the {c} square" for c in colours], "y": colours})
    model = MultimodalPredictor(label="y", embed_dim=16, hidden=16, max_epochs=1, batch_size=32)
    model.fit(df).save(tmp_path / "model")
    weights = {k: v for k, v in model.engine.net.state_dict().items() if k.startswith("encoders.")}

    cfg = _cfg(steps=300, model=str(tmp_path / "model"), transfer={"mission": "mission"}, freeze=True, eval_every=300)
    agent = train(cfg)
    ext = agent.model.policy.q_net.features_extractor
    text = ext.encoders[ext.keys["mission"]]
    assert type(text).__name__ == "TextRNN" and not any(p.requires_grad for p in text.parameters())
    for name, value in text.state_dict().items():  # frozen: still the model's weights after training
        assert torch.equal(value, next(v for k, v in weights.items() if k.endswith(name)))
    assert (
        agent.vocab.words
        == json.loads((tmp_path / "model" / "preprocess.json").read_text())["state"]["mission"]["vocab"]
    )
    folder = agent.save(tmp_path / "policy")
    assert (folder / "transfer_model" / "model.safetensors").exists()
    env, loaded = agent.make_env(), Agent.load(folder)
    for i in range(10):
        obs, _ = env.reset(seed=i)
        assert loaded.predict(obs) == agent.predict(obs)

    trainable = MultimodalExtractor(
        agent.make_env().observation_space, model=str(tmp_path / "model"), transfer={"mission": "mission"},
        freeze=False, encoder_kwargs=TINY,
    )  # fmt: skip
    assert all(p.requires_grad for p in trainable.encoders[trainable.keys["mission"]].parameters())
    # A token-level fusion over a pooled model's encoder: its weights load and stay frozen, the new token
    # projection (the only part the model does not have) learns.
    film = MultimodalExtractor(
        agent.make_env().observation_space, fusion="film", model=str(tmp_path / "model"),
        transfer={"mission": "mission"}, freeze=True, encoder_kwargs=TINY,
    )  # fmt: skip
    text = film.encoders[film.keys["mission"]]
    assert {n.split(".")[0] for n, p in text.named_parameters() if p.requires_grad} == {"token_proj"}
    for name, value in text.state_dict().items():
        if not name.startswith("token_proj."):
            assert torch.equal(value, next(v for k, v in weights.items() if k.endswith(name)))
    # A folder whose weights no longer fit the encoder (edited or damaged): named, with the fix.
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "model", damaged)
    state = load_file(str(damaged / "model.safetensors"))
    key = next(k for k in state if k.startswith("encoders.") and k.endswith("embed.weight"))
    save_file({k: v for k, v in state.items() if k != key}, str(damaged / "model.safetensors"))
    with pytest.raises(
        ObservationError, match=r"weights of input 'mission' do not fit.*missing \['embed.weight'\].*save"
    ):
        MultimodalExtractor(agent.make_env().observation_space, model=str(damaged), transfer={"mission": "mission"})
    with pytest.raises(ObservationError, match="no input 'caption'"):
        MultimodalExtractor(
            agent.make_env().observation_space, model=str(tmp_path / "model"), transfer={"mission": "caption"}
        )


def _env(cfg: AgentConfig) -> gym.Env:
    return make_env(cfg, build_vocabulary(cfg))


def test_linear_learning_rate_schedule_and_relu_policy_build_and_reload(tmp_path, one_torch_thread):
    hp = {"lr_schedule": "linear", "activation": "relu", "n_steps": 64, "batch_size": 32, "n_epochs": 1}
    cfg = _cfg(algo="ppo", steps=256, n_envs=1, eval_every=10**6, hyperparameters=hp)
    agent = train(cfg)
    assert agent.model.lr_schedule(0.5) == pytest.approx(7e-4 * 0.5)  # progress remaining 1 -> 0
    assert agent.model.policy.optimizer.param_groups[0]["lr"] == 0.0  # SB3's last update comes at progress 0
    loaded = Agent.load(agent.save(tmp_path / "p"))
    assert loaded.model.lr_schedule(0.25) == pytest.approx(7e-4 * 0.25)
    for a in (agent, loaded):
        acts = {type(m).__name__ for m in a.model.policy.mlp_extractor.modules()}
        assert "ReLU" in acts and "Tanh" not in acts
    tanh = _cfg(algo="ppo", hyperparameters={**hp, "activation": "tanh"})
    assert "Tanh" in {type(m).__name__ for m in build_algorithm(tanh, _env(tanh), tanh.params()).policy.modules()}
    with pytest.raises(RLSetupError, match="lr_schedule must be 'constant' or 'linear'"):
        AgentConfig("CartPole-v1", algo="ppo", hyperparameters={"lr_schedule": "cosine"})
    with pytest.raises(RLSetupError, match="activation must be one of"):
        AgentConfig("CartPole-v1", algo="ppo", hyperparameters={"activation": "gelu"})


def test_keep_best_ends_on_the_best_evaluations_weights(tmp_path, one_torch_thread, monkeypatch):
    """Training's last weights can sit in a dip: with `keep_best` (the default) the policy ends on the weights of its
    best periodic evaluation, which evaluate to that point again; `keep_best=False` keeps the last ones."""
    import polymodal.rl.agent as agent_module
    from polymodal.rl.curves import EVAL_SEED

    built = []

    def capture(*args, **kwargs):
        built.append(agent_module_build(*args, **kwargs))
        return built[-1]

    def spoil(point: dict) -> None:
        # After the evaluation at 1,000 steps the Q-network's weights turn to NaN: every later point is worse.
        if point["steps"] == 1000:
            with torch.no_grad():
                for p in built[-1].policy.parameters():
                    p.fill_(float("nan"))

    agent_module_build = agent_module.build_algorithm
    monkeypatch.setattr(agent_module, "build_algorithm", capture)
    cfg = dict(steps=1500, eval_every=500, eval_episodes=40)
    agent = train(_cfg(**cfg), on_eval=spoil)
    points = [(h["steps"], h["success_rate"]) for h in agent.history]
    assert built[-1].logger.get_dir() is None  # SB3's default logger would have made a /tmp/SB3-<time> folder
    assert points[2] == (1000, 1.0) and points[-1][1] < 1.0, points
    assert agent.kept["restored"] is True and agent.kept["point"]["steps"] == 1000  # the later of two 1.0 points
    again = agent.evaluate(40, seed=EVAL_SEED)
    assert again["success_rate"] == 1.0 and again["mean_return"] == agent.kept["point"]["mean_return"]
    folder = agent.save(tmp_path / "best")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["final"]["steps"] == 1000 and metrics["kept"]["restored"] is True
    loaded = Agent.load(folder)
    assert loaded.kept == agent.kept and loaded.evaluate(40, seed=EVAL_SEED) == again

    last = train(_cfg(keep_best=False, **cfg), on_eval=spoil)
    assert last.kept == {} and last.evaluate(40, seed=EVAL_SEED)["success_rate"] == last.history[-1]["success_rate"]
    assert last.history[-1]["success_rate"] < 1.0
