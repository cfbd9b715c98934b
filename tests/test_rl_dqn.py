"""DQN with the polymodal extractor keeps what it learns (issue 28): with the library's DQN defaults it learns an
instructed multi-step task and holds it to the end; its diagnostics are recorded and drawn; `rl report` draws
several runs side by side; the extractor's speed-ups compute what the plain modules compute."""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.rl import AgentConfig, train
from polymodal.rl.agent import DEFAULTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}
LETTERS = "abcdefghijklmnopqrstuvwxyz "


class Corridor(gym.Env):
    """A corridor of 7 cells; its two ends are red and blue in random order, the agent starts in the middle and
    the mission names the end to reach ("go to the red end"). Actions: left, right, stay. Reaching the named end
    pays 1 - 0.5 * t / 12, the other end ends the episode with 0; 12 steps at most. Three steps from the start,
    so the values are learnt by bootstrapping, and `stay` lets a policy that unlearns loop until the limit."""

    LIMIT = 12

    def __init__(self):
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (3, 7, 3), np.uint8),
                "mission": spaces.Text(30, charset="abcdefghijklmnopqrstuvwxyz "),
            }
        )
        self.action_space = spaces.Discrete(3)

    def _obs(self) -> dict:
        img = np.zeros((3, 7, 3), np.uint8)
        img[:, 0], img[:, 6] = COLOURS[self.ends[0]], COLOURS[self.ends[1]]
        img[1, self.pos] = (255, 255, 255)
        return {"image": img, "mission": f"go to the {self.target} end"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ends = ["red", "blue"] if self.np_random.integers(2) else ["blue", "red"]
        self.target = str(self.np_random.choice(["red", "blue"]))
        self.pos, self.t = 3, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.pos += (-1, 1, 0)[int(action)]
        at_end = self.pos in (0, 6)
        ok = at_end and self.ends[self.pos // 6] == self.target
        reward = 1.0 - 0.5 * self.t / self.LIMIT if ok else 0.0
        return self._obs(), reward, at_end, self.t >= self.LIMIT and not at_end, {"is_success": ok}


gym.register("PolymodalCorridor-v0", entry_point=Corridor)
TINY = {"image": {"widths": [8, 16]}, "mission": {"embed_dim": 8, "hidden": 16}}


def _cfg(**kw) -> AgentConfig:
    # Only the size of the run is set here (network widths, budget, evaluation): every DQN setting is the default.
    base = dict(
        env_id="PolymodalCorridor-v0", algo="dqn", steps=6_000, embed_dim=16, hidden=32, eval_every=1_000,
        eval_episodes=60, vocab_resets=40, encoder_kwargs=TINY, net_arch=[32], diagnostics_every=500, seed=1,
    )  # fmt: skip
    return AgentConfig(**{**base, **kw})


def test_dqn_with_default_settings_learns_the_instruction_and_keeps_it(tmp_path):
    cfg = _cfg()
    assert cfg.hyperparameters == {} and cfg.double_q and cfg.fused_norm and cfg.cnn_norm == "group"
    agent = train(cfg)
    curve = [p["success_rate"] for p in agent.history]
    assert max(curve) >= 0.9, curve
    assert curve[-1] >= max(curve) - 0.1, curve  # no collapse: the end holds what the best point had
    assert agent.evaluate(200)["success_rate"] >= 0.85

    # The diagnostics: recorded during training, finite, Q values within what the rewards allow.
    diag = agent.diagnostics
    assert len(diag) >= 10 and diag[-1]["steps"] >= 5_500
    late = diag[-1]
    for key in ("q_taken", "td_error", "loss", "grad_encoders", "grad_fusion", "grad_head", "exploration_rate",
                "buffer_rewarded", "recent_rewarded", "greedy_ties", "q_greedy"):  # fmt: skip
        assert key in late and np.isfinite(late[key]), key
    assert all(abs(p.get("q_greedy", 0.0)) < 1.5 for p in diag), [p.get("q_greedy") for p in diag]
    assert late["exploration_rate"] == pytest.approx(DEFAULTS["dqn"]["exploration_final_eps"])
    assert "bn_mode_gap" not in late  # no BatchNorm in the DQN's CNN by default

    # Saved with the curves and the diagnostics; the report draws this run beside another.
    folder = agent.save(tmp_path / "a")
    assert (folder / "curve.png").stat().st_size > 0 and (folder / "diagnostics.png").stat().st_size > 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert len(metrics["diagnostics"]) == len(diag)
    other = tmp_path / "b"
    other.mkdir()
    hist = [{**p, "success_rate": 0.5} for p in agent.history]
    (other / "metrics.json").write_text(json.dumps({"history": hist, "diagnostics": []}))
    r = CliRunner().invoke(app, ["rl", "report", str(folder), str(other), "-o", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 0
    assert (tmp_path / "rep" / "a.diagnostics.png").exists() and not (tmp_path / "rep" / "b.diagnostics.png").exists()
    bad = CliRunner().invoke(app, ["rl", "report", str(tmp_path), "-o", str(tmp_path / "rep2")])
    assert bad.exit_code == 2 and "metrics.json" in bad.output


def test_encoder_learning_rate_is_scaled_and_modes_switch_once():
    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env

    cfg = _cfg(steps=10)
    vocab = build_vocabulary(cfg)
    model = build_algorithm(cfg, make_env(cfg, vocab), cfg.params(), "cpu")
    lrs = {g["name"]: g["lr"] for g in model.policy.optimizer.param_groups}
    assert lrs["encoders"] == pytest.approx(0.1 * lrs["fusion+head"])  # one optimizer group per learning rate
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(None, []))
    model._update_learning_rate(model.policy.optimizer)
    assert {g["name"]: g["lr"] for g in model.policy.optimizer.param_groups} == pytest.approx(lrs)
    calls = []
    model.policy.q_net.train = lambda mode=True: calls.append(mode)  # what SB3's set_training_mode walks
    for mode in (False, False, True, True, False):
        model.policy.set_training_mode(mode)
    assert len(calls) <= 1  # the light encoders compute the same in both modes: switched once at most


def test_modes_switch_when_they_compute_differently():
    """A batch norm (the library's CNN with cnn_norm "batch") or a dropout makes the modes differ: every change of
    mode reaches the net, and acting uses the running statistics."""
    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env
    from polymodal.rl.dqn import modes_differ

    assert not modes_differ(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0), torch.nn.LayerNorm(2)))
    assert modes_differ(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert modes_differ(torch.nn.MultiheadAttention(4, 2, dropout=0.1))
    cfg = _cfg(steps=10, cnn_norm="batch", encoder_kwargs={"image": {"arch": "cnn"}})
    vocab = build_vocabulary(cfg)
    model = build_algorithm(cfg, make_env(cfg, vocab), cfg.params(), "cpu")
    calls = []
    model.policy.q_net.train = lambda mode=True: calls.append(mode)
    for mode in (False, False, True, True, False):
        model.policy.set_training_mode(mode)
    assert calls == [False, True, False]


def test_text_cache_and_codes_cnn_compute_what_the_plain_modules_compute():
    from stable_baselines3.common.preprocessing import preprocess_obs

    from polymodal.rl import MultimodalExtractor

    space = spaces.Dict({"image": spaces.Box(0, 255, (7, 7, 3), np.uint8), "mission": spaces.Box(0, 9, (5,), np.int64)})
    torch.manual_seed(0)
    kw = {"image": {"codes": 12, "grid": 7, "arch": "cnn"}, "mission": {"arch": "rnn"}}  # the library's encoders
    ext = MultimodalExtractor(space, embed_dim=8, hidden=16, encoder_kwargs=kw)
    assert type(ext.encoders[ext.keys["image"]]).__name__ == "_CodesCNN"
    ext.eval()
    rng = np.random.default_rng(0)
    missions = rng.integers(0, 10, (3, 5))
    obs = {"image": torch.as_tensor(rng.integers(0, 11, (8, 7, 7, 3)).astype(np.uint8)),
           "mission": torch.as_tensor(missions[rng.integers(0, 3, 8)])}  # fmt: skip
    x = preprocess_obs(obs, space)
    plain = copy.deepcopy(ext)
    from polymodal.encoders import ImageCNN

    plain.encoders[plain.keys["image"]].__class__ = ImageCNN
    plain._text = lambda key, encoder, ids: encoder(ids)  # every row encoded, no cache
    with torch.no_grad():
        want = plain(x)
        assert torch.allclose(ext(x), want, atol=1e-5)
        assert torch.allclose(ext(x), want, atol=1e-5)  # from the cache
        for p in ext.encoders[ext.keys["mission"]].parameters():  # new weights: the cache must not answer
            p.add_(0.5)
            break
        changed = ext(x)
    assert not torch.allclose(changed, want, atol=1e-3)
    grad = ext(x)  # with gradients: distinct rows encoded once, scattered back
    assert torch.allclose(grad, changed, atol=1e-5)
    grad.sum().backward()
    assert all(p.grad is not None for p in ext.encoders[ext.keys["mission"]].parameters())


def test_qrdqn_option_trains_records_and_reloads(tmp_path):
    from polymodal.rl import Agent

    agent = train(
        _cfg(algo="qrdqn", steps=600, eval_every=600, eval_episodes=10, hyperparameters={"learning_starts": 200})
    )
    assert type(agent.model).__name__ == "FusedQRDQN"
    assert {g["name"] for g in agent.model.policy.optimizer.param_groups} == {"encoders", "fusion+head"}
    late = agent.diagnostics[-1]
    assert np.isfinite(late["q_greedy"]) and late["grad_head"] > 0 and "td_error" not in late
    loaded = Agent.load(agent.save(tmp_path / "qr"))
    obs = {k: np.asarray(v)[None] for k, v in agent.make_env().reset(seed=3)[0].items()}
    assert loaded.predict(obs) == agent.predict(obs)


def test_n_step_returns_for_dict_observations():
    """`n_steps` with Dict observations (SB3's own n-step buffer takes flat ones): the discounted sum of up to n
    rewards, stopping at the episode's end, the observation where it stopped and the discount to bootstrap with."""
    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env
    from polymodal.rl.dqn import NStepDictReplayBuffer

    space = spaces.Dict({"x": spaces.Box(0, 100, (1,), np.float32)})
    buf = NStepDictReplayBuffer(20, space, spaces.Discrete(2), device="cpu", n_steps=3, gamma=0.5)
    # an episode of 5 steps paying 1 at its terminal step, then 3 steps of an unfinished one
    for t, x in enumerate([0, 1, 2, 3, 4, 10, 11, 12]):
        end = t == 4
        o, o2 = ({"x": np.array([[v]], np.float32)} for v in (x, x + 1))
        buf.add(o, o2, np.array([[0]]), np.array([float(end)]), np.array([end]), [{}])
    s = buf._get_samples(np.arange(8))
    as_list = lambda t: [round(v, 4) for v in t.flatten().tolist()]  # noqa: E731
    assert as_list(s.next_observations["x"]) == [3, 4, 5, 5, 5, 13, 13, 13]
    assert as_list(s.rewards) == [0, 0, 0.25, 0.5, 1, 0, 0, 0]
    assert as_list(s.dones) == [0, 0, 1, 1, 1, 0, 0, 0]  # the unfinished episode's newest step bootstraps
    assert as_list(s.discounts) == [0.125, 0.125, 0.125, 0.25, 0.5, 0.125, 0.25, 0.5]

    cfg = _cfg(steps=10, hyperparameters={"n_steps": 3})
    model = build_algorithm(cfg, make_env(cfg, build_vocabulary(cfg)), cfg.params(), "cpu")
    assert isinstance(model.replay_buffer, NStepDictReplayBuffer) and model.replay_buffer.n_steps == 3
    assert model.replay_buffer.gamma == model.gamma


@pytest.mark.parametrize("self_loop", [True, False])
def test_self_loop_target_values_a_no_op_by_what_it_pays(self_loop):
    """One state, two stored transitions: action 0 ends the episode with 1, action 2 leaves the observation as
    it was with 0. The consistent target values the no-op at what repeating it pays (0); the usual target at
    gamma x the best action's value, one discount below it."""
    from stable_baselines3.common.logger import Logger

    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env

    params = {"learning_rate": 3e-3, "target_update_interval": 1, "buffer_size": 100, "batch_size": 32}
    cfg = _cfg(steps=10, self_loop_target=self_loop, hyperparameters=params)
    env = make_env(cfg, build_vocabulary(cfg))
    model = build_algorithm(cfg, env, cfg.params(), "cpu")
    model.set_logger(Logger(None, []))
    obs = {k: v[None] for k, v in env.reset(seed=0)[0].items()}
    model.replay_buffer.add(obs, obs, np.array([[0]]), np.array([1.0]), np.array([True]), [{}])
    model.replay_buffer.add(obs, obs, np.array([[2]]), np.array([0.0]), np.array([False]), [{}])
    for _ in range(60):
        model.train(gradient_steps=5, batch_size=32)
        model.q_net_target.load_state_dict(model.q_net.state_dict())
    with torch.no_grad():
        model.policy.set_training_mode(False)
        q = model.q_net(model.policy.obs_to_tensor(obs)[0])[0]
    assert q[0] == pytest.approx(1.0, abs=0.1)
    assert q[2] == pytest.approx(0.0 if self_loop else model.gamma * float(q[0]), abs=0.1), q
    # both stored transitions keep the observation (the terminal one's bootstrap is masked by its end)
    assert model.take_train_stats().get("self_loops") == (1.0 if self_loop else None)


def test_acting_cache_and_gradient_clipping_match_the_plain_computation():
    """FusedDQN: acting reuses a mission's encoding until an optimizer step or a load changes the weights; the
    gradients are clipped as clip_grad_norm_ clips them, from the per-part norms it records."""
    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env

    cfg = _cfg(steps=10)
    vocab = build_vocabulary(cfg)
    model = build_algorithm(cfg, make_env(cfg, vocab), cfg.params(), "cpu")
    net = model.policy.q_net
    ext = net.features_extractor
    obs, _ = make_env(cfg, vocab).reset(seed=0)
    x, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        first = net(x)
        assert len(ext.act_cache) == 1
        ext.act_cache = None
        plain = net(x)
        ext.act_cache = {}
        assert torch.equal(first, plain) and torch.equal(net(x), plain)
    batch = {k: v.repeat(8, *[1] * (v.dim() - 1)) for k, v in x.items()}
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 10
    ref = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
    for r, p in zip(ref, net.parameters(), strict=True):
        r.grad = p.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_(ref, model.max_grad_norm)
    want = [r.grad for r in ref]
    grads, total = model._grad_norms()
    torch._foreach_mul_(grads, (model.max_grad_norm / (total + 1e-6)).clamp(max=1.0))
    assert float(total) == pytest.approx(float(norm), rel=1e-5)
    assert all(torch.allclose(p.grad, w) for p, w in zip(net.parameters(), want, strict=True))
    stats = model.take_train_stats()
    parts = [stats[f"grad_{k}"] for k in ("encoders", "fusion", "head")]
    assert float(np.sqrt(np.sum(np.square(parts)))) == pytest.approx(float(norm), rel=1e-5)
    model.policy.optimizer.step()  # new weights: the cache is emptied
    assert ext.act_cache == {}
    with torch.no_grad():
        net(x)
    model.policy.load_state_dict(model.policy.state_dict())
    assert ext.act_cache == {}
    with torch.no_grad():
        assert net(batch).shape[0] == 8 and ext.act_cache == {}  # a batch is encoded, not cached


def test_evaluation_tells_time_limits_from_bad_endings():
    """`time_limit_rate`: the share of episodes that ran out of steps without success (a policy going round in
    circles), apart from ones that ended badly; sampled actions come from a seeded generator."""
    from polymodal.rl.curves import run_episodes

    class Fixed:  # stands in for an SB3 model: always the same action, or uniformly random when sampled
        def __init__(self, action: int):
            self.action = action

        def predict(self, obs, deterministic=True):
            n = len(obs["mission"])
            if deterministic:
                return np.full(n, self.action), None
            return torch.randint(0, 3, (n,)).numpy(), None

    stay = run_episodes(Fixed(2), Corridor, 20, batch=7)
    assert stay["time_limit_rate"] == 1.0 and stay["success_rate"] == 0.0 and stay["mean_length"] == Corridor.LIMIT
    right = run_episodes(Fixed(1), Corridor, 40)
    assert right["time_limit_rate"] == 0.0 and 0.2 < right["success_rate"] < 0.8 and right["mean_length"] == 3
    walks = [run_episodes(Fixed(2), Corridor, 40, seed=3, deterministic=False) for _ in "ab"]
    assert walks[0] == walks[1] and 0.0 < walks[0]["time_limit_rate"] < 1.0
    # Per episode (what benchmarks/rl_failures.py prints): its seed, how it ended, its actions.
    records = run_episodes(Fixed(1), Corridor, 10, seed=5, batch=4, records=True)["records"]
    assert [r["seed"] for r in records] == list(range(5, 15))
    assert all(r["actions"] == [1, 1, 1] and r["steps"] == 3 for r in records)
    assert {r["ended"] for r in records} == {"success", "bad ending"}
    assert all((r["return"] > 0) == (r["ended"] == "success") for r in records)
    stuck = run_episodes(Fixed(2), Corridor, 3, records=True)["records"]
    assert all(r["ended"] == "time limit" and r["actions"] == [2] * Corridor.LIMIT for r in stuck)
