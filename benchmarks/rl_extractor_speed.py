"""The polymodal RL extractor's cost per step against SB3's default extractor, on MiniGrid-Fetch-5x5-N2-v0 (and
optionally a BabyAI level), in one process, torch threads = 1.

Extractors (each built exactly as `polymodal rl train` builds it, `polymodal.rl.agent.build_algorithm`):
  bow        SB3's default MultiInputPolicy extractor on the bag-of-words view (image flattened, mission as word
             counts): rl_babyai.py's baseline
  polymodal  MultimodalExtractor with the default `rl` settings: the light encoders of polymodal.rl.encoders (the
             7 x 7 view through one linear layer, the mission's words side by side and their max through one linear
             layer, the direction embedded), early fusion; DQN: LayerNorm after the fusion
  codes      the same with the view as cell codes, rl_babyai.py's agent
             (`encoder_kwargs={"image": {"codes": 16, "grid": 7}}`, DQN: one 3 x 3 convolution of width 16)
  library    (only when named in --variants) the library's encoders, the defaults before the light ones
             (`arch` cnn / rnn / mlp: ImageCNN, the mission's bidirectional GRU, CategoricalMLP)

Measured per algorithm (DQN, PPO), the median of `--repeats`, the extractors alternated within each repeat:
  act        the network's forward on one observation, no gradients, acting mode (what each env step costs): DQN's
             Q network (extractor + Q head), PPO's policy (extractor, actor, critic, an action drawn)
  train      that network's forward + backward on a batch (DQN 64 = its batch size, PPO 256 = its minibatch)
  learn      SB3's whole `learn()` loop: environment steps per second over `--dqn-steps` DQN steps (learning starts
             at 1,000, then a gradient step every 4) and `--ppo-steps` PPO steps (8 envs), a fresh agent each repeat
Ratios: polymodal's (and codes') time per step / the default's. Goal (issue 28, part 3): learn ratio < 2.

  nice -n 19 python benchmarks/rl_extractor_speed.py --label after             # writes/updates the JSON entry
  nice -n 19 python benchmarks/rl_extractor_speed.py --quick                    # one repeat, short loops
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "rl_extractor_speed.json"
BATCH = {"dqn": 64, "ppo": 256}
CODES = {"codes": 16, "grid": 7}


def config(variant: str, algo: str, env: str, steps: int):
    from polymodal.rl import AgentConfig

    kw: dict = {}
    if variant == "bow":
        kw = {"extractor": False, "text": "bow"}
    elif variant == "codes":
        kw = {"encoder_kwargs": {"image": {**CODES, **({"widths": [16]} if algo == "dqn" else {})}}}
    elif variant == "library":
        kw = {"encoder_kwargs": {"image": {"arch": "cnn"}, "mission": {"arch": "rnn"}, "direction": {"arch": "mlp"}}}
    return AgentConfig(env_id=env, algo=algo, steps=steps, seed=0, **kw)


def build(variant: str, algo: str, env: str, steps: int):
    from stable_baselines3.common.env_util import make_vec_env

    from polymodal.rl.agent import build_algorithm, build_vocabulary, make_env

    cfg = config(variant, algo, env, steps)
    vocab = build_vocabulary(cfg)
    vec = make_vec_env(lambda: make_env(cfg, vocab), n_envs=cfg.n_envs, seed=0)
    return build_algorithm(cfg, vec, cfg.params(), "cpu"), cfg, vocab


def observations(model, n: int) -> dict:
    """`n` observations of random-action steps through the agent's own vectorized env (with SB3's wrappers, e.g.
    the image transposed), as tensors the way SB3 hands them to its networks (which preprocess them themselves)."""
    import numpy as np
    from stable_baselines3.common.utils import obs_as_tensor

    env = model.get_env()
    env.seed(123)
    obs, rows = env.reset(), []
    rng = np.random.default_rng(0)
    while sum(len(r["image"]) for r in rows) < n:
        rows.append(obs)
        obs, *_ = env.step(rng.integers(env.action_space.n, size=env.num_envs))
    stacked = {k: np.concatenate([r[k] for r in rows])[:n] for k in rows[0]}
    return obs_as_tensor(stacked, "cpu")


def network(model, algo: str):
    """What a step runs: DQN's Q network (extractor + Q head), PPO's policy (extractor + actor and critic)."""
    return model.policy.q_net if algo == "dqn" else model.policy


def _time(fn, min_s: float = 0.4) -> float:
    """Seconds per call: repeated until `min_s` has passed (after two warm-up calls)."""
    fn(), fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_s:
            return el / n


def micro(model, algo: str) -> dict:
    import torch

    net = network(model, algo)
    obs = observations(model, BATCH[algo])
    one = {k: v[:1] for k, v in obs.items()}
    actions = torch.zeros(BATCH[algo], dtype=torch.long)

    def act() -> None:
        with torch.no_grad():
            net(one)

    def train() -> None:
        net.zero_grad(set_to_none=True)
        if algo == "dqn":
            loss = net(obs).sum()
        else:
            values, log_prob, entropy = net.evaluate_actions(obs, actions)
            loss = values.sum() + log_prob.sum() + entropy.sum()
        loss.backward()

    net.train(False)
    t_act = _time(act)
    net.train(True)
    t_train = _time(train)
    net.train(False)
    return {"act_ms": t_act * 1e3, "train_ms": t_train * 1e3}


def learn_rate(variant: str, algo: str, env: str, steps: int) -> float:
    from polymodal.rl.agent import torch_threads

    model, _, _ = build(variant, algo, env, steps)
    with torch_threads(1):
        t0 = time.perf_counter()
        model.learn(steps)
        return steps / (time.perf_counter() - t0)


def measure(env: str, variants: list[str], algos: list[str], args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    for algo in algos:
        steps = args.dqn_steps if algo == "dqn" else args.ppo_steps
        built = {v: build(v, algo, env, steps)[0] for v in variants}
        samples: dict = {v: {"act_ms": [], "train_ms": [], "learn_steps_per_s": []} for v in variants}
        for _ in range(args.repeats):
            for v in variants:  # alternated, so a change of machine load touches every extractor alike
                m = micro(built[v], algo)
                samples[v]["act_ms"].append(m["act_ms"])
                samples[v]["train_ms"].append(m["train_ms"])
                samples[v]["learn_steps_per_s"].append(learn_rate(v, algo, env, steps))
        med = {v: {k: statistics.median(s) for k, s in d.items()} for v, d in samples.items()}
        entry = {"steps": steps, "batch": BATCH[algo], "median": med, "samples": samples, "ratio_vs_bow": {}}
        for v in variants:
            if v == "bow":
                continue
            entry["ratio_vs_bow"][v] = {
                "act": med[v]["act_ms"] / med["bow"]["act_ms"],
                "train": med[v]["train_ms"] / med["bow"]["train_ms"],
                "learn_time_per_step": med["bow"]["learn_steps_per_s"] / med[v]["learn_steps_per_s"],
            }
        out[algo] = entry
        print_table(env, algo, entry)
    return out


def print_table(env: str, algo: str, entry: dict) -> None:
    print(f"\n{env} {algo.upper()} (median of repeats; batch {entry['batch']}, learn {entry['steps']} steps)")
    print(f"{'extractor':10s} {'act ms':>8s} {'train ms':>9s} {'learn steps/s':>14s} {'x act':>6s} {'x train':>8s} "
          f"{'x learn':>8s}")  # fmt: skip
    for v, m in entry["median"].items():
        r = entry["ratio_vs_bow"].get(v, {"act": 1.0, "train": 1.0, "learn_time_per_step": 1.0})
        print(f"{v:10s} {m['act_ms']:8.3f} {m['train_ms']:9.2f} {m['learn_steps_per_s']:14.0f} {r['act']:6.2f} "
              f"{r['train']:8.2f} {r['learn_time_per_step']:8.2f}", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", default="MiniGrid-Fetch-5x5-N2-v0", help="comma-separated env ids")
    ap.add_argument("--variants", default="bow,polymodal,codes", help="of bow, polymodal, codes, library (bow needed)")
    ap.add_argument("--algos", default="dqn,ppo")
    ap.add_argument("--dqn-steps", type=int, default=5_000)
    ap.add_argument("--ppo-steps", type=int, default=4_096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--label", default="after", help="the JSON entry to write (e.g. before / after)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, 2,000 DQN / 2,048 PPO steps, no JSON")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.dqn_steps, args.ppo_steps = 1, 2_000, 2_048
    variants = args.variants.split(",")
    if "bow" not in variants:
        ap.error("--variants must include bow (the reference of every ratio)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    results = {env: measure(env, variants, args.algos.split(","), args) for env in args.envs.split(",")}
    if args.quick:
        return
    from polymodal.model.artifact import read_json, write_json

    saved = read_json(OUT) if OUT.exists() else {"benchmark": "rl_extractor_speed", "entries": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    saved["entries"][args.label] = {
        "results": results, "command": "nice -n 19 python " + " ".join(sys.argv), "commit": commit.stdout.strip(),
        "wall_seconds": round(time.perf_counter() - t0, 1), "torch_threads": 1,
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip
    saved["goal"] = "polymodal's learn() time per step < 2x SB3's default extractor's, DQN and PPO (issue 28, part 3)"
    write_json(OUT, saved)
    print(f"wrote {OUT} ({args.label})")


if __name__ == "__main__":
    main()
