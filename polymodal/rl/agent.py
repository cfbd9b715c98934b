"""Train, save, load and evaluate an SB3 agent (DQN or PPO) with the polymodal extractor on any gymnasium env.

The policy folder (written atomically, never pickled):
  policy.safetensors  the SB3 policy's state_dict
  policy.json         algorithm, env id, observation/action spaces, hyper-parameters, extractor settings
  vocab.json          the vocabulary that turns the env's Text observations into token ids (when it has any)
  metrics.json        the periodic evaluations (success rate and return vs steps) and the final one
  curve.png           the learning curve
  transfer_model/     a copy of the polymodal model folder the encoders were transferred from (when used)
Loading rebuilds the SB3 algorithm from policy.json and loads the state dict: SB3's zip/pickle files are never used.
"""

from __future__ import annotations

import contextlib
import difflib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from polymodal.config import RLConfig
from polymodal.errors import UserError
from polymodal.files import atomic_folder
from polymodal.model.artifact import read_json, save_safetensors, write_json
from polymodal.rl.curves import EVAL_SEED, curve_callback, plot_diagnostics, plot_runs, run_episodes
from polymodal.rl.encoders import LEGACY_ARCHS
from polymodal.rl.extractor import MultimodalExtractor, ObservationError, plan_inputs, vocabulary_from_model
from polymodal.rl.wrappers import AsDict, BagOfWords, DropKeys, TextTokens, Vocabulary, sample_texts, text_keys

POLICY_WEIGHTS, POLICY_JSON, VOCAB, METRICS, CURVE, DIAGNOSTICS, TRANSFER = (
    "policy.safetensors", "policy.json", "vocab.json", "metrics.json", "curve.png", "diagnostics.png",
    "transfer_model",
)  # fmt: skip
FORMAT = "polymodal-rl/2"  # 2: the light encoders are the defaults (polymodal.rl.encoders); 1 loads as it was built

# Which action spaces each algorithm can act in (SB3's own limits).
ACTION_SPACES: dict[str, tuple[type[spaces.Space], ...]] = {
    "dqn": (spaces.Discrete,),
    "qrdqn": (spaces.Discrete,),
    "ppo": (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
}
# Defaults that learn small grid worlds (MiniGrid/BabyAI) in tens of thousands of steps; any can be overridden.
# DQN: docs/guide/rl.md#dqn-with-fused-extractors says why, and how far they go.
_DQN = {"learning_rate": 5e-4, "buffer_size": 100_000, "learning_starts": 1_000, "batch_size": 64, "gamma": 0.9,
        "train_freq": 4, "target_update_interval": 1_000, "exploration_fraction": 0.3,
        "exploration_final_eps": 0.05, "max_grad_norm": 1.0}  # fmt: skip
DEFAULTS: dict[str, dict[str, Any]] = {
    "dqn": _DQN,
    "qrdqn": {**_DQN, "max_grad_norm": 10.0},
    "ppo": {"learning_rate": 7e-4, "n_steps": 128, "batch_size": 128, "n_epochs": 10, "gamma": 0.95,
            "gae_lambda": 0.95, "ent_coef": 0.01, "clip_range": 0.2, "lr_schedule": "linear", "activation": "relu"},
}  # fmt: skip
# PPO's n_epochs 10 (SB3's own default; 4 before): on MiniGrid-Fetch-5x5-N2, seed 0, 400k steps, 0.900 against 0.885
# and the last six 30-episode curve points 0.91 against 0.82 on average, for about 1.25x the time per step.
# A ReLU policy MLP (SB3's PPO: tanh, 21 % of whose first layer saturated on the light encoders' features), the
# learning rate falling linearly to 0 and minibatches of 128 (8 per pass over a rollout of 8 x 128 steps, not 4):
# seed 0 0.935 with the first two (ReLU alone 0.940, the decay alone 0.930, neither 0.900) and the curve at 0.97 to
# 1.00 from 288k steps on with all three (docs/benchmarks/rl.md, "PPO after issue 28").
DEFAULT_ENVS = {"dqn": 1, "qrdqn": 1, "ppo": 8}
# A small grid's convolutions (GridEncoder) unless encoder_kwargs name them: PPO gets one, DQN none. On
# MiniGrid-Fetch-5x5-N2 at 100k steps PPO ended at 0.535 with none, 0.74 with one of width 16, 0.76 with the library's
# three-layer CNN (docs/benchmarks/rl.md, "Extractor speed"); DQN acts and trains at every step, where a convolution
# is most of its extractor's cost, and ended at 0.86 there after 100k steps without one, 0.85 with one (one seed).
GRID_WIDTHS: dict[str, tuple[int, ...]] = {"ppo": (16,)}
VALUE_BASED = ("dqn", "qrdqn")


class RLSetupError(UserError):
    """A setting that cannot train (unknown env id, an action space the algorithm cannot take); raised up front."""


@dataclass
class AgentConfig(RLConfig):
    """The `rl` section of the config tree (`polymodal.config.RLConfig`: the fields and their meaning), checked."""

    def __post_init__(self) -> None:
        if self.algo not in ACTION_SPACES:
            raise RLSetupError(f"unknown algorithm {self.algo!r}; choose one of {sorted(ACTION_SPACES)}")
        if self.text not in ("tokens", "bow"):
            raise RLSetupError(f"text must be 'tokens' or 'bow', not {self.text!r}")
        if self.steps < 1:
            raise RLSetupError(f"steps must be at least 1, not {self.steps}")
        if not self.env_id:
            raise RLSetupError("name the environment: --env ENV_ID (rl.env_id), e.g. BabyAI-GoToLocalS6N2-v0")
        self.n_envs = self.n_envs or DEFAULT_ENVS[self.algo]
        value_based = self.algo in VALUE_BASED
        if self.encoder_lr_scale is None:
            self.encoder_lr_scale = 0.1 if value_based else 1.0
        if self.self_loop_target is None:
            self.self_loop_target = self.algo == "dqn"
        if self.fused_norm is None:
            self.fused_norm = value_based
        if self.cnn_norm is None:
            self.cnn_norm = "group" if value_based else "batch"
        if self.cnn_norm not in ("batch", "group", "none"):
            raise RLSetupError(f"cnn_norm must be batch, group or none, not {self.cnn_norm!r}")
        resolve_schedules(self.params())  # an unknown lr_schedule / activation fails here, before any env is built

    def params(self) -> dict[str, Any]:
        return {**DEFAULTS[self.algo], **self.hyperparameters}


# ---- environments -----------------------------------------------------------------------------------------
def check_env_id(env_id: str) -> None:
    """Raise RLSetupError listing close registered ids when `env_id` is unknown (MiniGrid/BabyAI: imported first)."""
    if env_id not in gym.registry:
        try:
            import minigrid  # noqa: F401  (importing registers the MiniGrid and BabyAI envs)
        except ImportError:
            pass
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=6, cutoff=0.6)
    hint = f"; close ids: {', '.join(close)}" if close else ""
    raise RLSetupError(
        f"unknown gymnasium env id {env_id!r}{hint}. MiniGrid/BabyAI ids need `pip install polymodal[rl]`; "
        "a custom env must be registered with gymnasium.register before training"
    )


