"""DQN for fused observations: a small subclass of SB3's DQN (and of sb3-contrib's QR-DQN), not a fork.

What it adds to SB3's DQN (each one a setting of the `rl` section, see `polymodal.config.RLConfig`):
  - a Double-DQN target (`double_q`): the online net picks the next action, the target net values it, so the
    max over noisy estimates does not ratchet the Q values up;
  - one optimizer with three parameter groups, the encoders at `encoder_lr_scale` x the learning rate of the
    fusion and the Q head (SB3's learning-rate schedule is applied to every group, times its scale);
  - the acting policy switches between training and acting mode only when the mode changes (SB3 switches on
    every rollout, which walks every module of a deep extractor: a quarter of a small agent's time), and never
    again after the first when nothing in the net computes differently in the two modes;
  - diagnostics of every gradient step (Q of the taken actions, TD error, loss, gradient norms per group before
    clipping), read and reset by `take_train_stats`; `probe` adds the replay buffer's make-up, exploration rate,
    greedy-action ties and, with BatchNorm, the gap between its training and acting modes.
  - a consistent target for self-loops (`self_loop_target`, Bellemare et al. 2016's consistent Bellman operator):
    when an action leaves the observation unchanged (a no-op: a turn into a wall, a pickup with nothing ahead),
    the target bootstraps from the same action's value instead of the best one, so a no-op's value falls to what
    it pays forever (0 here) instead of sitting one discount below the state's value, within the TD error of it;
  - n-step returns (`n_steps`) for Dict observations too (`NStepDictReplayBuffer`: SB3's n-step buffer takes
    flat observations only).
Huber loss, gradient clipping (`max_grad_norm`) and soft target updates (`tau`) are SB3's own hyper-parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.dqn.policies import MultiInputPolicy as DQNMultiInputPolicy
from stable_baselines3.dqn.policies import QNetwork

GROUPS = ("encoders", "fusion", "head")


def modes_differ(module: torch.nn.Module) -> bool:
    """Whether `module` computes differently in training and acting mode: a batch norm, or a dropout that drops."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if isinstance(m, torch.nn.MultiheadAttention) and m.dropout > 0:
            return True
    return False


class _ModeOnce:
    """Policy mixin for acting at every step: `set_training_mode` only when the mode changes, and only once when
    the two modes compute the same (the light encoders: no batch norm, no dropout), since each switch walks every
    module twice a DQN step; and `obs_to_tensor` without SB3's checks when the observation is what a VecEnv
    returns (SB3 checks each key's space again at every call, numpy reductions over a uint8 image's bounds
    included)."""

    _mode: bool | None = None
    _modes_differ: bool | None = None

    def obs_to_tensor(self, observation: Any) -> tuple[Any, bool]:
        space = self.observation_space  # type: ignore[attr-defined]
        if (
            isinstance(space, spaces.Dict)
            and isinstance(observation, dict)
            and observation.keys() == space.spaces.keys()
        ):
            shapes = {k: s.shape for k, s in space.spaces.items()}
            if all(
                isinstance(v, np.ndarray) and v.ndim == len(shapes[k]) + 1 and v.shape[1:] == shapes[k]
                for k, v in observation.items()
            ):  # (n_envs, *space): vectorized, channels as in the space, nothing to reshape or transpose
                return {k: torch.tensor(v, device=self.device) for k, v in observation.items()}, True  # type: ignore[attr-defined]
        return super().obs_to_tensor(observation)  # type: ignore[misc]

    def set_training_mode(self, mode: bool) -> None:
        if self._modes_differ is None:
            self._modes_differ = modes_differ(self)  # type: ignore[arg-type]
        if self._mode is None or (self._modes_differ and self._mode is not mode):
            super().set_training_mode(mode)  # type: ignore[misc]
            self._mode = mode


class _RawObservations:
    """Q-network mixin: a MultimodalExtractor gets the observations before SB3's `preprocess_obs`; its
    `forward_raw` computes the same features for less (polymodal.rl.extractor). Other extractors as SB3 does."""

    def extract_features(self, obs: Any, features_extractor: Any) -> torch.Tensor:
        raw = getattr(features_extractor, "forward_raw", None)
        if raw is None:
            return super().extract_features(obs, features_extractor)  # type: ignore[misc]
        return raw(obs, normalize_images=self.normalize_images)  # type: ignore[attr-defined]


class FusedQNetwork(_RawObservations, QNetwork):
    pass


class FusedDQNPolicy(_ModeOnce, DQNMultiInputPolicy):
    def make_q_net(self) -> QNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return FusedQNetwork(**net_args).to(self.device)


def q_network(policy: Any) -> torch.nn.Module:
    """The online network: DQN's `q_net`, QR-DQN's `quantile_net`."""
    return policy.q_net if hasattr(policy, "q_net") else policy.quantile_net


