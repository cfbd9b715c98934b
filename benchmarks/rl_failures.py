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

    from polymodal.rl import Agent
    from polymodal.rl.agent import torch_threads
    from polymodal.rl.curves import run_episodes

    agent = Agent.load(a.policy, device="cpu")
    with torch_threads(agent.config.threads):  # the episodes rl evaluate runs: same seeds, batches and draws
        records = run_episodes(
            agent.model, agent.make_env, a.episodes, a.seed, deterministic=not a.sample, records=True
        )["records"]
    print(f"{'episode':>7s} {'ended by':>10s} {'steps':>5s}  mission / first actions")
    for r in records:
        if r["ended"] != "success":
            print(f"{r['seed']:7d} {r['ended']:>10s} {r['steps']:5d}  {r['mission']} / {r['actions'][: a.show]}")
    kinds = Counter(r["ended"] for r in records)
    mode = "sampled" if a.sample else "most probable"
    print(f"{a.episodes} episodes, {mode} actions: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