def _base_env(cfg: AgentConfig) -> gym.Env:
    check_env_id(cfg.env_id)
    try:
        env = gym.make(cfg.env_id, **cfg.env_kwargs)
    except gym.error.Error as e:
        raise RLSetupError(f"gymnasium could not make {cfg.env_id!r}: {e}") from e
    return env if isinstance(env.observation_space, spaces.Dict) else AsDict(env)


def wrap_env(env: gym.Env, cfg: AgentConfig, vocab: Vocabulary | None) -> gym.Env:
    if cfg.hide:
        env = DropKeys(env, cfg.hide)
    if text_keys(env.observation_space):
        env = BagOfWords(env, vocab) if cfg.text == "bow" else TextTokens(env, vocab)
    return env


def build_vocabulary(cfg: AgentConfig) -> Vocabulary | None:
    """The vocabulary of the env's Text observations: the transferred model's, or the words of sample resets."""
    for key, name in cfg.transfer.items():
        if cfg.model and key in text_keys(_base_env(cfg).observation_space):
            return vocabulary_from_model(cfg.model, name)
    env = _base_env(cfg)
    if not text_keys(env.observation_space):
        return None
    return Vocabulary.build(sample_texts(env, cfg.vocab_resets, seed=10_000 + cfg.seed))


def make_env(cfg: AgentConfig, vocab: Vocabulary | None) -> gym.Env:
    return wrap_env(_base_env(cfg), cfg, vocab)


def check_setup(cfg: AgentConfig, env: gym.Env) -> None:
    """Everything that would fail inside SB3 later, checked before any training: action space and observations."""
    allowed = ACTION_SPACES[cfg.algo]
    if not isinstance(env.action_space, allowed):
        others = [a for a, ok in ACTION_SPACES.items() if isinstance(env.action_space, ok)]
        raise RLSetupError(
            f"{cfg.algo.upper()} cannot act in {cfg.env_id!r}: its action space is {env.action_space}, and "
            f"{cfg.algo.upper()} takes {' / '.join(a.__name__ for a in allowed)} actions"
            + (f"; use --algo {others[0]}" if others else "")
        )
    if cfg.extractor:
        plan_inputs(env.observation_space, cfg.modalities)
    if cfg.transfer and not cfg.model:
        raise RLSetupError("transfer maps observation keys to model inputs but no model folder is given")