def parameter_groups(policy: Any) -> dict[str, list[torch.nn.Parameter]]:
    """The online net's trainable parameters: the extractor's encoders, the rest of the extractor (fusion and the
    norm after it), and the Q head."""
    net = q_network(policy)
    ext = net.features_extractor
    encoders = [p for p in getattr(ext, "encoders", torch.nn.Module()).parameters() if p.requires_grad]
    seen = {id(p) for p in encoders}
    fusion = [p for p in ext.parameters() if p.requires_grad and id(p) not in seen]
    seen |= {id(p) for p in ext.parameters()}
    head = [p for p in net.parameters() if p.requires_grad and id(p) not in seen]
    return {"encoders": encoders, "fusion": fusion, "head": head}


class NStepDictReplayBuffer(DictReplayBuffer):
    """SB3's `NStepReplayBuffer` for Dict observations: the same storage, and at sampling time the discounted sum
    of up to `n_steps` rewards, stopping at the episode's end (termination or time limit), with the observation
    and done flag where it stopped and the discount to bootstrap with (`gamma` ** steps taken)."""

    def __init__(self, *args: Any, n_steps: int = 3, gamma: float = 0.99, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.n_steps, self.gamma = n_steps, gamma

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> DictReplayBufferSamples:  # type: ignore[override]
        envs = np.random.randint(0, self.n_envs, size=batch_inds.shape)
        # The newest transition's successor is not stored yet: treated as a time limit while sampling (SB3's way).
        last = self.pos - 1
        saved = self.timeouts[last].copy()
        self.timeouts[last] = np.logical_or(saved, np.logical_not(self.dones[last]))
        idx = (batch_inds[:, None] + np.arange(self.n_steps)[None]) % self.buffer_size
        ends = np.logical_or(self.dones[idx, envs[:, None]], self.timeouts[idx, envs[:, None]])
        stop = np.where(ends.any(axis=1), ends.argmax(axis=1), self.n_steps - 1)
        mask = np.arange(self.n_steps)[None] <= stop[:, None]
        powers = self.gamma ** np.arange(self.n_steps, dtype=np.float32)[None]
        rewards = (self._normalize_reward(self.rewards[idx, envs[:, None]], env) * powers * mask).sum(axis=1)
        end = (batch_inds + stop) % self.buffer_size
        dones = self.dones[end, envs] * (1.0 - self.timeouts[end, envs])
        self.timeouts[last] = saved
        obs = self._normalize_obs({k: o[batch_inds, envs] for k, o in self.observations.items()}, env)
        nxt = self._normalize_obs({k: o[end, envs] for k, o in self.next_observations.items()}, env)
        return DictReplayBufferSamples(
            observations={k: self.to_torch(v) for k, v in obs.items()},  # type: ignore[union-attr]
            actions=self.to_torch(self.actions[batch_inds, envs]),
            next_observations={k: self.to_torch(v) for k, v in nxt.items()},  # type: ignore[union-attr]
            dones=self.to_torch(dones.reshape(-1, 1).astype(np.float32)),
            rewards=self.to_torch(rewards.reshape(-1, 1).astype(np.float32)),
            discounts=self.to_torch((self.gamma ** mask.sum(axis=1, keepdims=True)).astype(np.float32)),
        )


class _FusedMixin:
    """Parameter groups with their own learning-rate scale, and the per-step statistics (shared by DQN and QR-DQN)."""

    encoder_lr_scale: float = 1.0

    def _setup_model(self) -> None:
        n_steps = self.n_steps  # type: ignore[attr-defined]
        if n_steps > 1 and self.replay_buffer_class is None and isinstance(self.observation_space, spaces.Dict):  # type: ignore[attr-defined]
            self.replay_buffer_class = NStepDictReplayBuffer
            self.replay_buffer_kwargs.update(n_steps=n_steps, gamma=self.gamma)  # type: ignore[attr-defined]
            self.n_steps = 1  # SB3 would warn that a custom buffer ignores n_steps: this one is the n-step buffer
        try:
            super()._setup_model()  # type: ignore[misc]
        finally:
            self.n_steps = n_steps
        policy = self.policy  # type: ignore[attr-defined]
        lr = self.lr_schedule(1.0)  # type: ignore[attr-defined]
        scales = {"encoders": self.encoder_lr_scale, "fusion": 1.0, "head": 1.0}
        # The gradient norms are recorded per part; the optimizer gets one group per learning rate (each group is
        # a pass of its Python code at every step: a third of a small agent's optimizer time for a third group).
        self._grad_groups = {name: ps for name, ps in parameter_groups(policy).items() if ps}
        by_scale: dict[float, tuple[list[str], list[torch.nn.Parameter]]] = {}
        for name, ps in self._grad_groups.items():
            names, params = by_scale.setdefault(scales[name], ([], []))
            names.append(name)
            params.extend(ps)
        groups = [
            {"params": ps, "lr": lr * scale, "lr_scale": scale, "name": "+".join(names)}
            for scale, (names, ps) in by_scale.items()
        ]
        kwargs = dict(policy.optimizer_kwargs)
        if policy.optimizer_class is torch.optim.Adam and self.device.type == "cpu":
            kwargs.setdefault("fused", True)  # one kernel for all parameters: the per-tensor loop costs more here
        policy.optimizer = policy.optimizer_class(groups, **kwargs)
        self._stats: dict[str, list[float | torch.Tensor]] = {}
        if not isinstance(self, FusedDQN):  # QR-DQN trains in sb3-contrib's loop: its gradients seen at each step
            policy.optimizer.register_step_pre_hook(self._record_grads)
        extractor = q_network(policy).features_extractor
        # Double DQN: one pass over states and next states when an encoder costs per call more than per row (the
        # library's mission GRU); else two, the next states without gradients (a backward over half the rows).
        self._one_pass = bool(getattr(extractor, "costs_per_call", False))
        if hasattr(extractor, "act_cache"):  # acting reuses a mission's encoding until the weights change
            extractor.act_cache = {}
            policy.optimizer.register_step_post_hook(lambda opt, *_: extractor.act_cache.clear())

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)  # type: ignore[misc]
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            for g in opt.param_groups:
                g["lr"] *= g.get("lr_scale", 1.0)

    def _add(self, **values: float | torch.Tensor) -> None:
        # Kept as tensors, read at take_train_stats: a float() per statistic per step costs more than the step's
        # own arithmetic on a small net.
        for k, v in values.items():
            self._stats.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else v)

    def _record_grads(self, *_: Any) -> None:  # an optimizer pre-step hook: must return None
        self._grad_norms()

    def _grad_norms(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every gradient of the online net and their total norm; each part's norm recorded. One foreach norm over
        all of them (a norm per tensor, per part, then again for clipping would walk them three times)."""
        grads: list[torch.Tensor] = []
        bounds = []
        for name, ps in self._grad_groups.items():
            start = len(grads)
            grads += [p.grad for p in ps if p.grad is not None]
            bounds.append((name, start, len(grads)))
        if not grads:
            return grads, torch.zeros(())
        squares = torch.stack(torch._foreach_norm(grads)).square()
        self._add(**{f"grad_{name}": squares[a:b].sum().sqrt() for name, a, b in bounds})
        return grads, squares.sum().sqrt()

    def take_train_stats(self) -> dict[str, float]:
        """Means of the per-gradient-step statistics since the last call (empty before learning starts)."""
        out = {
            k: float(torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in v]).mean())
            for k, v in self._stats.items()
            if v
        }
        self._stats = {}
        return out


class FusedDQN(_FusedMixin, DQN):
    """SB3's DQN with a Double-DQN target, per-group learning rates and training statistics (module docstring)."""

    def __init__(
        self,
        *args: Any,
        double_q: bool = True,
        encoder_lr_scale: float = 1.0,
        self_loop_target: bool = False,
        **kwargs: Any,
    ):
        self.double_q = double_q
        self.self_loop_target = self_loop_target
        self.encoder_lr_scale = encoder_lr_scale
        super().__init__(*args, **kwargs)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if data.discounts is not None else self.gamma
            obs, n = data.observations, len(data.actions)
            if self.double_q and self._one_pass:  # states and next states in one pass (one text encoding)
                both = {k: torch.cat([v, data.next_observations[k]]) for k, v in obs.items()}  # type: ignore[union-attr]
                q_both = self.q_net(both)
                q_all, q_next_online = q_both[:n], q_both[n:].detach()
            else:
                q_all = self.q_net(obs)
                if self.double_q:  # next states without gradients: no backward through rows that do not learn
                    with torch.no_grad():
                        q_next_online = self.q_net(data.next_observations)
            with torch.no_grad():
                next_target = self.q_net_target(data.next_observations)
                if self.double_q:
                    # The online net picks, the target net values: no max over the same noisy estimates.
                    next_q = next_target.gather(1, q_next_online.argmax(dim=1, keepdim=True))
                else:
                    next_q = next_target.max(dim=1, keepdim=True).values
                if self.self_loop_target:
                    # s' == s: bootstrap from Q(s, a) itself (the target net's, and s' is s), not from max Q(s').
                    same = _same_rows(obs, data.next_observations)
                    next_q = torch.where(same, next_target.gather(1, data.actions.long()), next_q)
                    self._add(self_loops=same.float().mean())
                target = data.rewards + (1 - data.dones) * discounts * next_q
            q = q_all.gather(1, data.actions.long())
            loss = F.smooth_l1_loss(q, target)
            self.policy.optimizer.zero_grad()
            loss.backward()
            grads, total = self._grad_norms()  # clipped as clip_grad_norm_ does, from the norms just recorded
            if grads:
                torch._foreach_mul_(grads, (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0))
            self.policy.optimizer.step()
            q = q.detach()
            self._add(q_taken=q.mean(), td_error=(target - q).abs().mean(), loss=loss.detach(), grad_total=total)
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")


def _same_rows(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, 1) bool: every key's row of `a` equals `b`'s (n-step samples: the observation where it stopped)."""
    same = None
    for k, v in a.items():
        eq = (v == b[k]).reshape(len(v), -1).all(dim=1, keepdim=True)
        same = eq if same is None else same & eq
    return same  # type: ignore[return-value]


def fused_qrdqn_class() -> type:
    """QR-DQN (sb3-contrib) with the same parameter groups and statistics (its own loss and target)."""
    from sb3_contrib import QRDQN
    from sb3_contrib.qrdqn.policies import MultiInputPolicy as QRMultiInputPolicy
    from sb3_contrib.qrdqn.policies import QuantileNetwork

    class FusedQuantileNetwork(_RawObservations, QuantileNetwork):
        pass

    class FusedQRDQNPolicy(_ModeOnce, QRMultiInputPolicy):
        def make_quantile_net(self) -> QuantileNetwork:
            net_args = self._update_features_extractor(self.net_args, features_extractor=None)
            return FusedQuantileNetwork(**net_args).to(self.device)

    class FusedQRDQN(_FusedMixin, QRDQN):
        def __init__(self, *args: Any, encoder_lr_scale: float = 1.0, **kwargs: Any):
            self.encoder_lr_scale = encoder_lr_scale
            super().__init__(*args, **kwargs)

    FusedQRDQN.policy_class = FusedQRDQNPolicy
    return FusedQRDQN


def _q_values(model: Any, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    net = q_network(model.policy)
    out = net(obs)
    return out.mean(dim=1) if out.dim() == 3 else out  # QR-DQN: (batch, quantiles, actions) -> the mean


def probe(model: Any, batch: int = 256, recent: int = 5_000) -> dict[str, float]:
    """The state of a DQN-family agent now: exploration rate, the replay buffer's make-up (whole and its most
    recent `recent` transitions: share of rewarded and of episode-ending transitions, of the most frequent action),
    and on `batch` stored states: the greedy Q values, the share of states whose best two actions tie (gap under
    1e-4), the share of the most frequent greedy action, and with BatchNorm the mean |Q| gap between its training
    mode (batch statistics, what is learnt) and acting mode (running statistics, what acts)."""
    buf = model.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    out: dict[str, float] = {"exploration_rate": float(model.exploration_rate), "buffer_size": float(n)}
    if n < 2:
        return out
    rewards, dones, actions = buf.rewards[:n, 0], buf.dones[:n, 0], buf.actions[:n, 0].astype(int).ravel()
    last = (np.arange(buf.pos - min(recent, n), buf.pos)) % buf.buffer_size
    counts = np.bincount(actions)
    out.update(
        buffer_rewarded=float(np.mean(rewards > 0)), buffer_done=float(np.mean(dones > 0)),
        buffer_top_action=float(counts.max() / n), recent_rewarded=float(np.mean(rewards[last] > 0)),
        recent_done=float(np.mean(dones[last] > 0)),
        recent_top_action=float(np.bincount(actions[last]).max() / len(last)),
    )  # fmt: skip
    data = buf.sample(min(batch, n))
    net = q_network(model.policy)
    was_training = net.training
    try:
        with torch.no_grad():
            net.train(False)
            q = _q_values(model, data.observations)
            top2 = q.topk(2, dim=1).values if q.shape[1] > 1 else torch.cat([q, q - 1], dim=1)
            greedy = q.argmax(dim=1)
            out.update(
                q_greedy=float(top2[:, 0].mean()), q_abs_max=float(q.abs().max()), q_spread=float(q.std(dim=1).mean()),
                greedy_ties=float(((top2[:, 0] - top2[:, 1]) < 1e-4).float().mean()),
                greedy_top_action=float(torch.bincount(greedy).max() / len(greedy)),
            )  # fmt: skip
            norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            if norms:  # batch statistics without touching the running ones
                saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
                net.train(True)
                q_train = _q_values(model, data.observations)
                for m, state in zip(norms, saved, strict=True):
                    m.load_state_dict(state)
                out["bn_mode_gap"] = float((q_train - q).abs().mean())
                out["bn_mode_disagree"] = float((q_train.argmax(dim=1) != greedy).float().mean())
    finally:
        net.train(was_training)
    return out
