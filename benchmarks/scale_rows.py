"""Rows vs memory and throughput: `polymodal fit` (1 epoch) and `polymodal predict` on a generated table of 10^4,
10^5 and 10^6 rows, streaming (`data.streaming=on`) and in memory (`off`, only up to --inmemory-max-rows).

The table: a short sentence, two numbers, a category and a small image path per row; label
y = 4 * colour + 2 * animal + (size > 0) (8 classes): colour (red/blue) is the image's tint, animal (cat/dog
words) is in the sentence, size a number; `price` and `shade` are noise. The images are --images distinct 16x16
PNGs written once; rows reference them at random, so the image files are few but every row still decodes its
image. Tables are written as Parquet (row groups of 8192 rows) and CSV; fit and predict read the Parquet one.
Validation is a separate fixed table of --valid-rows rows (the same for every size): `train_rows` = table size.

Each fit and predict is a subprocess (`python -m polymodal`); the peak memory is the largest sum of RSS over the
process and all its children (DataLoader workers included), polled every 0.1 s. The sum counts pages that forked
workers share with their parent more than once: an upper bound. Throughput: fit = train_rows / train_seconds
(from metrics.json; the epoch itself), train_rows / fit_seconds (the whole fit in its process: reading,
preprocessing and training; in memory the media are decoded before the epoch, streaming decodes them in it, so the
streaming-vs-in-memory goal compares this one) and rows / wall; predict = rows / wall.

Settings the build does not have yet (`polymodal config --paths`, `polymodal predict --help`) are not passed; a
streaming run on such a build is recorded as skipped.

    nice -n 10 python benchmarks/scale_rows.py                      # 10^4, 10^5, 10^6 rows
    nice -n 10 python benchmarks/scale_rows.py --quick              # 10^4 and 2*10^4 rows: smoke test
    nice -n 10 python benchmarks/scale_rows.py --rows 10000 100000 --modes off

Prints a table and writes benchmarks/results/scale_rows.json (--quick: scale_rows_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# The small model every run trains (fit --set PATH=VALUE).
MODEL_SETTINGS = {
    "train.max_epochs": "1",
    "preprocess.image_size": "16",
    "encoders.embed_dim": "32",
    "fusion.hidden": "32",
    "train.batch_size": "256",
    "train.progress": "false",
    "train.seed": "0",
}

CATS = ["cat", "kitten", "tabby"]
DOGS = ["dog", "puppy", "hound"]
ADJS = ["small", "big", "happy", "sleepy", "old", "young", "quiet", "noisy"]
PLACES = ["on the sofa", "in the garden", "by the door", "under the table", "in the sun", "near the window"]
SHADES = ["light", "dark", "mid", "pale", "deep"]
ROW_GROUP = 8192
TABLE_VERSION = 2  # in the file names: a table cached in --out-dir by an older generator is not reused


# ---- the generated table ---------------------------------------------------------------------------------------
def write_images(folder: Path, n: int, seed: int = 0) -> np.ndarray:
    """n distinct 16x16 PNGs in folder/img/, half red-tinted (colour 0), half blue (colour 1); returns the colours.

    Written once: a manifest with the same n and seed means the files are already there.
    """
    from PIL import Image

    img_dir = folder / "img"
    manifest = img_dir / "manifest.json"
    colours = np.arange(n) % 2
    if manifest.exists() and json.loads(manifest.read_text()) == {"n": n, "seed": seed}:
        return colours
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pix = rng.normal(0.5, 0.15, size=(16, 16, 3))
        pix[..., 0 if colours[i] == 0 else 2] += 0.35
        Image.fromarray((np.clip(pix, 0, 1) * 255).astype("uint8")).save(img_dir / f"{i:05d}.png")
    manifest.write_text(json.dumps({"n": n, "seed": seed}))
    return colours


def make_rows(n: int, colours: np.ndarray, seed: int):
    """A DataFrame of n rows referencing the images of `write_images` (paths relative to the table's folder)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    image = rng.integers(len(colours), size=n)
    animal = rng.integers(2, size=n)
    word = np.where(animal == 1, np.array(DOGS)[rng.integers(3, size=n)], np.array(CATS)[rng.integers(3, size=n)])
    adj, place = np.array(ADJS)[rng.integers(len(ADJS), size=n)], np.array(PLACES)[rng.integers(len(PLACES), size=n)]
    text = [f"a {a} {w} {p}" for a, w, p in zip(adj.tolist(), word.tolist(), place.tolist(), strict=True)]
    size = rng.normal(0.0, 1.0, size=n).astype("float32")
    return pd.DataFrame(
        {
            "text": text,
            "size": size,
            "price": rng.normal(10.0, 3.0, size=n).astype("float32"),
            "shade": np.array(SHADES)[rng.integers(len(SHADES), size=n)],
            "image": [f"img/{i:05d}.png" for i in image.tolist()],
            "y": (4 * colours[image] + 2 * animal + (size > 0)).astype("int64"),
        }
    )


def write_table(folder: Path, n: int, n_images: int = 1000, seed: int = 1, csv: bool = True) -> dict[str, Path]:
    """Write folder/rows_N.parquet (row groups of 8192) and rows_N.csv unless they exist; return their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    colours = write_images(folder, n_images)
    paths = {"parquet": folder / f"rows_{n}_s{seed}_v{TABLE_VERSION}.parquet"}
    if csv:
        paths["csv"] = folder / f"rows_{n}_s{seed}_v{TABLE_VERSION}.csv"
    if all(p.exists() for p in paths.values()):
        return paths
    df = make_rows(n, colours, seed)
    tmp = paths["parquet"].with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp, row_group_size=ROW_GROUP)
    tmp.replace(paths["parquet"])
    if csv:
        df.to_csv(paths["csv"].with_suffix(".csv.tmp"), index=False)
        paths["csv"].with_suffix(".csv.tmp").replace(paths["csv"])
    return paths


# ---- running polymodal and watching its memory -------------------------------------------------------------------
def polymodal_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "polymodal", *args]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every run: this checkout's polymodal first on the path, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("COLUMNS", "200")  # Typer's help is wrapped to the terminal; keep flags on one line
    return env | (extra or {})


def available_settings() -> set[str]:
    """The dotted paths this build's config tree has (`polymodal config --paths`)."""
    out = subprocess.run(
        polymodal_cmd("config", "--paths"), capture_output=True, text=True, env=child_env(), check=True
    )
    return {line.split("\t")[0].strip() for line in out.stdout.splitlines() if line.strip()}


def predict_has_streaming_flag() -> bool:
    out = subprocess.run(polymodal_cmd("predict", "--help"), capture_output=True, text=True, env=child_env())
    return "--streaming" in out.stdout


def run_polled(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 7200.0, interval: float = 0.1
) -> dict:
    """Run cmd (output to log), polling the summed RSS of it and all its children; return rc, wall and peaks in MB."""
    import psutil

    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or child_env(), cwd=ROOT)
        root = psutil.Process(proc.pid)
        peak_tree = peak_main = peak_procs = 0
        timed_out = False
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                if p.pid == root.pid:
                    peak_main = max(peak_main, rss)
            peak_tree, peak_procs = max(peak_tree, total), max(peak_procs, len(procs))
            if time.perf_counter() - start > timeout:
                timed_out = True
                for p in reversed(procs):  # children first, so none is left orphaned
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                break
            time.sleep(interval)
        rc = proc.wait()
    return {
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(peak_tree / 2**20, 1),
        "peak_rss_main_mb": round(peak_main / 2**20, 1),
        "max_processes": peak_procs,
    }


