"""`polymodal tune` on AV-digits: the same study with pruning and without (same sampler seed), then the best
configuration re-fit with several seeds and tested on FSDD's official test split.

    python benchmarks/tune_av_digits.py [--trials 40] [--max-epochs 40] [--train-rows N] [--seeds 3]

Prints a table and writes benchmarks/results/tune_av_digits.json and the optimization history of the pruned
study as benchmarks/results/tune_av_digits_history.png. Anything below the full protocol (40 + 40 trials, 40
epochs, all 2,250 training rows) is listed under "reduced" in the JSON.
Attribution: Free Spoken Digit Dataset, Zohar Jackson et al. (CC BY-SA 4.0).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from av_digits import build_table  # noqa: E402  (the shared AV-digits table, built one way)

ROOT = Path(__file__).resolve().parents[1]
ARM_KEYS = ("search_seconds", "wall_seconds", "epochs_trained", "states", "best", "decodes", "preparations")
FULL = {"trials": 40, "max_epochs": 40, "train_rows": 2250, "seeds": 3}


def space(max_epochs: int, patience: int) -> dict:
    return {
        "data.ignore": ["speaker"],
        "data.modalities": {"speaker": "categorical"},
        "preprocess.image_size": 32,  # the table's images are 32x32
        "preprocess.sample_rate": 8000,
        "train.max_epochs": max_epochs,
        "train.patience": patience,
        "fusion.name": {"type": "categorical", "choices": ["early", "late", "gmu", "attention"]},
        "train.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
        "encoders.embed_dim": {"type": "categorical", "choices": [64, 128]},
        "fusion.hidden": {"type": "categorical", "choices": [64, 128, 256]},
        "fusion.dropout": {"type": "float", "low": 0.0, "high": 0.4},
        "train.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [32, 64]},
        "train.modality_dropout": {"type": "float", "low": 0.0, "high": 0.4},
    }


def subsample(data: Path, rows: int | None) -> Path:
    """A stratified subset of the training table, beside it (so its relative file paths still resolve)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    if rows is None:
        return data / "train.csv"
    df = pd.read_csv(data / "train.csv")
    if rows >= len(df):
        return data / "train.csv"
    sub, _ = train_test_split(df, train_size=rows, stratify=df["digit"], random_state=0)
    path = data / f"train_{rows}.csv"
    sub.sort_index().to_csv(path, index=False)
    return path


def search_seconds(folder: Path) -> float:
    """From the first trial's start to the last trial's end, read from the study's storage."""
    import optuna

    trials = optuna.load_study(study_name="polymodal-tune", storage=f"sqlite:///{folder / 'study.db'}").get_trials()
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return round((end - start).total_seconds(), 1)


