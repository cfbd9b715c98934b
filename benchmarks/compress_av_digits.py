"""Compression trade-offs on AV-digits: one early-fusion model (audio + image, scratch encoders) and every smaller
or faster variant of it, side by side: PyTorch fp32, ONNX fp32, ONNX int8 dynamic, ONNX int8 static, PyTorch int8,
pruned 50 % / 80 % (global unstructured magnitude, fine-tuned) with and without int8, structured 50 %.

For each: test accuracy and macro-F1 (FSDD's official test split), file size, latency per row at batch 1 and
batch 32 with 2 threads (p50 / p99 over repeated calls, from decoded media to probabilities: the preprocessing
is included on both sides, since the ONNX graph holds it; file decoding is the same for all and left out), and
the peak memory of a process that loads the variant, evaluates and times it (each variant in its own process).

    nice -n 10 python benchmarks/compress_av_digits.py [--shared ../shared] [--max-epochs 15] [--finetune-epochs 2]

Prints a table and writes benchmarks/results/compress_av_digits.json.
Attribution: Free Spoken Digit Dataset, Zohar Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
THREADS = 2


def train(data: Path, folder: Path, max_epochs: int, seed: int) -> None:
    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(
        label="digit", fusion="early", ignore=["speaker"], preprocess={"image_size": 32, "sample_rate": 8000},
        max_epochs=max_epochs, patience=6, seed=seed, modality_dropout=0.25, progress=False,
    )  # fmt: skip
    p.fit(data / "train.csv")
    p.save(folder)


def make_variants(base: Path, work: Path, data: Path, finetune_epochs: int, rows: int):
    """Yield every variant (name, {path: model folder or .onnx, runtime, ...}), built from the one trained model
    when its turn comes (the cheap exports first). Fine-tuning and int8 calibration use `rows` training rows (a
    fixed random sample, to bound the run's time)."""
    import pandas as pd

    from polymodal.optimize.compress import compress
    from polymodal.optimize.export import export_model

    train_csv = data / f"train_{rows}.csv"  # beside train.csv: the same relative media paths
    pd.read_csv(data / "train.csv").sample(n=rows, random_state=0).to_csv(train_csv, index=False)

    def folder(name: str, **kw) -> dict:
        out = work / name.replace(" ", "_").replace("%", "").replace("+", "")
        t = time.perf_counter()
        rec = compress(base, out, calibration=train_csv, finetune_epochs=finetune_epochs, **kw)
        return {"path": out, "runtime": "torch", "make_s": round(time.perf_counter() - t, 1),
                "parameters": rec["after"]["parameters"], "nonzero": rec["after"]["nonzero"]}  # fmt: skip

    def graph(name: str, src: Path, q: str | None) -> dict:
        out = work / (name.replace(" ", "_").replace("%", "") + ".onnx")
        t = time.perf_counter()
        export_model(src, out, quantize=q, calibration=train_csv if q == "static" else None)
        return {"path": out, "runtime": "onnx", "make_s": round(time.perf_counter() - t, 1)}

    yield "pytorch fp32", {"path": base, "runtime": "torch"}
    yield "onnx fp32", graph("onnx fp32", base, None)
    yield "onnx int8 dynamic", graph("onnx int8 dynamic", base, "dynamic")
    yield "onnx int8 static", graph("onnx int8 static", base, "static")
    yield "pytorch int8", folder("pytorch int8", quantize="int8")
    for ratio in (50, 80):
        pruned = folder(f"pruned {ratio}%", prune=ratio / 100)
        yield f"pruned {ratio}%", pruned
        yield f"pruned {ratio}% onnx int8", graph(f"pruned {ratio}% onnx int8", pruned["path"], "dynamic")
        yield f"pruned {ratio}% + int8", folder(f"pruned {ratio}% + int8", prune=ratio / 100, quantize="int8")
    structured = folder("structured 50%", prune=0.5, structured=True)
    yield "structured 50%", structured
    yield "structured 50% onnx int8", graph("structured 50% onnx int8", structured["path"], "dynamic")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else (path / "model.safetensors").stat().st_size


def measure(path: Path, runtime: str, data: Path, reference: Path | None, repeats: int) -> dict:
    """In its own process: load, evaluate, time batch 1 and batch 32 from decoded media; peak RSS."""
    import numpy as np

    if runtime == "torch":
        import torch

        torch.set_num_threads(THREADS)
    from polymodal import MultimodalPredictor
    from polymodal.data.io import read_table

    start = time.perf_counter()
    if runtime == "onnx":
        p = MultimodalPredictor._load_onnx(path, None, threads=THREADS)  # load(runtime="onnx"), 2 threads
    else:
        p = MultimodalPredictor.load(path)
    load_s = time.perf_counter() - start
    loaded_mb = _rss_mb()  # the loaded variant, before the test rows are decoded (that costs the same for all)
    m = p.evaluate(data / "test.csv")
    df, base_dir = read_table(data / "test.csv")
    engine = p.engine
    media, frozen, _ = engine.pipeline.decode(df, base_dir)
    from polymodal.model.pipeline import take_rows

    def call(idx: np.ndarray) -> np.ndarray:
        d, me, fr = take_rows(df, media, frozen, idx)
        return engine.outputs(engine.pipeline.features(d, me, fr), batch_size=len(idx))

    out: dict = {}
    for batch, calls in ((1, repeats), (32, max(10, repeats // 8))):
        call(np.arange(batch))  # warm-up
        times = []
        for i in range(calls):
            idx = (np.arange(batch) + i * batch) % len(df)
            t = time.perf_counter()
            call(idx)
            times.append((time.perf_counter() - t) * 1000 / batch)
        out[f"b{batch}_p50_ms"] = round(float(np.percentile(times, 50)), 3)
        out[f"b{batch}_p99_ms"] = round(float(np.percentile(times, 99)), 3)
    probs = call(np.arange(len(df)))
    if reference is not None and reference.exists():
        ref = np.load(reference)
        out["max_abs_diff_vs_pytorch_fp32"] = float(np.abs(probs - ref).max())
        out["argmax_agreement_vs_pytorch_fp32"] = float((probs.argmax(1) == ref.argmax(1)).mean())
    else:
        np.save(reference, probs)
    return {
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "file_bytes": file_size(path),
        "load_s": round(load_s, 2),
        "torch_imported": "torch" in sys.modules,
        "rss_after_load_mb": loaded_mb,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **out,
    }


def _rss_mb() -> float:
    """This process's resident memory now (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_av_digits")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_compress_av_digits")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress_av_digits.json")
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--calibration-rows", type=int, default=1000, help="training rows for fine-tune / calibration")
    ap.add_argument("--repeats", type=int, default=200, help="batch-1 calls per variant (batch 32: repeats / 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # internal: path runtime reference
    a = ap.parse_args()
    if a.measure:
        path, runtime, ref = a.measure
        print(json.dumps(measure(Path(path), runtime, a.data, Path(ref), a.repeats)))
        return

    from av_digits import build_table

    t0 = time.perf_counter()
    data = build_table(a.shared, a.data)
    a.work.mkdir(parents=True, exist_ok=True)
    base = a.work / "fp32"
    if not (base / "config.json").exists():
        t = time.perf_counter()
        train(data, base, a.max_epochs, a.seed)
        print(f"trained the early-fusion model in {time.perf_counter() - t:.0f} s", flush=True)
    variants = make_variants(base, a.work, data, a.finetune_epochs, a.calibration_rows)
    ref = a.work / "reference_probs.npy"
    ref.unlink(missing_ok=True)
    results: list[dict] = []
    for name, v in variants:  # "pytorch fp32" first: it writes the reference probabilities
        cmd = [sys.executable, __file__, "--data", str(data), "--repeats", str(a.repeats)]
        cmd += ["--measure", str(v["path"]), v["runtime"], str(ref)]
        env = os.environ | {"OMP_NUM_THREADS": str(THREADS)}
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
        r = {"variant": name, "runtime": v["runtime"]} | {k: x for k, x in v.items() if k not in ("path", "runtime")}
        results.append(r | json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:26s} acc {r['accuracy']:.4f}  F1 {r['f1_macro']:.4f}  {r['file_bytes'] / 1e6:6.2f} MB  "
              f"b1 {r['b1_p50_ms']:.2f}/{r['b1_p99_ms']:.2f} ms  b32 {r['b32_p50_ms']:.2f}/{r['b32_p99_ms']:.2f} "
              f"ms/row  {r['rss_after_load_mb']:.0f}/{r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        write_report(a, results, {}, t0, complete=False)  # so far: a cut-off run still leaves its numbers

    by = {r["variant"]: r for r in results}
    fp32, onnx32 = by["pytorch fp32"], by["onnx fp32"]
    best_int8 = by["onnx int8 dynamic"]
    goals = {
        "int8_file_over_fp32": round(best_int8["file_bytes"] / onnx32["file_bytes"], 3),
        "int8_file_goal": "<= 0.3",
        "int8_static_file_over_fp32": round(by["onnx int8 static"]["file_bytes"] / onnx32["file_bytes"], 3),
        "pytorch_int8_file_over_fp32": round(by["pytorch int8"]["file_bytes"] / fp32["file_bytes"], 3),
        "int8_accuracy_drop_points": round(100 * (fp32["accuracy"] - best_int8["accuracy"]), 2),
        "int8_static_accuracy_drop_points": round(100 * (fp32["accuracy"] - by["onnx int8 static"]["accuracy"]), 2),
        "accuracy_goal": "within 1 point",
        "onnx_int8_b1_latency_over_pytorch_fp32": round(best_int8["b1_p50_ms"] / fp32["b1_p50_ms"], 3),
        "onnx_int8_static_b1_latency_over_pytorch_fp32": round(
            by["onnx int8 static"]["b1_p50_ms"] / fp32["b1_p50_ms"], 3
        ),
        "latency_goal": "<= 0.5",
    }

    from rich.console import Console
    from rich.table import Table

    t = Table(title="AV-digits early fusion: compression trade-offs (test split, 2 threads)")
    for c in ("variant", "acc", "macro-F1", "MB", "b1 p50", "b1 p99", "b32 p50", "b32 p99", "loaded MB", "peak MB"):
        t.add_column(c, justify="left" if c == "variant" else "right")
    for r in results:
        t.add_row(r["variant"], f"{r['accuracy']:.4f}", f"{r['f1_macro']:.4f}", f"{r['file_bytes'] / 1e6:.2f}",
                  f"{r['b1_p50_ms']:.2f}", f"{r['b1_p99_ms']:.2f}", f"{r['b32_p50_ms']:.2f}", f"{r['b32_p99_ms']:.2f}",
                  f"{r['rss_after_load_mb']:.0f}", f"{r['peak_rss_mb']:.0f}")  # fmt: skip
    Console(width=140).print(t)
    print(json.dumps(goals, indent=1))

    write_report(a, results, goals, t0, complete=True)


def write_report(a: argparse.Namespace, results: list[dict], goals: dict, t0: float, complete: bool) -> None:
    import torch

    from polymodal.model.artifact import write_json

    report = {
        "benchmark": "compress_av_digits",
        "command": "nice -n 10 python benchmarks/compress_av_digits.py " + " ".join(sys.argv[1:]),
        "complete": complete,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "note": "shared 2-core machine (other jobs running): latencies are noisy",
        },  # fmt: skip
        "settings": {
            "max_epochs": a.max_epochs,
            "finetune_epochs": a.finetune_epochs,
            "calibration_rows": a.calibration_rows,
            "seed": a.seed,
            "threads": THREADS,
            "batch1_calls": a.repeats,
            "batch32_calls": max(10, a.repeats // 8),
            "image_size": 32,
            "sample_rate": 8000,
            "modality_dropout": 0.25,
            "latency": "ms per row, decoded media -> probabilities (preprocessing included), p50/p99 over calls",
            "file_size": "model.safetensors for PyTorch folders, the .onnx file for graphs",
        },  # fmt: skip
        "goals": goals,
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, report)  # atomic
    if complete:
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
