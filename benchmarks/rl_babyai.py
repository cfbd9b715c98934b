"""Instruction following on a BabyAI-family level: DQN and PPO with the polymodal extractor against SB3's default
extractor with the mission as a bag of words, over several seeds, in one invocation.

Level (default): MiniGrid-Fetch-5x5-N2-v0: two objects (keys/balls of random colours) in a 5x5 room; the mission
("get a red key", "you must fetch a blue ball", ...) names one. Picking up the wrong object ends the episode with
reward 0, so an agent that ignores the mission succeeds about half the time at best.

Runs (each for every seed):
  polymodal-dqn  MultimodalExtractor (the `rl` section's light encoders: the view's cell codes embedded and read by
                 one linear layer, no convolution unless --dqn-widths; the mission's words side by side; the
                 direction embedded; early fusion) with the library's DQN defaults (polymodal.rl.dqn: Double-DQN
                 target, self-loop target, gamma 0.9, LayerNorm after the fusion, encoders at 0.1 x the learning
                 rate, gradient clipping at 1)
  bow-dqn        SB3's default MultiInputPolicy extractor (image flattened, mission as word counts), same DQN
  polymodal-ppo  the polymodal extractor with PPO (8 envs)
  bow-ppo        SB3's default extractor with PPO
  legacy-dqn     (only when named) the polymodal extractor with the DQN settings before issue 28
Each run: success of deterministic actions (and of sampled ones) over `--episodes` episodes after its budget, the
curve every `--points`-th of the budget (`--curve-episodes` a point, their own episode seeds), DQN diagnostics. Each
run ends on the weights of its best curve point (the `rl` default `keep_best`), then is scored on the final
evaluation's episodes, which the choice never saw. Before the runs, the speed of both
extractors is measured in the same process, alternating (DQN training steps per second after learning starts).

Goals: polymodal DQN >= 0.90 success in every seed, with no collapse (after the curve first reaches 0.8 it never
falls more than 0.2 below its best so far); PPO >= 0.95 (with deterministic and with sampled actions); the
polymodal extractor under 2x the default's time per DQN step. JSON + curves in benchmarks/results/.

  nice -n 10 python benchmarks/rl_babyai.py --seeds 0,1,2 --workers 2            # the full run
  python benchmarks/rl_babyai.py --seeds 0 --dqn-steps 20000 --runs polymodal-dqn,bow-dqn --out rl_babyai_quick
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
    "polymodal-dqn": {"algo": "dqn"},
    "bow-dqn": {"algo": "dqn", "extractor": False, "text": "bow"},
    "polymodal-ppo": {"algo": "ppo"},
    "bow-ppo": {"algo": "ppo", "extractor": False, "text": "bow"},
    # The DQN settings before issue 28 (the diagnosis): SB3's max target, no self-loop target, BatchNorm, no norm
    # after the fusion, one learning rate, the earlier hyper-parameters. Not in the default --runs.
    "legacy-dqn": {
        "algo": "dqn",
        "double_q": False,
        "self_loop_target": False,
        "fused_norm": False,
        "cnn_norm": "batch",
        "encoder_lr_scale": 1.0,
        "hyperparameters": {
            "learning_rate": 5e-4,
            "buffer_size": 50_000,
            "learning_starts": 1_000,
            "batch_size": 64,
            "gamma": 0.95,
            "train_freq": 4,
            "target_update_interval": 500,
            "exploration_fraction": 0.3,
            "exploration_final_eps": 0.02,
        },
    },
}
# The goals' runs first, and (main) every seed of a run before the next run: a run cut short by a deadline then
# holds the goals' runs for every seed rather than every run for the first seeds.
DEFAULT_RUNS = ["polymodal-ppo", "polymodal-dqn", "bow-dqn", "bow-ppo"]
SETTINGS = ("double_q", "self_loop_target", "encoder_lr_scale", "fused_norm", "cnn_norm")
COLLAPSE_FROM, COLLAPSE_DROP = 0.8, 0.2


def _config(name: str, args: argparse.Namespace, seed: int, steps: int | None = None):
    from polymodal.rl import AgentConfig

    kw = dict(RUNS[name])
    steps = steps or (args.ppo_steps if kw["algo"] == "ppo" else args.dqn_steps)
    if kw.get("extractor", True) and args.codes:
        # MiniGrid's view holds object/colour/state codes per cell: embedded as codes, at full 7 x 7 resolution.
        image = {"codes": args.codes, "grid": args.grid}
        if kw["algo"] == "dqn" and args.dqn_widths:
            image["widths"] = [int(w) for w in args.dqn_widths.split(",")]
        kw["encoder_kwargs"] = {"image": image}
    return AgentConfig(
        env_id=args.env, steps=steps, seed=seed, fusion=args.fusion, eval_every=max(steps // args.points, 1),
        eval_episodes=args.curve_episodes, diagnostics_every=max(steps // 100, 500), **kw,
    )  # fmt: skip


def collapse(curve: list[float]) -> dict:
    """After the curve first reaches 0.8: its largest fall below the best point so far."""
    first = next((i for i, v in enumerate(curve) if v >= COLLAPSE_FROM), None)
    if first is None:
        return {"reached_0.8": False, "max_drop": None, "collapsed": None}
    best, drop = curve[first], 0.0
    for v in curve[first:]:
        best = max(best, v)
        drop = max(drop, best - v)
    return {"reached_0.8": True, "max_drop": round(drop, 4), "collapsed": drop > COLLAPSE_DROP}


def one_run(name: str, seed: int, args: argparse.Namespace) -> dict:
    import torch

    from polymodal.rl import train

    torch.set_num_threads(1)
    cfg = _config(name, args, seed)
    t0 = time.perf_counter()
    agent = train(cfg)
    train_s = time.perf_counter() - t0
    final = agent.evaluate(args.episodes)
    # The same episodes with sampled actions: what PPO learnt is a distribution, whose most probable action can
    # cycle where it is unsure (BabyAI's and rl-starter-files' evaluate.py sample unless --argmax); for DQN the
    # epsilon-greedy policy at its final rate.
    sampled = agent.evaluate(args.episodes, deterministic=False)
    curve = [h["success_rate"] for h in agent.history]
    reach = next((h["steps"] for h in agent.history if h["success_rate"] >= 0.9), None)
    print(f"{name:14s} seed {seed} success {final['success_rate']:.3f} (sampled actions {sampled['success_rate']:.3f})"
          f" after {cfg.steps} steps ({train_s:.0f} s)", flush=True)  # fmt: skip
    return {"name": name, "seed": seed, "algo": cfg.algo, "steps": cfg.steps, "train_seconds": train_s,
            "final": final, "final_sampled": sampled, "steps_to_0.9": reach, "collapse": collapse(curve),
            "kept_steps": agent.kept.get("point", {}).get("steps"),
            "history": agent.history,
            "diagnostics": agent.diagnostics, "hyperparameters": cfg.params(),
            "settings": {k: getattr(cfg, k) for k in SETTINGS},
            "encoder_kwargs": cfg.encoder_kwargs}  # fmt: skip


def speed(args: argparse.Namespace) -> dict:
    """DQN training steps per second after learning starts, both extractors in this process, alternating."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env, torch_threads

    torch.set_num_threads(1)
    models = {}
    # "library-grid": the same polymodal DQN with the `rl` defaults' grid (no convolution), measured beside when
    # --dqn-widths gives the runs another one.
    for name in ("polymodal-dqn", "bow-dqn") + (("library-grid",) if args.dqn_widths else ()):
        cfg = _config("polymodal-dqn" if name == "library-grid" else name, args, 0, steps=10**6)
        if name == "library-grid":
            cfg.encoder_kwargs.get("image", {}).pop("widths", None)
        vocab = build_vocabulary(cfg)
        env = make_vec_env(lambda cfg=cfg, vocab=vocab: make_env(cfg, vocab), n_envs=1, seed=0)
        models[name] = build_algorithm(cfg, env, cfg.params(), "cpu")
        with torch_threads(1):
            models[name].learn(cfg.params()["learning_starts"] + 500)
    seconds = dict.fromkeys(models, 0.0)
    with torch_threads(1):
        for _ in range(args.speed_rounds):
            for name, model in models.items():
                t0 = time.perf_counter()
                model.learn(args.speed_steps, reset_num_timesteps=False)
                seconds[name] += time.perf_counter() - t0
    rate = {n: args.speed_rounds * args.speed_steps / s for n, s in seconds.items()}
    out = {"steps_per_second": {n: round(r, 1) for n, r in rate.items()},
           "time_per_step_ratio": round(rate["bow-dqn"] / rate["polymodal-dqn"], 2),
           "steps": args.speed_steps * args.speed_rounds, "rounds": args.speed_rounds,
           "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    print(f"DQN steps/s: polymodal {rate['polymodal-dqn']:.0f}, bow {rate['bow-dqn']:.0f} "
          f"(polymodal takes {out['time_per_step_ratio']:.2f}x the time per step)", flush=True)  # fmt: skip
    if "library-grid" in rate:
        out["time_per_step_ratio_library_grid"] = round(rate["bow-dqn"] / rate["library-grid"], 2)
        print(f"  with the library's default grid {rate['library-grid']:.0f}: "
              f"{out['time_per_step_ratio_library_grid']:.2f}x", flush=True)  # fmt: skip
    return out


