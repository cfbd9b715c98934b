"""Training throughput with 1 and 2 processes (Lightning DDP on CPU, gloo) and, on a GPU machine, 1..N GPUs (nccl).

The table is scale_rows.py's generated one (text, two numbers, a category, a 16x16 image path; 8 classes), default
2*10^4 training rows and a separate fixed validation table; the same small model as scale_rows.py, `--epochs`
epochs. `train.batch_size` is the global batch, so every run takes the same optimizer steps per epoch.

Runs (`--runs`; default every CPU one, plus the GPU ones when torch sees a GPU):
  1p1t   1 process, OMP_NUM_THREADS=1
  1p2t   1 process, OMP_NUM_THREADS=2
  2p1t   2 processes (train.strategy=ddp, train.devices=2, train.accelerator=cpu; Lightning starts the second one),
         OMP_NUM_THREADS=1 each
  tr2p1t the same 2 processes started by torchrun (--nnodes 1 --nproc-per-node 2, c10d rendezvous on 127.0.0.1)
  gpuK   K GPUs (train.accelerator=gpu, train.devices=K, ddp when K > 1), for K in 1..--gpus (default: all of them)
On a 2-core machine the 2 processes share the 2 cores: 1p2t (one process, both cores) is the fair baseline for
2p1t, and 1p1t shows what one core does alone; on a loaded shared machine 2 threads can be far slower than 1
(threads wait for each other), so speed-ups are given against the faster single-process CPU run. Lightning keeps
an OMP_NUM_THREADS that is set (without it, its CPU DDP sets cpu_count // processes threads).

Per run: train rows/s (train_rows / train_seconds from metrics.json, the training loop), wall (startup and
preprocessing included), validation accuracy from metrics.json (reduced across ranks under DDP) and, as a
single-process cross-check, from `polymodal evaluate` on the validation table; peak RSS of the process tree.

    nice -n 10 python benchmarks/ddp_scaling.py                    # 2*10^4 rows, 1 epoch, CPU runs (+ GPUs if any)
    nice -n 10 python benchmarks/ddp_scaling.py --epochs 3 --runs 1p2t 2p1t tr2p1t
    python benchmarks/ddp_scaling.py --runs gpu1 gpu2 --rows 200000   # a machine with 2 GPUs

Prints a table and writes benchmarks/results/ddp_scaling.json (--quick: ddp_scaling_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale_rows.py beside this file

from scale_rows import (  # noqa: E402
    MODEL_SETTINGS,
    RESULTS,
    available_settings,
    child_env,
    failure,
    machine_facts,
    polymodal_cmd,
    read_metrics,
    run_polled,
    set_args,
    valid_accuracy,
    write_table,
)

CPU_RUNS = ["1p1t", "1p2t", "2p1t", "tr2p1t"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(name: str, have: set[str]) -> tuple[dict[str, str], dict[str, str], list[str] | None]:
    """(fit settings, environment additions, launcher prefix or None for `python -m polymodal`) of a run."""
    threads = {"OMP_NUM_THREADS": name[-2], "MKL_NUM_THREADS": name[-2]} if name.endswith("t") else {}
    if name in ("1p1t", "1p2t"):
        return {"train.accelerator": "cpu", "train.devices": "1"}, threads, None
    if name == "2p1t":
        return {"train.accelerator": "cpu", "train.devices": "2", "train.strategy": "ddp"}, threads, None
    if name == "tr2p1t":
        nodes = {"train.num_nodes": "1"} if "train.num_nodes" in have else {}
        rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", *rdzv]
        launcher += ["-m", "polymodal"]
        return {"train.accelerator": "cpu", "train.devices": "2", "train.strategy": "ddp"} | nodes, threads, launcher
    if name.startswith("gpu"):
        k = int(name[3:])
        return (
            {"train.accelerator": "gpu", "train.devices": str(k)} | ({"train.strategy": "ddp"} if k > 1 else {}),
            {},
            None,
        )
    raise SystemExit(f"unknown run {name!r}: use {', '.join(CPU_RUNS)} or gpuK")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2 * 10**4, help="training rows")
    ap.add_argument("--valid-rows", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--runs", nargs="+", default=None, help=f"{' '.join(CPU_RUNS)} gpuK (default: all that apply)")
    ap.add_argument("--gpus", type=int, default=None, help="GPU runs 1..N (default: torch.cuda.device_count())")
    ap.add_argument(
        "--streaming", choices=["auto", "on", "off"], default=None, help="data.streaming (default: build's)"
    )
    ap.add_argument("--num-workers", type=int, default=None, help="train.num_workers (default: the build's)")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats; each run keeps its best")
    ap.add_argument("--quick", action="store_true", help="4000 rows, 500 validation rows: smoke test")
    ap.add_argument("--out-dir", type=Path, default=None, help="tables and models (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per fit before it is killed")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.rows, args.valid_rows = 4000, 500
    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    runs = args.runs or CPU_RUNS + [f"gpu{k}" for k in range(1, gpus + 1)]
    json_path = args.json or RESULTS / ("ddp_scaling_quick.json" if args.quick else "ddp_scaling.json")
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="polymodal_ddp_"))

    machine = machine_facts()  # before the runs: the load average then
    have = available_settings()
    extra = {"train.max_epochs": str(args.epochs)}
    for path, value in (("data.streaming", args.streaming), ("train.num_workers", args.num_workers)):
        if value is not None:
            if path not in have:
                sys.exit(f"this build has no setting {path} (see `polymodal config --paths`)")
            extra[path] = str(value)
    train = write_table(out_dir, args.rows, seed=1, csv=False)["parquet"]
    valid = write_table(out_dir, args.valid_rows, seed=2, csv=False)["parquet"]
    print(f"tables and models in {out_dir}")

    def fit_once(name: str, rep: int) -> dict:
        settings, env_add, launcher = plan(name, have)
        settings = MODEL_SETTINGS | extra | settings
        model = out_dir / f"model_{name}"
        shutil.rmtree(model, ignore_errors=True)
        fit_args = ["fit", str(train), "--label", "y", "--valid", str(valid), "-o", str(model), "--restart"]
        cmd = (launcher or polymodal_cmd())[:] + fit_args + set_args(settings)
        log = out_dir / f"fit_{name}.log"
        threads = " ".join(f"{k}={v}" for k, v in env_add.items())
        print(f"{name} (repeat {rep + 1}/{args.repeats}): {' '.join(cmd[1:])}  [{threads}]")
        r = run_polled(cmd, log, env=child_env(env_add), timeout=args.timeout)
        m = read_metrics(model)
        row = {"run": name, "repeat": rep, "settings": settings, "env": env_add}
        row |= {"launcher": "torchrun" if launcher else "python -m", "ok": r["rc"] == 0 and "train_seconds" in m, **r}
        # Exactly one model folder, written by rank 0: nothing else beside it but the logs and tables.
        row["model_folders"] = sorted(p.name for p in out_dir.glob(f"*model_{name}*"))
        if row["ok"]:
            row |= {
                "train_rows": m.get("train_rows"),
                "train_seconds": m["train_seconds"],
                "rows_per_s": round(
                    m.get("train_rows", args.rows) * (m.get("epochs") or args.epochs) / m["train_seconds"], 1
                ),
                "rows_per_s_wall": round(args.rows * args.epochs / r["wall_s"], 1),
                "fit_seconds": m.get("fit_seconds"),  # the whole fit in rank 0: reading, preprocessing, training
                "epochs": m.get("epochs"),
                "valid_accuracy": valid_accuracy(m),
            }
            # Cross-check in one process, independent of how ranks reduce their metrics.
            ev = out_dir / f"eval_{name}.json"
            e = run_polled(
                polymodal_cmd("evaluate", str(model), str(valid), "-o", str(ev)), out_dir / f"eval_{name}.log"
            )
            row["evaluate_accuracy"] = json.loads(ev.read_text()).get("accuracy") if e["rc"] == 0 else None
        else:
            row["error"] = failure(r, log)
            print(f"{name} failed (rc {r['rc']}):\n{row['error']}")
        return row

    # Repeats interleave the runs (the CPU is shared: a neighbour's load hits every run alike); each run's best
    # repeat (most train rows/s) is its result, all repeats' rows/s are kept.
    tries: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(args.repeats):
        for name in runs:
            tries[name].append(fit_once(name, rep))
    results = []
    for name in runs:
        ok = [t for t in tries[name] if t["ok"]]
        best = max(ok, key=lambda t: t["rows_per_s"]) if ok else tries[name][-1]
        results.append(best | {"rows_per_s_all": [t.get("rows_per_s") for t in tries[name]]})

    # The baseline: the faster single-process CPU run (1 GPU for the GPU runs).
    singles = [r for r in results if r["ok"] and r["run"] in ("1p1t", "1p2t")]
    cpu_base = max(singles, key=lambda r: r["rows_per_s"]) if singles else None
    gpu_base = next((r for r in results if r["ok"] and r["run"] == "gpu1"), None)
    for r in results:
        base = gpu_base if r["run"].startswith("gpu") else cpu_base
        if base and r["ok"]:
            r["baseline_run"] = base["run"]
            r["speedup_vs_baseline"] = round(r["rows_per_s"] / base["rows_per_s"], 3)
            if r["valid_accuracy"] is not None and base["valid_accuracy"] is not None:
                r["accuracy_diff_vs_baseline"] = round(r["valid_accuracy"] - base["valid_accuracy"], 4)
    result = {
        "benchmark": "ddp_scaling",
        "command": " ".join(["python", "benchmarks/ddp_scaling.py", *sys.argv[1:]]),
        "note": (
            "Table: scale_rows.py's generator (8 classes from image colour, text animal and a number's sign). "
            "train.batch_size is global (each of P processes takes batch_size / P). rows_per_s = train_rows * epochs "
            "/ train_seconds as metrics.json reports it (train_rows counts the table once); rows_per_s_wall = "
            "rows * epochs / wall. valid_accuracy: metrics.json; evaluate_accuracy: `polymodal evaluate` on the "
            "validation table in one process. env: thread settings given to every process of the run."
            + (" QUICK run: smoke-test size." if args.quick else "")
        ),
        "settings": {
            "rows": args.rows,
            "valid_rows": args.valid_rows,
            "epochs": args.epochs,
            "runs": runs,
            "repeats": args.repeats,
            "fit_settings": MODEL_SETTINGS | extra,
        },  # fmt: skip
        "machine": machine | {"load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "runs": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print("| run | processes x threads | train rows/s | wall s | peak RSS MB | valid acc | evaluate acc | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        desc = f"{r['settings'].get('train.devices')} x {r['env'].get('OMP_NUM_THREADS', 'default')}"
        if not r["ok"]:
            print(f"| {r['run']} | {desc} | failed (rc {r['rc']}) | {r['wall_s']:.1f} | | | | |")
            continue
        acc, ev = r["valid_accuracy"], r.get("evaluate_accuracy")
        print(f"| {r['run']} | {desc} | {r['rows_per_s']:.0f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{'' if acc is None else f'{acc:.3f}'} | {'' if ev is None else f'{ev:.3f}'} | "
              f"{r.get('speedup_vs_baseline', '')} vs {r.get('baseline_run', '-')} |")  # fmt: skip
    print(f"wrote {json_path}")
    if args.out_dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
