"""`polymodal compare` on AV-digits: spoken digit (FSDD + noise at 0 dB SNR) + noisy, occluded handwritten digit.

Builds the table with ../shared/bench/make_av_digits.py (the shared protocol), then runs the whole leaderboard
(both unimodal baselines, every fusion, the late ensembles) over K seeds with robustness, and writes
benchmarks/results/compare_av_digits.json and a PNG of the robustness curves. The compare folder (models,
report.html) goes to --runs; re-running resumes it.

    python benchmarks/compare_av_digits.py [--shared ../shared] [--seeds 3] [--fusions all] [--max-epochs 40]

Attribution: Free Spoken Digit Dataset, Zohar Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from av_digits import build_table  # noqa: E402  (the shared AV-digits table, built one way)

FULL = {"seeds": 3, "fusions": "all", "max_epochs": 40, "patience": 8, "noise_levels": 5}


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU only, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run_benchmark(
    name: str,
    args: argparse.Namespace,
    train: Path,
    test: Path,
    label: str,
    valid: Path | None = None,
    notes: dict | None = None,
    full: dict | None = None,
    **options: object,
) -> dict:
    """Run the compare, print its leaderboard, write the benchmark JSON (with `notes`) and the robustness PNG."""
    from rich.console import Console

    from polymodal.evaluation.report import average_robustness
    from polymodal.model.artifact import write_json
    from polymodal.studies.compare import compare
    from polymodal.studies.leaderboard import leaderboard_table
    from polymodal.studies.report import compare_robustness_png

    console = Console(width=150)
    start = time.perf_counter()
    say = lambda m: console.print(m, highlight=False)  # noqa: E731
    common = dict(
        test=test, valid=valid, fusions=args.fusions, noise_levels=args.noise_levels, noise_rows=args.noise_rows,
        log_fn=say, max_epochs=args.max_epochs, patience=args.patience, batch_size=args.batch_size,
        accelerator=args.accelerator,
        modality_dropout=args.modality_dropout, **options,
    )  # fmt: skip
    if args.only_seed is not None:  # one process of --parallel: its seed's entries, no gathering
        compare(train, label, args.runs, seeds=[args.only_seed], report=False, **common)
        return {}
    if args.parallel:
        # Each seed in its own process at once (the entries of a seed are independent of other seeds), then
        # the compare below finds every entry finished and only gathers them.
        rest = list(range(args.seeds))
        if options.get("preset") == "pretrained":
            # Frozen encoders: seed 0 runs first, alone, and fills the feature cache (the encoder pass and the
            # noisy copies); the other seeds then read it instead of each running the encoders at once.
            compare(train, label, args.runs, seeds=[0], report=False, **common)
            rest = rest[1:]
        threads = str(max(1, (os.cpu_count() or 1) // max(1, len(rest))))
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        argv = [a for a in sys.argv[1:] if a != "--parallel"]
        procs = [subprocess.Popen([sys.executable, sys.argv[0], *argv, "--only-seed", str(k)], env=env)
                 for k in rest]  # fmt: skip
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a seed's process failed; re-run to resume")
    board = compare(train, label, args.runs, seeds=args.seeds, **common)
    wall = time.perf_counter() - start
    console.print(leaderboard_table(board))
    settings = {
        k: getattr(args, k)
        for k in ("seeds", "fusions", "max_epochs", "patience", "batch_size", "noise_levels", "noise_rows")
    }
    settings |= {"modality_dropout": args.modality_dropout} | {k: v for k, v in options.items()}
    # The settings below the full protocol (FULL, plus the script's own `full` ones, e.g. NLVR's image size).
    full = FULL | (full or {})
    settings |= {k: v for k, v in (notes or {}).items() if k in full}
    reduced = {k: settings[k] for k in full if settings[k] != full[k]}
    report = {
        "benchmark": name,
        "command": f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": device(),
        },  # fmt: skip
        "settings": settings,
        "reduced": reduced or None,
        "parallel_seeds": bool(args.parallel),
        "wall_seconds": round(wall, 1),
        "entries_seconds_sum": board["wall_seconds_total"],
        "encoder_pass_seconds": board["encoder_pass_seconds"],
        # Goal < 1.5 with frozen encoders; scratch encoders train end to end in every entry, so far above.
        "wall_over_encoder_pass": round(wall / board["encoder_pass_seconds"], 2)
        if board["encoder_pass_seconds"]
        else None,
        "feature_cache": board["feature_cache"],
        "metric": board["metric"],
        **(notes or {}),
        "leaderboard": board["leaderboard"],
        "robustness_over": "mean of the seeds",
        "robustness": {
            r["entry"]: {
                "clean": a["clean"],
                "missing": a["missing"],
                "permutation": a["permutation"],
                "noise": {
                    i: {"scores": v["scores"], "relative_robustness": v["relative_robustness"]}
                    for i, v in a.get("noise", {}).items()
                },
            }
            for r in board["leaderboard"]
            for a in [average_robustness([x for x in board["results"] if x["entry"] == r["entry"]])]
        },  # fmt: skip
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)  # atomic; NaN (a std over one seed) becomes null
    png = compare_robustness_png(board, args.out.with_name(args.out.stem + "_robustness.png"))
    console.print(f"wrote {args.out}{'' if png is None else f' and {png}'}; report: {Path(args.runs) / 'report.html'}")
    return report


def arguments(default_runs: str, default_out: str, doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / default_runs)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / default_out)
    ap.add_argument("--seeds", type=int, default=FULL["seeds"])
    ap.add_argument("--fusions", default=FULL["fusions"])
    ap.add_argument("--max-epochs", type=int, default=FULL["max_epochs"])
    ap.add_argument("--patience", type=int, default=FULL["patience"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--noise-levels", type=int, default=FULL["noise_levels"])
    ap.add_argument("--noise-rows", type=int, default=1000, help="noise curves on a fixed sample of test rows")
    ap.add_argument("--modality-dropout", type=float, default=0.0)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--parallel", action="store_true", help="run the seeds in parallel processes, then gather")
    ap.add_argument("--only-seed", type=int, help=argparse.SUPPRESS)
    return ap


def main() -> None:
    ap = arguments("polymodal_compare_av_digits", "compare_av_digits.json", __doc__)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_av_digits")
    a = ap.parse_args()
    data = build_table(a.shared, a.data)
    run_benchmark(
        "compare_av_digits", a, data / "train.csv", data / "test.csv", "digit", ignore=["speaker"],
        preprocess={"image_size": 32, "sample_rate": 8000},
    )  # fmt: skip


if __name__ == "__main__":
    main()