def policy_kwargs(cfg: AgentConfig, model_dir: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if cfg.net_arch is not None:
        kwargs["net_arch"] = list(cfg.net_arch)
    if cfg.extractor:
        kwargs["features_extractor_class"] = MultimodalExtractor
        kwargs["features_extractor_kwargs"] = {
            "fusion": cfg.fusion, "embed_dim": cfg.embed_dim, "hidden": cfg.hidden, "modalities": cfg.modalities,
            "encoder_kwargs": cfg.encoder_kwargs, "model": model_dir or cfg.model, "transfer": cfg.transfer,
            "freeze": cfg.freeze, "fused_norm": cfg.fused_norm, "cnn_norm": cfg.cnn_norm,
            "grid_widths": GRID_WIDTHS.get(cfg.algo, ()),
        }  # fmt: skip
    return kwargs


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads, then restore. On tiny batches, 2 threads can be 20x slower than 1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LinearSchedule:
    """SB3 schedule: `start` at the first step, falling linearly to 0 at the last (`progress` goes 1 -> 0)."""

    def __init__(self, start: float):
        self.start = float(start)

    def __call__(self, progress: float) -> float:
        return self.start * progress


ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU"}  # the policy MLP's activation (`activation` hyper-parameter)


def resolve_schedules(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON-friendly hyper-parameters that SB3 takes otherwise: `lr_schedule` ("constant" or "linear") as its
    callable learning rate, `activation` ("tanh" or "relu") as the policy's `activation_fn`. Returns the algorithm's
    parameters and the policy kwargs to add. A policy saved without `activation` keeps SB3's default (PPO: tanh)."""
    from torch import nn

    params, extra = dict(params), {}
    schedule = params.pop("lr_schedule", "constant")
    if schedule == "linear":
        params["learning_rate"] = LinearSchedule(params["learning_rate"])
    elif schedule != "constant":
        raise RLSetupError(f"lr_schedule must be 'constant' or 'linear', not {schedule!r}")
    activation = params.pop("activation", None)
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise RLSetupError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        extra["activation_fn"] = getattr(nn, ACTIVATIONS[activation])
    return params, extra


def build_algorithm(cfg: AgentConfig, env: Any, params: dict[str, Any], device: str = "auto", model_dir=None) -> Any:
    """The SB3 algorithm of `cfg.algo`: PPO as it is, DQN / QR-DQN as polymodal's subclasses (polymodal.rl.dqn),
    with a logger that writes nothing: SB3's own makes a /tmp/SB3-<time> folder at every `learn()`."""
    from stable_baselines3.common.logger import Logger

    model = _algorithm(cfg, env, params, device, model_dir)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _algorithm(cfg: AgentConfig, env: Any, params: dict[str, Any], device: str, model_dir: Any) -> Any:
    params, extra = resolve_schedules(params)
    kwargs = {"policy_kwargs": {**policy_kwargs(cfg, model_dir), **extra}, "seed": cfg.seed, "device": device,
              "verbose": 0}  # fmt: skip
    if cfg.algo == "ppo":
        from stable_baselines3 import PPO

        return PPO("MultiInputPolicy", env, **kwargs, **params)
    if cfg.algo == "dqn":
        from polymodal.rl.dqn import FusedDQN, FusedDQNPolicy

        return FusedDQN(FusedDQNPolicy, env, double_q=cfg.double_q, encoder_lr_scale=cfg.encoder_lr_scale,
                        self_loop_target=cfg.self_loop_target, **kwargs, **params)  # fmt: skip
    from polymodal.rl.dqn import fused_qrdqn_class

    try:
        qrdqn = fused_qrdqn_class()
    except ImportError as e:
        raise RLSetupError(f"algo qrdqn needs sb3-contrib: pip install sb3-contrib ({e})") from e
    return qrdqn(qrdqn.policy_class, env, encoder_lr_scale=cfg.encoder_lr_scale, **kwargs, **params)


# ---- training, saving, loading ----------------------------------------------------------------------------
@dataclass
class Agent:
    config: AgentConfig
    model: Any  # the SB3 algorithm
    vocab: Vocabulary | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    diagnostics: list[dict] = field(default_factory=list)  # DQN: Q values, TD error, gradients, buffer vs steps
    # PPO: the last evaluation's episodes again with sampled actions (docs/guide/rl.md#evaluating-a-ppo-policy)
    final_sampled: dict[str, float] = field(default_factory=dict)
    # the periodic evaluation whose weights the policy holds (`keep_best`): its point, and whether it is not the last
    kept: dict[str, Any] = field(default_factory=dict)

    def make_env(self) -> gym.Env:
        return make_env(self.config, self.vocab)

    def evaluate(self, episodes: int = 100, seed: int = 1_000_000, deterministic: bool = True) -> dict[str, float]:
        """Success rate, mean return and length over seeded episodes; `deterministic=False` samples the actions
        (a PPO policy is the distribution it learnt: its most probable action can cycle where it is unsure, see
        docs/guide/rl.md#evaluating-a-ppo-policy)."""
        with torch_threads(self.config.threads):
            return run_episodes(self.model, self.make_env, episodes, seed, deterministic=deterministic)

    def predict(self, obs: dict, deterministic: bool = True) -> Any:
        return self.model.predict(obs, deterministic=deterministic)[0]

    def save(self, folder: str | Path) -> Path:
        cfg = self.config
        with atomic_folder(Path(folder)) as tmp:
            # A tensor shared by several names (PPO's features_extractor = pi_/vf_features_extractor) is written
            # once; the other names are recorded as aliases in policy.json.
            unique, aliases, seen = {}, {}, {}
            for k, v in self.model.policy.state_dict().items():
                ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
                if ident in seen:
                    aliases[k] = seen[ident]
                else:
                    seen[ident], unique[k] = k, v.detach().cpu().contiguous()
            save_safetensors(unique, tmp / POLICY_WEIGHTS)
            if cfg.model:
                (tmp / TRANSFER).mkdir()
                for name in ("config.json", "model.safetensors", "preprocess.json"):
                    shutil.copyfile(Path(cfg.model) / name, tmp / TRANSFER / name)
            write_json(tmp / POLICY_JSON, {
                "format": FORMAT, "config": asdict(cfg), "hyperparameters": cfg.params(),
                "observation_space": space_to_dict(self.model.observation_space),
                "action_space": space_to_dict(self.model.action_space), "train_seconds": self.train_seconds,
                "weight_aliases": aliases,
            })  # fmt: skip
            if self.vocab is not None:
                write_json(tmp / VOCAB, self.vocab.to_dict())
            final = self.kept.get("point") or (self.history[-1] if self.history else {})
            sampled = {"final_sampled": self.final_sampled} if self.final_sampled else {}
            write_json(tmp / METRICS, {"history": self.history, "final": final, **sampled, "kept": self.kept,
                                       "diagnostics": self.diagnostics})  # fmt: skip
            if self.history:
                plot_runs({f"{cfg.algo} ({cfg.fusion})": self.run_record()}, tmp / CURVE, cfg.env_id)
            if self.diagnostics:
                plot_diagnostics(self.diagnostics, tmp / DIAGNOSTICS, f"{cfg.algo} on {cfg.env_id}", self.history)
        return Path(folder).resolve()

    def run_record(self) -> dict[str, Any]:
        """What the report draws: the evaluation curve and the diagnostics."""
        return {"history": self.history, "diagnostics": self.diagnostics}

    @classmethod
    def load(cls, folder: str | Path, device: str = "auto") -> Agent:
        """Rebuild the SB3 algorithm from policy.json (on a stand-in env with the saved spaces, so the real env is
        only needed to act) and load policy.safetensors into it."""
        from safetensors.torch import load_file

        folder = Path(folder)
        missing = [n for n in (POLICY_JSON, POLICY_WEIGHTS) if not (folder / n).exists()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a polymodal RL policy folder: missing {missing}")
        meta = read_json(folder / POLICY_JSON)
        cfg = AgentConfig(**meta["config"])
        if meta.get("format") == "polymodal-rl/1":
            _legacy_archs(cfg, space_from_dict(meta["observation_space"]))
        if cfg.model:
            cfg.model = str(folder / TRANSFER)
        vocab = Vocabulary.from_dict(read_json(folder / VOCAB)) if (folder / VOCAB).exists() else None
        stand_in = _SpacesEnv(space_from_dict(meta["observation_space"]), space_from_dict(meta["action_space"]))
        params = dict(meta["hyperparameters"])
        if cfg.algo in VALUE_BASED:
            params["buffer_size"] = 1  # the replay buffer is for training only
        model = build_algorithm(cfg, stand_in, params, device)
        state = load_file(str(folder / POLICY_WEIGHTS))
        state.update({alias: state[name] for alias, name in meta.get("weight_aliases", {}).items()})
        model.policy.load_state_dict(state, strict=True)
        model.policy.set_training_mode(False)
        metrics = read_json(folder / METRICS) if (folder / METRICS).exists() else {}
        return cls(cfg, model, vocab, metrics.get("history", []), meta.get("train_seconds", 0.0),
                   metrics.get("diagnostics", []), metrics.get("final_sampled", {}),
                   metrics.get("kept", {}))  # fmt: skip


def train(
    cfg: AgentConfig,
    progress_bar: bool = False,
    device: str = "auto",
    on_eval: Callable[[dict], None] | None = None,
) -> Agent:
    """Check the setting, build the envs, learn for `cfg.steps` steps with periodic evaluation (each point is
    also passed to `on_eval`); with `cfg.keep_best`, end on the weights of the best evaluation."""
    from stable_baselines3.common.env_util import make_vec_env

    vocab = build_vocabulary(cfg)
    probe = make_env(cfg, vocab)
    check_setup(cfg, probe)
    vec = make_vec_env(lambda: make_env(cfg, vocab), n_envs=cfg.n_envs, seed=cfg.seed)
    model = build_algorithm(cfg, vec, cfg.params(), device)
    history: list[dict] = []
    diagnostics: list[dict] = []
    best: dict | None = {} if cfg.keep_best else None
    t0 = time.perf_counter()
    with torch_threads(cfg.threads):
        callback = curve_callback(lambda: make_env(cfg, vocab), cfg, history, on_eval, diagnostics, best)
        model.learn(cfg.steps, callback=callback, progress_bar=progress_bar)
    agent = Agent(cfg, model, vocab, history, time.perf_counter() - t0, diagnostics)
    if best:
        model.policy.load_state_dict(best["state"])
        agent.kept = {"point": best["point"], "restored": best["point"] is not history[-1]}
    model.policy.set_training_mode(False)
    if cfg.algo == "ppo":  # its most probable action can go round in circles where it is unsure: both are shown
        agent.final_sampled = agent.evaluate(cfg.eval_episodes, seed=EVAL_SEED, deterministic=False)
    return agent


def _legacy_archs(cfg: AgentConfig, space: spaces.Space) -> None:
    """A policy saved before the light encoders were the defaults: its keys get the encoders it was built with."""
    if not cfg.extractor:
        return
    kwargs = {k: dict(v) for k, v in cfg.encoder_kwargs.items()}
    for key, plan in plan_inputs(space, cfg.modalities).items():
        if plan.modality in LEGACY_ARCHS and key not in cfg.transfer:
            kwargs.setdefault(key, {}).setdefault("arch", LEGACY_ARCHS[plan.modality])
    cfg.encoder_kwargs = kwargs


# ---- spaces as JSON ---------------------------------------------------------------------------------------
def _array(a: np.ndarray) -> Any:
    """A Box bound as JSON: one number when all entries agree (images), else a nested list. Unbounded entries
    (CartPole's velocities) as "inf" / "-inf": strict JSON has no infinity (write_json would make them null)."""
    flat = np.asarray(a).ravel()
    if flat.size and np.all(flat == flat[0]):
        return _number(flat[0])
    return np.vectorize(_number, otypes=[object])(np.asarray(a)).tolist()


def _number(x: Any) -> Any:
    v = x.item() if isinstance(x, np.generic) else x
    return v if np.isfinite(v) else str(float(v))


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_dict(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _array(space.low), "high": _array(space.high)}  # fmt: skip
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    raise ObservationError(f"cannot describe space {space} as JSON")


def space_from_dict(d: dict[str, Any]) -> spaces.Space:
    t = d["type"]
    if t == "Dict":
        return spaces.Dict({k: space_from_dict(s) for k, s in d["spaces"].items()})
    if t == "Box":
        dtype, shape = np.dtype(d["dtype"]), tuple(d["shape"])
        wide = np.float64 if dtype.kind == "f" else dtype  # "inf" / "-inf" parse as floats
        low, high = (np.broadcast_to(np.asarray(d[b], wide).astype(dtype), shape) for b in ("low", "high"))
        return spaces.Box(low, high, shape, dtype)
    if t == "Discrete":
        return spaces.Discrete(d["n"], start=d.get("start", 0))
    if t == "MultiDiscrete":
        return spaces.MultiDiscrete(d["nvec"])
    return spaces.MultiBinary(d["n"])


class _SpacesEnv(gym.Env):
    """A stand-in with the saved spaces: SB3 needs an env to build an algorithm; loading must not need the real one."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}
