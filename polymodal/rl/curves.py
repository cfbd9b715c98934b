"""Learning curves of an RL run: periodic evaluation, DQN diagnostics during training, and their figures.

During `train` a callback evaluates the policy every `eval_every` steps (success rate, return, episode length of
deterministic actions: the run's `history`) and, for DQN / QR-DQN, records every `diagnostics_every` steps the
training statistics since the last record (Q of the taken actions, TD error, Huber loss, gradient norms of the
encoders / fusion / Q head) with a probe of the agent now (exploration rate, replay buffer make-up, greedy Q
values and ties, BatchNorm's training/acting gap): the run's `diagnostics`. `plot_runs` draws several runs side
by side (`polymodal rl report`), `plot_diagnostics` one run's diagnostics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

EVAL_SEED = 2_000_000  # the seed of the first episode of the evaluations during training


def run_episodes(
    model: Any,
    make: Callable[[], gym.Env],
    episodes: int,
    seed: int = 1_000_000,
    batch: int = 50,
    deterministic: bool = True,
    records: bool = False,
) -> dict[str, Any]:
    """`episodes` seeded episodes (episode i resets with seed + i), `batch` envs stepped together so the policy
    runs on batches: success rate, mean return and length, and `time_limit_rate` (the failures that ran out of
    steps: a policy going round in circles, not one that ended badly). `records`: also each episode's `seed`,
    `mission` (the env's, if any), `ended` ("success", "time limit" or "bad ending"), `steps`, `return` and
    `actions` (benchmarks/rl_failures.py prints them). Success: the env's `is_success` when it reports one,
    otherwise a positive final reward at termination (MiniGrid/BabyAI reward only success). Actions: the policy's
    most probable (greedy for DQN), or with `deterministic=False` sampled from it (PPO's own distribution; DQN's
    epsilon-greedy at its current rate), from random generators seeded with `seed` and restored afterwards, so
    training's randomness is untouched."""
    if deterministic:
        runs = _episodes(model, make, episodes, seed, batch, True)
    else:
        import torch

        state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                runs = _episodes(model, make, episodes, seed, batch, False)
        finally:
            np.random.set_state(state)
    out: dict[str, Any] = {
        "success_rate": float(np.mean([r["ended"] == "success" for r in runs])),
        "mean_return": float(np.mean([r["return"] for r in runs])),
        "mean_length": float(np.mean([r["steps"] for r in runs])),
        "time_limit_rate": float(np.mean([r["ended"] == "time limit" for r in runs])),
        "episodes": episodes,
    }
    return out | {"records": runs} if records else out


def _episodes(
    model: Any, make: Callable[[], gym.Env], episodes: int, seed: int, batch: int, deterministic: bool
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    envs = [make() for _ in range(min(batch, episodes))]
    for start in range(0, episodes, len(envs)):
        active = {j: envs[j].reset(seed=seed + start + j)[0] for j in range(min(len(envs), episodes - start))}
        runs = {
            j: {"seed": seed + start + j, "mission": str(getattr(envs[j].unwrapped, "mission", "")), "actions": [],
                "return": 0.0}
            for j in active
        }  # fmt: skip
        while active:
            idx = list(active)
            obs = {k: np.stack([active[j][k] for j in idx]) for k in active[idx[0]]}
            actions, _ = model.predict(obs, deterministic=deterministic)
            for j, action in zip(idx, actions, strict=True):
                o, reward, terminated, truncated, info = envs[j].step(action)
                run = runs[j]
                run["return"] += float(reward)
                run["actions"].append(np.asarray(action).tolist())
                if terminated or truncated:
                    del active[j]
                    ok = info.get("is_success", terminated and float(reward) > 0)
                    ended = "success" if ok else "time limit" if truncated and not terminated else "bad ending"
                    records.append(run | {"ended": ended, "steps": len(run["actions"])})
                else:
                    active[j] = o
    return sorted(records, key=lambda r: r["seed"])


def curve_callback(
    make_eval_env: Callable[[], gym.Env],
    cfg: Any,
    history: list[dict],
    on_eval: Callable[[dict], None] | None = None,
    diagnostics: list[dict] | None = None,
    best: dict | None = None,
):
    """The callback of `train`. `best`, when given, holds the best evaluation's point ("point") and a copy of the
    policy's weights then ("state"): success rate first, then mean return, the later one on a tie."""
    from stable_baselines3.common.callbacks import BaseCallback

    from polymodal.rl.dqn import probe

    class Curve(BaseCallback):
        """Evaluate every `eval_every` steps (and at step 0), appending to `history`; DQN diagnostics every
        `diagnostics_every` steps, appended to `diagnostics`."""

        def _on_training_start(self) -> None:
            self.next, self.t0 = 0, time.perf_counter()
            self.next_diag = cfg.diagnostics_every
            self.diagnose = diagnostics is not None and hasattr(self.model, "take_train_stats")
            self._evaluate()

        def _evaluate(self) -> None:
            r = run_episodes(self.model, make_eval_env, cfg.eval_episodes, seed=EVAL_SEED)
            history.append({"steps": int(self.num_timesteps), "seconds": time.perf_counter() - self.t0, **r})
            if best is not None:
                rank = (r["success_rate"], r["mean_return"])
                if "point" not in best or rank >= (best["point"]["success_rate"], best["point"]["mean_return"]):
                    state = self.model.policy.state_dict()
                    best.update(point=history[-1], state={k: v.detach().clone() for k, v in state.items()})
            if on_eval:
                on_eval(history[-1])
            self.next = self.num_timesteps + cfg.eval_every

        def _diagnose(self) -> None:
            stats = self.model.take_train_stats()
            point = {"steps": int(self.num_timesteps), **probe(self.model), **stats}
            diagnostics.append(point)  # type: ignore[union-attr]
            self.next_diag = self.num_timesteps + cfg.diagnostics_every

        def _on_step(self) -> bool:
            if self.diagnose and self.num_timesteps >= self.next_diag:
                self._diagnose()
            if self.num_timesteps >= self.next:
                self._evaluate()
            return True

        def _on_training_end(self) -> None:
            if history[-1]["steps"] != self.num_timesteps:
                self._evaluate()

    return Curve()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# (key, label) of the curves drawn per run: evaluation points, then diagnostics.
EVAL_PANELS = [("success_rate", "success rate"), ("mean_return", "mean return"), ("mean_length", "episode length")]
DIAG_PANELS = [("q_greedy", "greedy Q (replay states)"), ("td_error", "|TD error|")]


def plot_runs(runs: dict[str, dict[str, list[dict]]], path: Path, title: str = "") -> None:
    """Several runs side by side: success, return, episode length (evaluations), greedy Q and TD error
    (diagnostics, when the runs have them) against environment steps. `runs`: name -> {"history", "diagnostics"}."""
    plt = _plt()
    has_diag = any(r.get("diagnostics") for r in runs.values())
    panels = EVAL_PANELS + (DIAG_PANELS if has_diag else [])
    cols = 3 if len(panels) > 3 else len(panels)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, panels, strict=False):
        source = "diagnostics" if (key, label) in DIAG_PANELS else "history"
        for name, run in runs.items():
            points = [p for p in run.get(source) or [] if key in p]
            if points:
                marker = "." if source == "history" else None
                ax.plot([p["steps"] for p in points], [p[key] for p in points], marker=marker, label=name, lw=1.2)
        ax.set(xlabel="environment steps", ylabel=label)
        if key == "success_rate":
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(title or "success")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


DIAG_GROUPS = [
    ("Q values", [("q_taken", "Q(s, a) taken"), ("q_greedy", "max Q (replay states)"), ("q_abs_max", "max |Q|")]),
    ("TD error and loss", [("td_error", "|TD error|"), ("loss", "Huber loss")]),
    ("gradient norm (before clipping)", [("grad_encoders", "encoders"), ("grad_fusion", "fusion"),
                                         ("grad_head", "Q head"), ("grad_total", "total")]),
    ("replay buffer", [("buffer_rewarded", "rewarded (all)"), ("recent_rewarded", "rewarded (last 5k)"),
                       ("recent_done", "episode ends (last 5k)"), ("recent_top_action", "top action (last 5k)")]),
    ("acting", [("exploration_rate", "exploration rate"), ("greedy_ties", "greedy ties"),
                ("greedy_top_action", "top greedy action"), ("bn_mode_disagree", "BatchNorm train/act disagree")]),
]  # fmt: skip


def plot_diagnostics(diagnostics: list[dict], path: Path, title: str = "", history: list[dict] | None = None) -> None:
    """One run's diagnostics against steps, the success curve first when `history` is given."""
    plt = _plt()
    groups = [("success", [("success_rate", "success rate")])] if history else []
    groups += [(t, [(k, lab) for k, lab in keys if any(k in p for p in diagnostics)]) for t, keys in DIAG_GROUPS]
    groups = [(t, keys) for t, keys in groups if keys]
    cols = 3
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (group, keys) in zip(axes.flat, groups, strict=False):
        source = history if group == "success" else diagnostics
        for key, label in keys:
            pts = [p for p in source or [] if key in p]
            ax.plot([p["steps"] for p in pts], [p[key] for p in pts], label=label, lw=1.2)
        ax.set(xlabel="environment steps", title=group)
        if group.startswith("gradient"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def report(folders: list[Path], output: Path, title: str = "") -> list[dict[str, Any]]:
    """`polymodal rl report`: the runs of several policy folders side by side (curves.png) and each run's
    diagnostics with its success curve (NAME.diagnostics.png); returns one summary row per run."""
    from polymodal.errors import UserError
    from polymodal.files import atomic_path
    from polymodal.model.artifact import read_json

    runs, rows = {}, []
    for folder in folders:
        metrics = Path(folder) / "metrics.json"
        if not metrics.exists():
            raise UserError(f"{folder} is not a policy folder written by `polymodal rl train`: no metrics.json")
        m = read_json(metrics)
        name = Path(folder).name
        while name in runs:
            name += "'"
        runs[name] = {"history": m.get("history", []), "diagnostics": m.get("diagnostics", [])}
        hist = runs[name]["history"] or [{"steps": 0, "success_rate": 0.0}]
        best = max(hist, key=lambda p: p["success_rate"])
        rows.append({"name": name, "final": hist[-1]["success_rate"], "best": best["success_rate"],
                     "best_steps": best["steps"]})  # fmt: skip
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with atomic_path(output / "curves.png") as tmp:
        plot_runs(runs, tmp, title)
    for row in rows:
        run = runs[row["name"]]
        if run["diagnostics"]:
            path = output / f"{row['name']}.diagnostics.png"
            with atomic_path(path) as tmp:
                plot_diagnostics(run["diagnostics"], tmp, row["name"], run["history"])
            row["diagnostics"] = str(path)
    return rows
