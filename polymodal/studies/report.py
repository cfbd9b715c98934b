"""The report of a compare folder (leaderboard.json, test_targets.npy and the entries' results): the same
sections as a model's report, over every entry and seed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polymodal.evaluation.html import bar_chart, esc, note, page, robustness_figure, table, training_chart
from polymodal.evaluation.report import average_robustness, detail_sections, noise_scores, robustness_sections


def compare_robustness_png(board: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """The compare's robustness curves (mean over seeds) as a PNG file, e.g. for a README; None when the compare
    measured no noise (--noise-levels 0)."""
    rows = board["leaderboard"]
    robust = {r["entry"]: average_robustness([x for x in board["results"] if x["entry"] == r["entry"]]) for r in rows}
    inputs = list(board["inputs"])
    curves = {i: {n: noise_scores(r, i) for n, r in robust.items() if noise_scores(r, i)} for i in inputs}
    curves = {i: c for i, c in curves.items() if c}
    if not curves:
        return None
    fig = robustness_figure(curves, board["noise_levels"], board["metric"])
    path = Path(path)
    fig.savefig(path, format="png", dpi=80)
    return path


def compare_report(folder: str | os.PathLike[str]) -> str:
    """The report of a compare folder (leaderboard.json, test_targets.npy and the entries' results)."""
    from polymodal.model.artifact import read_json
    from polymodal.studies.entries import Entry
    from polymodal.studies.leaderboard import OUTPUTS, RESULT, TARGETS, cut_note, load_array, verdict

    folder = Path(folder)
    board = read_json(folder / "leaderboard.json")
    metric, rows, task = board["metric"], board["leaderboard"], board["task"]
    s: dict[str, str] = {}

    def pm(r: dict, key: str) -> str:
        mean, std = r[f"{key}_mean"], r.get(f"{key}_std")
        return f"{mean:.4f}" + ("" if std is None or std != std else f" ± {std:.4f}")

    shown = []
    for r in rows:
        d = {"#": r["rank"], "entry": r["entry"], "inputs": r["inputs"], "seeds": r["seeds"], metric: pm(r, metric)}
        d["95 % CI ±"] = r[f"{metric}_ci95"]
        if "f1_macro_mean" in r:
            d["macro-F1"] = pm(r, "f1_macro")
        d |= {f"{metric} {k[6:]}": f"{v:.4f}" for k, v in r.items() if k.startswith("group:")}  # --group-by
        d |= {"params": r["parameters"], "train s": r["train_seconds"], "infer ms/row": r["infer_ms_per_sample"],
              "peak MB": r["peak_mem_mb"]}  # fmt: skip
        if any(x.get("time_limited_seeds") for x in rows):  # --time-limit cut some fits short
            d["cut short by the time limit"] = cut_note(r)
        shown.append(d)
    s["leaderboard"] = (
        f'<p class="verdict"><b>Verdict:</b> {esc(board.get("verdict") or verdict(board))}</p>'
        + note(
            f"ranked by mean test {metric} over {board['seeds']} seed(s); ci95 is the half-width of the 95 % "
            "t-interval of the mean; train seconds of an ensemble include its members' training; peak memory is "
            "the growth of resident memory during the entry."
        )  # fmt: skip
        + table(shown, list(shown[0]), left=("entry", "inputs"))
    )
    s["bar-chart"] = bar_chart(
        [r["entry"] for r in rows], [r[f"{metric}_mean"] for r in rows], [r[f"{metric}_std"] for r in rows],
        metric, f"test {metric}, mean ± std over seeds",
    )  # fmt: skip
    results = board["results"]
    robust = {r["entry"]: average_robustness([x for x in results if x["entry"] == r["entry"]]) for r in rows}
    s |= robustness_sections(robust, metric)
    best = rows[0]
    best_result = next(r for r in results if r["entry"] == best["entry"] and r["seed"] == 0)
    entry_dir = folder / "models" / Entry(best["entry"], "", [], "").slug / "seed0"
    targets, outputs = load_array(folder / TARGETS), load_array(entry_dir / OUTPUTS)
    s |= detail_sections(task, best_result["metrics"], targets, outputs, f"{best['entry']} (rank 1), seed 0")
    histories = {}
    for r in rows:
        path = folder / "models" / Entry(r["entry"], "", [], "").slug / "seed0" / RESULT
        hist = read_json(path).get("history") if path.exists() else None
        if hist:
            histories[r["entry"]] = hist
    monitor = {"regression": "rmse", "multilabel": "f1_micro"}.get(task["problem_type"], "accuracy")
    if task["problem_type"] == "text":
        monitor = task["settings"]["metric"]
    s["training-curves"] = (
        note("seed 0; ensembles have no curves of their own (their members' are shown)")
        + training_chart(histories, monitor)
        if histories
        else note("no training history recorded")
    )
    wall = board.get("wall_over_encoder_pass")
    subtitle = (
        f"label {board['label']!r} ({board['problem_type']}), inputs: {', '.join(board['inputs'])}; "
        f"{len(rows)} entries x {board['seeds']} seed(s); compare time {board.get('wall_seconds_total', 0):.0f} s"
        " (entries finished by earlier runs included)"
        + (f" = {wall}x one encoder pass over the data" if wall else "")
        + (f"; time limit {board['time_limit']:.0f} s, shared across the fits" if board.get("time_limit") else "")
    )
    return page("polymodal compare", subtitle, s)
