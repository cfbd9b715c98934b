"""A compare's files and leaderboard: the arrays and CSVs it writes (atomically), the finished-entry records that
let an interrupted compare resume, the ranking over seeds with spreads and intervals, the verdict, the table."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polymodal.files import atomic_open, atomic_path
from polymodal.model.artifact import read_json
from polymodal.studies.entries import Entry
from polymodal.tasks import Task

log = logging.getLogger("polymodal")

RESULT, OUTPUTS, TARGETS = "compare_result.json", "test_outputs.npy", "test_targets.npy"
LEADERBOARD = "leaderboard"
REPORT = "report.html"


# ---- files --------------------------------------------------------------------------------------------------
def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def settings_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def used_folders(config: Any) -> dict[str, str]:
    """The fitted model folders a config starts from or reads (encoders.init_from, encoders.readout), each with a
    fingerprint that changes when the folder is fitted again: part of the settings hash, so an entry fitted on an
    older branch is redone, not resumed."""
    from polymodal.encoders.pretrained import fingerprint_folder

    named = {**config.encoders.init_from, **config.encoders.readout}.values()
    return {str(f): fingerprint_folder(Path(f)) if Path(f).is_dir() else "missing" for f in sorted(set(named))}


def finished_result(folder: Path, settings: str) -> dict | None:
    """The entry's saved result if it was finished with these settings (else it is redone)."""
    path = folder / RESULT
    if not path.exists():
        return None
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if result.get("settings") == settings else None


# ---- the leaderboard ----------------------------------------------------------------------------------------
def mean(values: list) -> float:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")


def spread(values: list[float]) -> tuple[float, float]:
    """(standard deviation, half-width of the 95 % t-interval of the mean); NaN with one seed."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    from scipy import stats

    std = float(v.std(ddof=1))
    return std, float(stats.t.ppf(0.975, len(v) - 1) * std / np.sqrt(len(v)))


def aggregate(results: list[dict], entries: list[Entry], metric: str, higher: bool) -> list[dict]:
    """One ranked row per entry: mean, std and 95 % interval over seeds, costs, robustness per input."""
    rows = []
    all_inputs = list(dict.fromkeys(n for e in entries for n in e.inputs))
    for e in entries:
        rs = [r for r in results if r["entry"] == e.name]
        if not rs:
            continue
        scores = [r["metrics"][metric] for r in rs]
        std, ci = spread(scores)
        row: dict[str, Any] = {"rank": 0, "entry": e.name, "kind": e.kind, "inputs": "+".join(e.inputs)}
        row |= {"seeds": len(rs), f"{metric}_mean": mean(scores), f"{metric}_std": std, f"{metric}_ci95": ci}
        if "f1_macro" in rs[0]["metrics"]:
            f1 = [r["metrics"]["f1_macro"] for r in rs]
            row |= {"f1_macro_mean": mean(f1), "f1_macro_std": spread(f1)[0]}
        row |= {
            "parameters": int(mean([r["parameters"] for r in rs])),
            "train_seconds": round(mean([r["train_seconds"] for r in rs]), 2),
            "infer_ms_per_sample": round(mean([r["infer_ms_per_sample"] for r in rs]), 4),
            "peak_mem_mb": round(mean([r["peak_mem_mb"] for r in rs]), 1),
        }
        cut = [r for r in rs if r.get("time_limited")]  # --time-limit: the seeds whose fit it cut short
        row |= {"time_limited_seeds": len(cut), "stopped_epochs": [r.get("stopped_epoch") for r in cut]}
        for g in rs[0]["metrics"].get("groups", {}):  # the metric per group value (--group-by), mean over seeds
            row[f"group:{g}"] = mean([r["metrics"]["groups"].get(g, {}).get(metric) for r in rs])
        for n in all_inputs:
            row[f"missing:{n}"] = mean([r["robustness"]["missing"].get(n) for r in rs]) if n in e.inputs else None
        for n in all_inputs:
            rel = [r["robustness"].get("noise", {}).get(n, {}).get("relative_robustness") for r in rs]
            row[f"robustness:{n}"] = mean(rel) if n in e.inputs and any(x is not None for x in rel) else None
        rows.append(row)
    key = f"{metric}_mean"
    rows.sort(key=lambda r: (-r[key] if higher else r[key], -r.get("f1_macro_mean", 0.0)))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows


def majority_baseline(task: Task, train_targets: np.ndarray, test_targets: np.ndarray) -> dict[str, Any]:
    """The test score of predicting the training rows' majority class (the training mean for regression)."""
    outputs, name = task.majority_outputs(train_targets, len(test_targets))
    return {"name": name, "score": task.score(test_targets, outputs)}


def _fmt(row: dict[str, Any], metric: str) -> str:
    std = row.get(f"{metric}_std")
    return f"{row[f'{metric}_mean']:.4f}" + ("" if std is None or std != std else f" ± {std:.4f}")


