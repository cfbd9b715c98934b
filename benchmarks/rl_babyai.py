"""Instruction following on a BabyAI-family level: the polymodal extractor vs SB3's default MultiInputPolicy
with the mission as a bag-of-words vector, vs a policy that does not see the mission.

Level (default): MiniGrid-Fetch-5x5-N2-v0 from the BabyAI family of language-instructed levels: two objects
(keys/balls of random colours) in a 5x5 room; the mission ("get a red key", "you must fetch a blue ball", ...)
names one. Picking up the wrong object ends the episode with reward 0, so an agent that ignores the mission
succeeds about half the time at best. Reward 1 - 0.9 * steps / max_steps on success.

Runs, side by side, one fixed step budget per algorithm, same seed:
  polymodal  MultimodalExtractor (image CNN over the view's cell codes + mission TextRNN + direction embedding,
             early fusion by default; --fusion film|relation|token_transformer for a token-level one)
  bow        SB3's default MultiInputPolicy (CombinedExtractor: image flattened, mission as word counts)
  blind      the polymodal extractor without the mission key (DropKeys)
for PPO and DQN. Success rate of deterministic actions over 200 evaluation episodes after the budget; learning
curves (success vs steps, 30 episodes per point) to benchmarks/results/rl_babyai.png; JSON beside it.

  nice -n 5 python benchmarks/rl_babyai.py             # the reported run (2 processes in parallel, 1 thread each)
  python benchmarks/rl_babyai.py --ppo-steps 20000 --dqn-steps 20000 --runs polymodal-ppo,bow-ppo
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

RUNS = {
    "polymodal-ppo": {"algo": "ppo"},
    "bow-ppo": {"algo": "ppo", "extractor": False, "text": "bow"},
    "polymodal-dqn": {"algo": "dqn"},
    "bow-dqn": {"algo": "dqn", "extractor": False, "text": "bow"},
    "blind-ppo": {"algo": "ppo", "hide": ["mission"]},
}


def one_run(name: str, args: argparse.Namespace) -> dict:
    from polymodal.rl import AgentConfig, train

    kw = dict(RUNS[name])
    steps = args.ppo_steps if kw["algo"] == "ppo" else args.dqn_steps
    if kw.get("extractor", True) and args.codes:
        # MiniGrid's view holds object/colour/state codes per cell: embedded as codes, at full 7 x 7 resolution.
        kw["encoder_kwargs"] = {"image": {"codes": args.codes, "grid": args.grid}}
    cfg = AgentConfig(
        env_id=args.env, steps=steps, seed=args.seed, fusion=args.fusion, eval_every=max(steps // args.points, 1),
        eval_episodes=args.curve_episodes, **kw,
    )  # fmt: skip
    t0 = time.perf_counter()
    agent = train(cfg)
    train_s = time.perf_counter() - t0
    final = agent.evaluate(args.episodes)
    reach = next((h["steps"] for h in agent.history if h["success_rate"] >= 0.9), None)
    print(f"{name:15s} success {final['success_rate']:.3f} after {steps} steps ({train_s:.0f} s)", flush=True)
    return {"name": name, "algo": kw["algo"], "steps": steps, "train_seconds": train_s, "final": final,
            "steps_to_0.9": reach, "history": agent.history, "hyperparameters": cfg.params()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="MiniGrid-Fetch-5x5-N2-v0")
    ap.add_argument("--ppo-steps", type=int, default=400_000)
    ap.add_argument("--dqn-steps", type=int, default=100_000)
    ap.add_argument("--fusion", default="early")
    ap.add_argument("--codes", type=int, default=16, help="embed the view's cell codes (0: read them as pixels)")
    ap.add_argument("--grid", type=int, default=7, help="pooled image grid of the polymodal encoder (7: every cell)")
    ap.add_argument("--episodes", type=int, default=200, help="final evaluation episodes")
    ap.add_argument("--curve-episodes", type=int, default=30)
    ap.add_argument("--points", type=int, default=16, help="learning-curve points per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default=",".join(RUNS))
    ap.add_argument("--out", default="rl_babyai")
    ap.add_argument("--report", action="store_true", help="no training: table, goals and curves of the saved JSON")
    args = ap.parse_args()
    names = args.runs.split(",")

    from polymodal.model.artifact import write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.report:
        from polymodal.model.artifact import read_json

        saved = read_json(RESULTS / f"{args.out}.json")
        report(saved["runs"], args, saved.get("wall_seconds"), saved)
        return
    t0 = time.perf_counter()
    results: list[dict] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, n, args) for n in names]
        for fut in as_completed(futures):
            results.append(fut.result())
            # Each finished run is written at once, so a run cut short still leaves the ones that finished.
            write_json(RESULTS / f"{args.out}.json", {"complete": False, "env": args.env, "runs": results})
    results.sort(key=lambda r: names.index(r["name"]))
    report(results, args, time.perf_counter() - t0)


def report(results: list[dict], args: argparse.Namespace, wall: float | None, saved: dict | None = None) -> None:
    """Print the table and the goals, draw the curves, write the JSON (a cut-short run: `complete` stays false)."""
    from polymodal.model.artifact import write_json
    from polymodal.rl.agent import plot_curve

    by = {r["name"]: r for r in results}
    minutes = f"{wall / 60:.1f} min" if wall else "cut short"
    print(f"\n{args.env}: success rate over {args.episodes} episodes (deterministic), wall {minutes}")
    print(f"{'run':15s} {'algo':5s} {'steps':>7s} {'success':>8s} {'return':>7s} {'to 0.9':>7s} {'train s':>8s}")
    for r in results:
        f = r["final"]
        print(f"{r['name']:15s} {r['algo']:5s} {r['steps']:7d} {f['success_rate']:8.3f} {f['mean_return']:7.3f} "
              f"{str(r['steps_to_0.9']):>7s} {r['train_seconds']:8.0f}")  # fmt: skip

    goals = {}
    for algo in ("ppo", "dqn"):
        pm, bow = by.get(f"polymodal-{algo}"), by.get(f"bow-{algo}")
        if pm:
            goals[f"{algo}: polymodal success >= 0.95"] = pm["final"]["success_rate"] >= 0.95
        if pm and bow:
            a, b = pm["steps_to_0.9"], bow["steps_to_0.9"]
            goals[f"{algo}: polymodal reaches 0.9 in fewer steps than bow"] = a is not None and (b is None or a < b)
    for g, ok in goals.items():
        print(f"goal {'MET' if ok else 'NOT MET'}: {g}")

    plot_curve({r["name"]: r["history"] for r in results}, RESULTS / f"{args.out}.png", f"{args.env} (success)")
    write_json(RESULTS / f"{args.out}.json", {
        "complete": bool(saved.get("complete")) if saved else True, "env": args.env, "episodes": args.episodes,
        "curve_episodes": args.curve_episodes, "not_finished": [n for n in RUNS if n not in by],
        "seed": args.seed, "fusion": args.fusion, "codes": args.codes, "grid": args.grid,
        "ppo_steps": args.ppo_steps, "dqn_steps": args.dqn_steps,
        "runs": results, "goals": goals, "wall_seconds": wall, "workers": args.workers, "torch_threads_per_worker": 1,
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "note": "Fetch-5x5-N2 instead of GoToLocal; step budgets sized to fit about 20-25 min wall on 2 CPU cores.",
        "command": saved.get("command", "nice -n 5 python benchmarks/rl_babyai.py") if saved
        else "nice -n 5 python " + " ".join(sys.argv),
    })  # fmt: skip
    print(f"wrote {RESULTS / (args.out + '.json')} and .png")


if __name__ == "__main__":
    main()