def log_tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def failure(r: dict, log: Path) -> str:
    """Why a run failed: the timeout, or the end of its log."""
    return f"timed out after {r['wall_s']:.0f} s (--timeout)" if r["timed_out"] else log_tail(log)


def brief(run: dict) -> str:
    return json.dumps({k: run.get(k) for k in ("wall_s", "peak_rss_mb", "rows_per_s")})


def set_args(settings: dict[str, str]) -> list[str]:
    return [a for path, value in settings.items() for a in ("--set", f"{path}={value}")]


def read_metrics(model: Path) -> dict:
    path = model / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def valid_accuracy(metrics: dict) -> float | None:
    """The validation accuracy in a fit's metrics.json (its `valid` block, or the last history row)."""
    for key in ("valid", "validation", "val"):
        if isinstance(metrics.get(key), dict) and "accuracy" in metrics[key]:
            return float(metrics[key]["accuracy"])
    for key in ("val_accuracy", "val_acc", "accuracy"):
        if key in metrics:
            return float(metrics[key])
    history = metrics.get("history") or []
    for row in reversed(history):
        for key in ("val_accuracy", "val_acc"):
            if key in row:
                return float(row[key])
    return None


def machine_facts() -> dict:
    import psutil
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": torch.cuda.device_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit.stdout.strip() or None,
        "nice": os.nice(0),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


