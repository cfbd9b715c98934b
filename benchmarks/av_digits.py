"""AV-digits benchmark: spoken digit (FSDD + noise at 0 dB SNR) + noisy, occluded handwritten digit image.

Builds the table with ../shared/bench/make_av_digits.py (the shared protocol, so numbers compare with peers),
then fits audio-only, image-only and each fusion with scratch encoders and evaluates on FSDD's official test
split. Each entry runs in its own process so its peak memory (max RSS) is its own.

    python benchmarks/av_digits.py [--shared ../shared] [--out benchmarks/results/av_digits.json] [--max-epochs 40]

Prints a table and writes JSON. Attribution: Free Spoken Digit Dataset, Zohar Jackson et al. (CC BY-SA 4.0).
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
ENTRIES = {
    "audio only": {"fusion": "early", "ignore": ["image", "speaker"]},
    "image only": {"fusion": "early", "ignore": ["audio", "speaker"]},
    "early fusion": {"fusion": "early", "ignore": ["speaker"]},
    "late fusion": {"fusion": "late", "ignore": ["speaker"]},
    "attention fusion": {"fusion": "attention", "ignore": ["speaker"]},
}


def build_table(shared: Path, data: Path, options: list[str] | None = None) -> Path:
    """The shared script's table in `data` (built once); `options`: its noise flags for a variant of the table
    (e.g. ["--snr-db", "20"]), which then needs its own `data` folder."""
    if not (data / "test.csv").exists():
        script = shared / "bench" / "make_av_digits.py"
        fsdd = shared / "data" / "fsdd" / "recordings"
        cmd = [sys.executable, str(script), "--fsdd", str(fsdd), "--out", str(data), *(options or [])]
        subprocess.run(cmd, check=True)
    return data


def run_entry(name: str, data: Path, max_epochs: int, seed: int, modality_dropout: float = 0.0) -> dict:
    """Fit and evaluate one entry in this process; returns its metrics, time and peak memory."""
    from polymodal import MultimodalPredictor

    spec = ENTRIES[name]
    p = MultimodalPredictor(
        label="digit",
        fusion=spec["fusion"],
        ignore=spec["ignore"],
        modalities={"speaker": "categorical"},
        preprocess={"image_size": 32, "sample_rate": 8000},
        max_epochs=max_epochs,
        patience=8,
        seed=seed,
        modality_dropout=modality_dropout if spec["ignore"] == ["speaker"] else 0.0,
        progress=False,
    )
    start = time.perf_counter()
    p.fit(data / "train.csv")
    fit_s = time.perf_counter() - start
    m = p.evaluate(data / "test.csv")
    return {
        "entry": name,
        "fusion": spec["fusion"],
        "inputs": list(p.engine.schema.inputs),
        "accuracy": m["accuracy"],
        "f1_macro": m["f1_macro"],
        "valid_accuracy": p.metrics_["valid"]["accuracy"],
        "train_seconds": round(fit_s, 1),
        "epochs": p.metrics_["epochs"],
        "best_epoch": p.metrics_["best_epoch"],
        "parameters": p.info()["parameters"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test_rows": m["n"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_av_digits")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "av_digits.json")
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modality-dropout", type=float, default=0.0, help="for the fusion entries")
    ap.add_argument("--entries", nargs="*", default=list(ENTRIES))
    ap.add_argument("--entry", help=argparse.SUPPRESS)  # internal: run one entry, print JSON
    a = ap.parse_args()

    if a.entry:
        print(json.dumps(run_entry(a.entry, a.data, a.max_epochs, a.seed, a.modality_dropout)))
        return

    data = build_table(a.shared, a.data)
    results = []
    for name in a.entries:
        cmd = [sys.executable, __file__, "--entry", name, "--data", str(data), "--max-epochs", str(a.max_epochs)]
        cmd += ["--modality-dropout", str(a.modality_dropout)]
        out = subprocess.run(cmd + ["--seed", str(a.seed)], check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name:18s} acc {r['accuracy']:.4f}  macro-F1 {r['f1_macro']:.4f}  {r['train_seconds']:7.1f} s  "
              f"{r['peak_rss_mb']:7.1f} MB  epochs {r['epochs']}", flush=True)  # fmt: skip

    from rich.console import Console
    from rich.table import Table

    t = Table(title="AV-digits (FSDD 0 dB SNR + noisy occluded digits), test split")
    for c in ("entry", "accuracy", "macro-F1", "train s", "peak MB", "epochs"):
        t.add_column(c, justify="left" if c == "entry" else "right")
    for r in results:
        t.add_row(r["entry"], f"{r['accuracy']:.4f}", f"{r['f1_macro']:.4f}", f"{r['train_seconds']:.1f}",
                  f"{r['peak_rss_mb']:.0f}", str(r["epochs"]))  # fmt: skip
    Console(width=120).print(t)

    report = {
        "benchmark": "av_digits",
        "command": "python benchmarks/av_digits.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "max_epochs": a.max_epochs,
            "seed": a.seed,
            "image_size": 32,
            "sample_rate": 8000,
            "modality_dropout": a.modality_dropout,
        },
        "results": results,
    }
    from polymodal.model.artifact import write_json

    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, report)  # atomic
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
