"""One DQN ablation on the BabyAI-family level of `rl_babyai.py`: its `polymodal-dqn` (or `bow-dqn`) run with
some `rl` settings and SB3 hyper-parameters changed, one seed, one process. Each run is appended to
benchmarks/results/rl_dqn_sweep.json under its label (atomic write), with the curve, the diagnostics and a
summary of them after exploration ends.

  nice -n 19 python benchmarks/rl_dqn_sweep.py --label nstep3 --steps 30000 --param n_steps=3
  nice -n 19 python benchmarks/rl_dqn_sweep.py --label mission-bow --set text=bow --param learning_rate=1e-4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


SETTINGS = ("double_q", "self_loop_target", "encoder_lr_scale", "fused_norm", "cnn_norm", "text", "fusion")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str]) -> dict:
    return {k: _value(v) for k, v in (item.split("=", 1) for item in items)}


def summary(diagnostics: list[dict], after: int) -> dict:
    """Ranges of the main diagnostics from step `after` on (exploration over)."""
    keys = ("q_greedy", "q_abs_max", "td_error", "recent_rewarded", "recent_done", "greedy_top_action")
    late = [d for d in diagnostics if d["steps"] >= after]
    return {k: [round(min(d[k] for d in late), 3), round(max(d[k] for d in late), 3)]
            for k in keys if late and all(k in d for d in late)}  # fmt: skip


def outcomes(agent, episodes: int, seed: int = 3_000_000) -> dict:
    """How the greedy policy's episodes end: the named object picked up, the other one, or the step limit."""
    env, counts = agent.make_env(), {"right": 0, "wrong": 0, "time_limit": 0}
    for i in range(episodes):
        obs, done = env.reset(seed=seed + i)[0], False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.predict(obs))
            done = terminated or truncated
        counts["right" if reward > 0 else "wrong" if terminated else "time_limit"] += 1
    return {k: v / episodes for k, v in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--base", default="polymodal-dqn", help="run of rl_babyai.py to start from")
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=15)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], help="AgentConfig field=JSON value")
    ap.add_argument("--param", action="append", default=[], help="SB3 hyper-parameter=JSON value")
    ap.add_argument("--out", default="rl_dqn_sweep")
    args = ap.parse_args()

    import dataclasses

    import rl_babyai as bench
    import torch

    from polymodal.model.artifact import read_json, write_json
    from polymodal.rl import train

    torch.set_num_threads(1)
    bargs = argparse.Namespace(env="MiniGrid-Fetch-5x5-N2-v0", ppo_steps=args.steps, dqn_steps=args.steps,
                               fusion="early", codes=16, grid=7, dqn_widths="16", points=args.points,
                               curve_episodes=30)  # fmt: skip
    cfg = bench._config(args.base, bargs, args.seed)
    sets = _pairs(args.set)
    if "encoder_kwargs" in sets and cfg.encoder_kwargs:  # merged per key, so `image` keeps its codes
        sets["encoder_kwargs"] = {**cfg.encoder_kwargs, **sets["encoder_kwargs"]}
    cfg = dataclasses.replace(cfg, **sets, hyperparameters={**cfg.hyperparameters, **_pairs(args.param)})
    t0 = time.perf_counter()
    agent = train(cfg)
    seconds = time.perf_counter() - t0
    final = agent.evaluate(args.episodes)
    ends = outcomes(agent, args.episodes)
    params = cfg.params()
    explore_end = int(params["exploration_fraction"] * cfg.steps)
    curve = [h["success_rate"] for h in agent.history]
    entry = {
        "label": args.label, "base": args.base, "seed": args.seed, "steps": cfg.steps, "final": final, "outcomes": ends,
        "best": max(curve), "collapse": bench.collapse(curve), "train_seconds": round(seconds, 1),
        "set": sets, "param": _pairs(args.param), "hyperparameters": params,
        "settings": {k: getattr(cfg, k) for k in SETTINGS},
        "after_exploration": summary(agent.diagnostics, explore_end), "curve": curve, "history": agent.history,
        "diagnostics": agent.diagnostics, "command": f"nice -n {os.nice(0)} python " + " ".join(sys.argv),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    path = ROOT / "benchmarks" / "results" / f"{args.out}.json"
    saved = read_json(path) if path.exists() else {"benchmark": "rl_dqn_sweep", "runs": []}
    saved["runs"] = [r for r in saved["runs"] if (r["label"], r["seed"]) != (args.label, args.seed)] + [entry]
    write_json(path, saved)
    print(f"{args.label} seed {args.seed}: success {final['success_rate']:.3f} (best {max(curve):.2f}), "
          f"{seconds:.0f} s; ends {ends}; curve {[round(c, 2) for c in curve]}; "
          f"after exploration {entry['after_exploration']}",
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