# ---- the benchmark ---------------------------------------------------------------------------------------------------
def goal_checks(runs: list[dict], big: int, small: int, compare_at: int) -> list[dict]:
    """Streaming peak memory at `big` rows <= 1.3x that at `small`; streaming rows/s >= 0.8x in-memory at compare_at."""

    def get(n: int, mode: str, verb: str) -> dict | None:
        return next((r for r in runs if r["rows"] == n and r["mode"] == mode and r["verb"] == verb and r["ok"]), None)

    memory, speed = {}, {}
    for verb in ("fit", "predict"):
        a, b = get(big, "on", verb), get(small, "on", verb)
        ratio = round(a["peak_rss_mb"] / b["peak_rss_mb"], 3) if a and b else None
        memory[verb] = {"peak_rss_mb_big": a and a["peak_rss_mb"], "peak_rss_mb_small": b and b["peak_rss_mb"],
                        "ratio": ratio, "met": None if ratio is None else ratio <= 1.3}  # fmt: skip
        # fit: the whole fit in its process (reading, preprocessing, training: fit_seconds), because in memory the
        # media are decoded before the training loop and streaming decodes them inside it; the loop alone as info.
        key = "rows_per_s_fit" if verb == "fit" else "rows_per_s"
        s, m = get(compare_at, "on", verb), get(compare_at, "off", verb)
        ratio = round(s[key] / m[key], 3) if s and m and s.get(key) and m.get(key) else None
        speed[verb] = {"measure": key, "streaming": s and s.get(key), "in_memory": m and m.get(key),
                       "ratio": ratio, "met": None if ratio is None else ratio >= 0.8}  # fmt: skip
        if verb == "fit" and s and m:
            speed[verb]["ratio_training_loop_only"] = round(s["rows_per_s"] / m["rows_per_s"], 3)

    def overall(parts: dict) -> bool | None:
        mets = [p["met"] for p in parts.values()]
        return None if None in mets else all(mets)

    return [
        {
            "goal": f"streaming peak memory at {big} rows <= 1.3x that at {small} rows (fit and predict)",
            "is_issue_goal": (big, small) == (10**6, 10**4),
            "measured": memory,
            "met": overall(memory),
        },
        {
            "goal": f"streaming throughput >= 0.8x in-memory at {compare_at} rows (fit: train_rows / fit_seconds)",
            "is_issue_goal": compare_at == 10**5,
            "measured": speed,
            "met": overall(speed),
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    ap.add_argument("--quick", action="store_true", help="only 10^4 and 2*10^4 rows (smoke test)")
    ap.add_argument("--modes", nargs="+", default=["on", "off"], choices=["on", "off"], help="data.streaming values")
    ap.add_argument("--inmemory-max-rows", type=int, default=10**5, help="in-memory (off) runs only up to this size")
    ap.add_argument("--out-dir", type=Path, default=None, help="tables, images, models (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep --out-dir's tables and models afterwards")
    ap.add_argument("--images", type=int, default=1000, help="distinct images the rows reference")
    ap.add_argument("--valid-rows", type=int, default=2000)
    ap.add_argument("--num-workers", type=int, default=None, help="train.num_workers (default: the build's)")
    ap.add_argument("--chunk-rows", type=int, default=None, help="data.chunk_rows (default: the build's)")
    ap.add_argument("--no-predict", action="store_true")
    ap.add_argument("--no-csv", action="store_true", help="write the tables as Parquet only")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per fit or predict before it is killed")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [10**4, 2 * 10**4] if args.quick else sorted(args.rows)
    json_path = args.json or RESULTS / ("scale_rows_quick.json" if args.quick else "scale_rows.json")
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="polymodal_scale_"))
    out_dir.mkdir(parents=True, exist_ok=True)

    machine = machine_facts()  # before the runs: the load average then
    have = available_settings()
    predict_streaming = predict_has_streaming_flag()
    extra = {}
    for path, value in (("train.num_workers", args.num_workers), ("data.chunk_rows", args.chunk_rows)):
        if value is not None:
            if path not in have:
                sys.exit(f"this build has no setting {path} (see `polymodal config --paths`)")
            extra[path] = str(value)
    print(f"tables and models in {out_dir}; data.streaming available: {'data.streaming' in have}; "
          f"predict --streaming available: {predict_streaming}")  # fmt: skip

    start = time.perf_counter()
    valid = write_table(out_dir, args.valid_rows, args.images, seed=2, csv=False)["parquet"]
    tables = {n: write_table(out_dir, n, args.images, seed=1, csv=not args.no_csv) for n in rows}
    generate_s = round(time.perf_counter() - start, 1)
    print(f"generated tables in {generate_s} s")

    # What any run costs before it holds a row: the interpreter with torch, Lightning and polymodal's CLI imported.
    baseline = run_polled([sys.executable, "-c", "import torch, lightning, polymodal.cli"], out_dir / "baseline.log")
    print(f"baseline (imports only): {baseline['peak_rss_mb']} MB")

    runs: list[dict] = []
    for n in rows:
        for mode in args.modes:
            base = {"rows": n, "mode": mode, "table": tables[n]["parquet"].name}
            if mode == "off" and n > args.inmemory_max_rows:
                continue
            if mode == "on" and "data.streaming" not in have:
                for verb in ("fit", "predict"):
                    runs.append(base | {"verb": verb, "ok": False, "skipped": "this build has no data.streaming"})
                continue
            settings = MODEL_SETTINGS | extra | ({"data.streaming": mode} if "data.streaming" in have else {})
            model = out_dir / f"model_{n}_{mode}"
            shutil.rmtree(model, ignore_errors=True)
            cmd = polymodal_cmd("fit", str(tables[n]["parquet"]), "--label", "y", "--valid", str(valid),
                                "-o", str(model), "--restart", *set_args(settings))  # fmt: skip
            log = out_dir / f"fit_{n}_{mode}.log"
            r = run_polled(cmd, log, timeout=args.timeout)
            m = read_metrics(model)
            ok = r["rc"] == 0 and "train_seconds" in m
            fit = base | {"verb": "fit", "ok": ok, **r}
            if ok:
                fit |= {
                    "train_rows": m.get("train_rows"),
                    "train_seconds": m["train_seconds"],
                    "rows_per_s": round(m.get("train_rows", n) / m["train_seconds"], 1),
                    "fit_seconds": m.get("fit_seconds"),
                    "rows_per_s_fit": round(m.get("train_rows", n) / m["fit_seconds"], 1)
                    if m.get("fit_seconds")
                    else None,
                    "rows_per_s_wall": round(n / r["wall_s"], 1),
                    "valid_accuracy": valid_accuracy(m),
                }
            else:
                fit["error"] = failure(r, log)
                print(f"fit {n} {mode} failed (rc {r['rc']}):\n{fit['error']}")
            runs.append(fit)
            print(f"fit     {n:>8} {mode:>3}: {brief(fit)}")
            if args.no_predict or not ok:
                continue
            preds = out_dir / f"preds_{n}_{mode}.csv"
            preds.unlink(missing_ok=True)
            flag = ["--streaming", mode] if predict_streaming else []
            log = out_dir / f"predict_{n}_{mode}.log"
            cmd = polymodal_cmd("predict", str(model), str(tables[n]["parquet"]), "-o", str(preds), *flag)
            r = run_polled(cmd, log, timeout=args.timeout)
            ok = r["rc"] == 0 and preds.exists()
            pred = base | {"verb": "predict", "ok": ok, "streaming_flag": bool(flag), **r}
            if ok:
                pred["rows_per_s"] = round(n / r["wall_s"], 1)
                with open(preds) as f:
                    pred["rows_written"] = sum(1 for _ in f) - 1  # minus the header; quoted newlines: none here
                pred["all_rows_written"] = pred["rows_written"] == n
            else:
                pred["error"] = failure(r, log)
                print(f"predict {n} {mode} failed (rc {r['rc']}):\n{pred['error']}")
            runs.append(pred)
            print(f"predict {n:>8} {mode:>3}: {brief(pred)}")

    sizes = sorted({r["rows"] for r in runs})
    both = [n for n in sizes if any(r["rows"] == n and r["mode"] == "off" for r in runs)]
    checks = goal_checks(runs, sizes[-1], sizes[0], (10**5 if 10**5 in both else both[-1]) if both else sizes[0])
    result = {
        "benchmark": "scale_rows",
        "command": " ".join(["python", "benchmarks/scale_rows.py", *sys.argv[1:]]),
        "note": " ".join(
            [
                "Generated table: a text sentence, 2 numeric (size: its sign is in the label; price: noise),",
                "1 categorical (shade: noise), 1 image path; label y = 4 * image colour + 2 * animal in the text",
                f"+ (size > 0) (8 classes). {args.images} distinct 16x16 PNGs written once, rows reference them at",
                f"random. Parquet with row groups of {ROW_GROUP} rows. Validation: a separate fixed table of",
                f"{args.valid_rows} rows. peak_rss_mb: the largest sum of RSS over the process tree (DataLoader",
                "workers included; shared pages counted once per process, so an upper bound), polled every 0.1 s.",
                "fit rows_per_s = train_rows / train_seconds (the training loop only); rows_per_s_fit = train_rows /",
                "fit_seconds (the whole fit in its process: reading, preprocessing, training; the streaming vs",
                "in-memory goal uses this); rows_per_s_wall = rows / wall (interpreter startup included); predict",
                "rows_per_s = rows / wall.",
                *(["QUICK run: smoke-test sizes, not the issue's."] if args.quick else []),
            ]
        ),
        "settings": {
            "rows": rows,
            "modes": args.modes,
            "inmemory_max_rows": args.inmemory_max_rows,
            "fit_settings": MODEL_SETTINGS | extra,
            "data.streaming_available": "data.streaming" in have,
            "predict_streaming_flag_available": predict_streaming,
            "images": args.images,
            "valid_rows": args.valid_rows,
            "row_group_rows": ROW_GROUP,
            "poll_interval_s": 0.1,
            "timeout_s": args.timeout,
            "generate_tables_s": generate_s,
        },
        "baseline_peak_rss_mb": baseline["peak_rss_mb"],
        "machine": machine | {"load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
        "goal_checks": checks,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print("| rows | mode | verb | wall s | peak RSS MB (tree) | peak RSS MB (main) | rows/s | rows/s (whole fit) "
          "| valid acc |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        if not r["ok"]:
            why = r.get("skipped") or ("timed out" if r.get("timed_out") else f"failed (rc {r.get('rc')})")
            print(f"| {r['rows']} | {r['mode']} | {r['verb']} | {why} | | | | | |")
            continue
        acc = "" if r.get("valid_accuracy") is None else f"{r['valid_accuracy']:.3f}"
        print(f"| {r['rows']} | {r['mode']} | {r['verb']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_main_mb']:.0f} | {r['rows_per_s']:.0f} | {r.get('rows_per_s_fit') or ''} | "
              f"{acc} |")  # fmt: skip
    for c in checks:
        print(f"goal: {c['goal']}: met={c['met']} {json.dumps({k: v['ratio'] for k, v in c['measured'].items()})}")
    print(f"wrote {json_path}")
    if not args.keep and args.out_dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