def epochs_trained(folder: Path) -> int:
    """Epochs every trial reported, read from the study's storage: the pruning saving that CPU load cannot skew."""
    import optuna

    trials = optuna.load_study(study_name="polymodal-tune", storage=f"sqlite:///{folder / 'study.db'}").get_trials()
    return sum(len(t.intermediate_values) for t in trials)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_av_digits")
    ap.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_tune_av_digits")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune_av_digits.json")
    ap.add_argument("--trials", type=int, default=FULL["trials"])
    ap.add_argument("--max-epochs", type=int, default=FULL["max_epochs"])
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--train-rows", type=int, default=None, help="stratified subset of the 2,250 training rows")
    ap.add_argument("--seeds", type=int, default=FULL["seeds"])
    ap.add_argument("--seed", type=int, default=0, help="TPE sampler seed (the same for both studies)")
    ap.add_argument("--pruner-startup", type=int, default=3, help="trials the median pruner waits for")
    ap.add_argument("--reuse-runs", action="store_true", help="keep finished studies in --runs (times from storage)")
    a = ap.parse_args()

    from polymodal.model.artifact import write_json
    from polymodal.studies.tune import tune
    from polymodal.studies.tune_report import plot_png

    data = build_table(a.shared, a.data)
    train = subsample(data, a.train_rows)
    if a.runs.exists() and not a.reuse_runs:
        shutil.rmtree(a.runs)  # fresh studies: this measures a whole search, not a resume
    sp = space(a.max_epochs, a.patience)
    # Warm-up outside the timed studies (imports, librosa's first call), so the first study does not pay it.
    from polymodal.studies.tune import SharedData, base_config, make_predictor, trial_config

    warm = {k: v for k, v in sp.items() if not (isinstance(v, dict) and "type" in v)}
    SharedData(train, None).prepare(make_predictor(trial_config(base_config(None, "digit"), warm)))
    arms = {}
    for name, pruner in (("pruned", "median"), ("unpruned", "none")):
        start = time.perf_counter()
        s = tune(train, "digit", a.runs / name, trials=a.trials, space=sp, pruner=pruner, seed=a.seed,
                 pruner_startup=a.pruner_startup,
                 log_fn=lambda m, n=name: print(f"[{n}] {m}", flush=True))  # fmt: skip
        arms[name] = s | {
            "wall_seconds": round(time.perf_counter() - start, 1),
            "search_seconds": search_seconds(a.runs / name),
            "epochs_trained": epochs_trained(a.runs / name),
        }
        print(f"{name}: {arms[name]['wall_seconds']} s, states {s['states']}, best {s['best']}", flush=True)

    import optuna

    study = optuna.load_study(study_name="polymodal-tune", storage=f"sqlite:///{a.runs / 'pruned' / 'study.db'}")
    png = a.out.with_name("tune_av_digits_history.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(plot_png("history", study))

    # The best configuration over both studies, re-fit with several seeds and tested.
    best_arm = max(arms, key=lambda n: arms[n]["best"]["value"])
    params = arms[best_arm]["best"]["params"]
    from polymodal.config import Config

    tests = []
    for seed in range(a.seeds):
        cfg = Config.from_dict({})
        fixed = {k: v for k, v in sp.items() if not isinstance(v, dict) or "type" not in v}
        for path, value in (
            fixed | params | {"data.label": "digit", "train.seed": seed, "train.progress": False}
        ).items():
            cfg.set(path, value)
        p = make_predictor(cfg)
        p.fit(train)
        m = p.evaluate(data / "test.csv")
        tests.append({"seed": seed, "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                      "train_seconds": p.metrics_["train_seconds"], "epochs": p.metrics_["epochs"]})  # fmt: skip
        print(f"re-fit seed {seed}: test accuracy {m['accuracy']:.4f}", flush=True)
    accs = [t["accuracy"] for t in tests]
    mean = statistics.mean(accs)
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    # The search's own span (first trial's start to last trial's end, from the storage) is what both arms share
    # even when a study was finished by an earlier run (--reuse-runs); the wall of this run is kept beside it.
    ratio = arms["pruned"]["search_seconds"] / arms["unpruned"]["search_seconds"]
    epoch_ratio = arms["pruned"]["epochs_trained"] / arms["unpruned"]["epochs_trained"]

    reduced = {k: getattr(a, k) for k in FULL if getattr(a, k) is not None and getattr(a, k) != FULL[k]}
    if a.train_rows is None:
        reduced.pop("train_rows", None)
    reduced |= {"patience": a.patience, "pruner_startup": a.pruner_startup} if reduced else {}
    report = {
        "benchmark": "tune_av_digits",
        "command": "python benchmarks/tune_av_digits.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "full_protocol": FULL,
        "reduced": reduced,
        "space": sp,
        "arms": {n: {k: s[k] for k in ARM_KEYS} for n, s in arms.items()},  # fmt: skip
        "pruned_over_unpruned_search_seconds": round(ratio, 3),
        "pruned_over_unpruned_epochs": round(epoch_ratio, 3),
        "goal_pruned_ratio": 0.5,
        "best_from": best_arm,
        "refit": tests,
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
        "goal_test_accuracy": 0.975,
        "history_png": str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png),
    }
    write_json(a.out, report)

    from rich.console import Console
    from rich.table import Table

    t = Table(title="polymodal tune on AV-digits")
    for c in ("study", "search s", "epochs", "complete", "pruned", "best valid acc"):
        t.add_column(c)
    for n, s in arms.items():
        t.add_row(n, f"{s['search_seconds']:.0f}", str(s["epochs_trained"]), str(s["states"].get("COMPLETE", 0)),
                  str(s["states"].get("PRUNED", 0)), f"{s['best']['value']:.4f}")  # fmt: skip
    Console(width=120).print(t)
    print(f"pruned / unpruned search time: {ratio:.2f} (goal <= 0.5), epochs trained {epoch_ratio:.2f}; "
          f"best config re-fit x{a.seeds}: test accuracy "
          f"{mean:.4f} +/- {std:.4f} (goal >= 0.975); reduced: {reduced or 'nothing'}")  # fmt: skip
    print(f"wrote {a.out} and {png}")


if __name__ == "__main__":
    main()
