"""How a saved policy fails: each evaluation episode that does not succeed, with how it ended (the time limit, or
a bad ending such as the wrong object picked up), its length and its first actions; most probable or sampled
actions, on the same seeded episodes as `polymodal rl evaluate`.

    python benchmarks/rl_failures.py runs/ppo1 [--episodes 200] [--seed 1000000] [--sample] [--show 20]

A memoryless policy that goes round in circles shows as a time-limit failure whose actions repeat (left, right,
left, ...; or one no-op for ever). Writes nothing: the table is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", type=Path, help="a policy folder written by `polymodal rl train`")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1_000_000, help="seed of the first episode (rl evaluate's default)")
    ap.add_argument("--sample", action="store_true", help="sample the actions instead of the most probable")
    ap.add_argument("--show", type=int, default=20, help="first actions shown per failed episode")
    a = ap.parse_args()

    import torch

    from polymodal.rl import Agent

    torch.set_num_threads(1)
    agent = Agent.load(a.policy, device="cpu")
    env = agent.make_env()
    torch.manual_seed(a.seed)  # sampled actions: seeded, as rl evaluate --sample seeds them
    kinds: Counter[str] = Counter()
    print(f"{'episode':>7s} {'ended by':>10s} {'steps':>5s}  mission / first actions")
    for i in range(a.episodes):
        obs, _ = env.reset(seed=a.seed + i)
        actions, ok, cut = [], False, False
        while True:
            action = agent.predict({k: v[None] for k, v in obs.items()}, deterministic=not a.sample)[0]
            actions.append(int(action))
            obs, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                ok = bool(info.get("is_success", terminated and float(reward) > 0))
                cut = truncated and not terminated
                break
        kind = "success" if ok else ("time limit" if cut else "bad ending")
        kinds[kind] += 1
        if not ok:
            mission = getattr(env.unwrapped, "mission", "")
            print(f"{a.seed + i:7d} {kind:>10s} {len(actions):5d}  {mission!s} / {actions[: a.show]}")
    mode = "sampled" if a.sample else "most probable"
    print(f"{a.episodes} episodes, {mode} actions: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