def verdict(board: dict[str, Any]) -> str:
    """One sentence: does the best fusion beat the best single input by more than the seeds' spread (the larger
    of the two standard deviations), and does any entry beat the majority class (by more than its own std)?"""
    metric, higher, rows = board["metric"], board["higher_is_better"], board["leaderboard"]
    sign = 1.0 if higher else -1.0

    def gain(row: dict[str, Any], reference: float) -> float:
        return sign * (row[f"{metric}_mean"] - reference)

    def std(row: dict[str, Any]) -> float:
        s = row.get(f"{metric}_std")
        return 0.0 if s is None or s != s else float(s)

    singles = [r for r in rows if r["kind"] == "unimodal"]
    fused = [r for r in rows if r["kind"] != "unimodal"]
    best = lambda rs: max(rs, key=lambda r: sign * r[f"{metric}_mean"])  # noqa: E731
    if fused and singles:
        f, u = best(fused), best(singles)
        spread = max(std(f), std(u))
        margin = gain(f, u[f"{metric}_mean"])
        what = f"the best fusion, {f['entry']} ({_fmt(f, metric)}), "
        ref = f"the best single input, {u['entry']} ({_fmt(u, metric)})"
        if board.get("seeds", 1) < 2:  # no spread to measure: say the difference and that it may be noise
            verb = "beats" if margin > 0 else "does not beat"
            first = what + f"{verb} {ref} (difference {margin:+.4f}), but with one seed the spread is unknown"
        elif margin > spread:
            first = what + f"beats {ref} by {margin:.4f}, more than the seeds' spread (std {spread:.4f})"
        else:
            first = what + f"does not beat {ref} by more than the seeds' spread (std {spread:.4f}; difference "
            first += f"{margin:+.4f})"
    else:
        first = "there is no fusion and single input to compare"
    majority = board.get("majority_class")
    if majority is None:
        return first[0].upper() + first[1:] + "."
    beating = [r for r in rows if gain(r, majority["score"]) > std(r)]
    base = f"the {majority['name']} ({metric} {majority['score']:.4f})"
    if not beating:
        second = f"no entry beats {base}: nothing learned a signal from these inputs"
    elif len(beating) == len(rows):
        second = f"every entry beats {base}"
    else:
        second = f"{len(beating)} of {len(rows)} entries beat {base}"
    return first[0].upper() + first[1:] + "; " + second + "."


def cut_note(row: dict[str, Any]) -> str:
    """Which seeds the time limit cut short, and in which epoch: "2/3 seeds, epochs 4, 5" ("-": none)."""
    n = row.get("time_limited_seeds") or 0
    if not n:
        return "-"
    epochs = ", ".join(str(e) for e in row.get("stopped_epochs") or [])
    return f"{n}/{row['seeds']} seed(s), epoch {epochs}" if n == 1 else f"{n}/{row['seeds']} seeds, epochs {epochs}"


def leaderboard_table(board: dict[str, Any]):
    """The ranked leaderboard as a rich table."""
    from rich.table import Table

    metric = board["metric"]
    t = Table(title=f"leaderboard: {metric} on the test rows, mean ± std over {board['seeds']} seed(s)")
    t.caption = board.get("verdict") or verdict(board)
    groups = [k for k in (board["leaderboard"] or [{}])[0] if k.startswith("group:")]
    cols = ["#", "entry", metric, "macro-F1", *[f"{metric} {g[6:]}" for g in groups], "params", "train s"]
    cols += ["infer ms/row", "peak MB", "rel. robustness"]
    timed = any(r.get("time_limited_seeds") for r in board["leaderboard"])
    cols += ["cut short"] if timed else []  # only under a --time-limit that cut a fit
    for c in cols:
        t.add_column(c, justify="left" if c == "entry" else "right")

    def pm(m: float, s: float) -> str:
        return f"{m:.4f}" + ("" if s != s else f" ± {s:.4f}")

    for r in board["leaderboard"]:
        rel = [v for k, v in r.items() if k.startswith("robustness:") and v is not None]
        t.add_row(
            str(r["rank"]), r["entry"], pm(r[f"{metric}_mean"], r[f"{metric}_std"]),
            pm(r["f1_macro_mean"], r["f1_macro_std"]) if "f1_macro_mean" in r else "-",
            *[f"{r.get(g, float('nan')):.4f}" for g in groups],
            f"{r['parameters']:,}", f"{r['train_seconds']:.1f}", f"{r['infer_ms_per_sample']:.3f}",
            f"{r['peak_mem_mb']:.0f}", f"{np.mean(rel):.3f}" if rel else "-",
            *([cut_note(r)] if timed else []),
        )  # fmt: skip
    return t