def goals(results: list[dict], speed_result: dict | None) -> dict[str, bool]:
    out = {}
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    if "polymodal-dqn" in by:
        runs = by["polymodal-dqn"]
        out["dqn: polymodal success >= 0.90 in every seed"] = all(r["final"]["success_rate"] >= 0.9 for r in runs)
        out["dqn: polymodal never collapses (after 0.8, no fall > 0.2)"] = all(
            r["collapse"]["collapsed"] is False for r in runs
        )
    if "polymodal-ppo" in by:
        runs = by["polymodal-ppo"]
        out["ppo: polymodal success >= 0.95 in every seed (deterministic actions)"] = all(
            r["final"]["success_rate"] >= 0.95 for r in runs
        )
        if all("final_sampled" in r for r in runs):
            out["ppo: polymodal success >= 0.95 in every seed (sampled actions)"] = all(
                r["final_sampled"]["success_rate"] >= 0.95 for r in runs
            )
    if speed_result:
        out["speed: polymodal DQN step < 2x the default extractor's"] = speed_result["time_per_step_ratio"] < 2.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="MiniGrid-Fetch-5x5-N2-v0")
    # 800k (400k before keep_best): at 400k seed 1's 100-episode curve was still rising (0.90 at 256k, 0.97 at
    # 368k) and its final score 0.925; at 800k every seed scored 1.000 (docs/benchmarks/rl.md)
    ap.add_argument("--ppo-steps", type=int, default=800_000)
    ap.add_argument("--dqn-steps", type=int, default=250_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fusion", default="early")
    ap.add_argument("--codes", type=int, default=16, help="embed the view's cell codes (0: read them as pixels)")
    ap.add_argument("--grid", type=int, default=7, help="pooled image grid of the polymodal encoder (7: every cell)")
    ap.add_argument("--dqn-widths", default="", help="conv widths of the DQN's cell grid ('': the rl default, none)")
    ap.add_argument("--episodes", type=int, default=200, help="final evaluation episodes")
    # 100 a point (30 before keep_best): the best point picks the weights the run ends on, so it must tell 0.95 from 1
    ap.add_argument("--curve-episodes", type=int, default=100)
    ap.add_argument("--points", type=int, default=25, help="learning-curve points per run")
    ap.add_argument("--speed-steps", type=int, default=1_000, help="DQN steps per speed round (0: no speed phase)")
    ap.add_argument("--speed-rounds", type=int, default=6, help="alternating rounds (more: less noise in the ratio)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"of {', '.join(RUNS)}")
    ap.add_argument("--out", default="rl_babyai")
    ap.add_argument("--report", action="store_true", help="no training: table, goals and curves of the saved JSON")
    args = ap.parse_args()
    names, seeds = args.runs.split(","), [int(s) for s in args.seeds.split(",")]

    from polymodal.model.artifact import read_json, write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.report:
        saved = read_json(RESULTS / f"{args.out}.json")
        report(saved["runs"], saved.get("speed"), args, saved.get("wall_seconds"), saved)
        return
    command = f"nice -n {os.nice(0)} python " + " ".join(sys.argv)  # the niceness it really ran at
    t0 = time.perf_counter()
    speed_result = speed(args) if args.speed_steps else None
    results: list[dict] = []
    jobs = [(n, s) for n in names for s in seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, n, s, args) for n, s in jobs]
        for fut in as_completed(futures):
            results.append(fut.result())
            # Each finished run is written at once, so a run cut short still leaves the ones that finished.
            write_json(RESULTS / f"{args.out}.json", {
                "benchmark": "rl_babyai", "complete": False, "env": args.env, "speed": speed_result,
                "runs": results, "command": command, "not_finished": [f"{n}/{s}" for n, s in jobs
                if not any(r["name"] == n and r["seed"] == s for r in results)],
            })  # fmt: skip
    results.sort(key=lambda r: (names.index(r["name"]), r["seed"]))
    report(results, speed_result, args, time.perf_counter() - t0, {"command": command, "complete": True})


def report(results: list[dict], speed_result: dict | None, args, wall: float | None, saved: dict) -> None:
    """Print the table and the goals, draw the curves, write the JSON."""
    from polymodal.model.artifact import write_json
    from polymodal.rl.curves import plot_diagnostics, plot_runs

    minutes = f"{wall / 60:.1f} min" if wall else "cut short"
    print(f"\n{args.env}: success over {args.episodes} episodes (deterministic), wall {minutes}")
    head = ("run", "seed", "steps", "kept", "success", "sampled", "best", "max drop", "to 0.9", "s")
    print("{:14s} {:>4s} {:>7s} {:>7s} {:>8s} {:>8s} {:>5s} {:>8s} {:>7s} {:>6s}".format(*head))
    for r in results:
        c = r["collapse"]
        best = max(h["success_rate"] for h in r["history"])
        drop = "-" if c["max_drop"] is None else f"{c['max_drop']:.2f}"
        sampled = r.get("final_sampled", {}).get("success_rate")
        sampled = "-" if sampled is None else f"{sampled:.3f}"
        kept = str(r.get("kept_steps", "-"))
        print(f"{r['name']:14s} {r['seed']:4d} {r['steps']:7d} {kept:>7s} {r['final']['success_rate']:8.3f} "
              f"{sampled:>8s} "
              f"{best:5.2f} {drop:>8s} {str(r['steps_to_0.9']):>7s} {r['train_seconds']:6.0f}")  # fmt: skip
    met = goals(results, speed_result)
    for g, ok in met.items():
        print(f"goal {'MET' if ok else 'NOT MET'}: {g}")
    plot_runs({f"{r['name']} s{r['seed']}": r for r in results}, RESULTS / f"{args.out}.png", f"{args.env}")
    for r in results:  # each DQN run's diagnostics next to its success curve
        if r.get("diagnostics"):
            name = f"{r['name']}-s{r['seed']}"
            plot_diagnostics(r["diagnostics"], RESULTS / f"{args.out}.{name}.png", f"{name}, {args.env}", r["history"])
    write_json(RESULTS / f"{args.out}.json", {
        "benchmark": "rl_babyai", "complete": bool(saved.get("complete")), "env": args.env,
        "episodes": args.episodes, "curve_episodes": args.curve_episodes, "seeds": sorted({r["seed"] for r in results}),
        "fusion": args.fusion, "codes": args.codes, "grid": args.grid, "dqn_widths": args.dqn_widths,
        "ppo_steps": args.ppo_steps, "dqn_steps": args.dqn_steps, "speed": speed_result, "runs": results,
        "goals": met, "collapse_rule": f"after first reaching {COLLAPSE_FROM}, never more than {COLLAPSE_DROP} "
        "below the best point so far", "wall_seconds": wall, "workers": args.workers, "torch_threads_per_worker": 1,
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_average_1_5_15": saved.get("load_average_1_5_15") or [round(v, 2) for v in os.getloadavg()],
        "command": saved.get("command"),
        "not_finished": saved.get("not_finished", []),
    })  # fmt: skip
    print(f"wrote {RESULTS / (args.out + '.json')} and .png")


if __name__ == "__main__":
    main()
