"""The HTML report: one self-contained file (inline CSS, every chart a base64 PNG made with matplotlib), readable
from disk without a server.

`compare_report(folder)` reads a compare's folder; `model_report(model, table)` evaluates one model on a labelled
table. Both have the same sections (ids in `SECTIONS`): leaderboard, bar chart with error bars, robustness
curves, modality contribution, confusion matrix, ROC curves, training curves, per-class metrics.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError

SECTIONS = {
    "leaderboard": "Leaderboard",
    "bar-chart": "Task metric with error bars",
    "robustness": "Robustness to missing and noisy modalities",
    "contribution": "Modality contribution",
    "confusion-matrix": "Confusion matrix",
    "roc-curves": "ROC curves",
    "training-curves": "Training curves",
    "per-class": "Per-class metrics",
}
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#555;font-size:.9em}.scroll{overflow-x:auto}
"""
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


# ---- building blocks ---------------------------------------------------------------------------------------
def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if v != v else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _figure(width: float = 7.0, height: float = 4.0, **kwargs: Any):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**kwargs)


def _img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict[str, Any]], columns: list[str], left: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{_esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if c in left else ""}">{_esc(_fmt(r.get(c)))}</td>' for c in columns)
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def page(title: str, subtitle: str, sections: dict[str, str]) -> str:
    """The whole document; `sections` maps a section id of SECTIONS to its HTML body."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        _note(subtitle),
    ]
    for sid, heading in SECTIONS.items():
        parts.append(
            f'<section id="{sid}"><h2>{_esc(heading)}</h2>{sections.get(sid, _note("not available"))}</section>'
        )
    parts.append(_note(f"made by polymodal on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | os.PathLike[str], text: str) -> Path:
    """Write atomically: a temporary file beside it, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a report is for sharing: not mkstemp's owner-only mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---- charts -------------------------------------------------------------------------------------------------
def bar_chart(names: list[str], means: list[float], errors: list[float], metric: str, title: str) -> str:
    fig, ax = _figure(7.5, 0.45 * len(names) + 1.4)
    y = np.arange(len(names))[::-1]
    err = [0.0 if e is None or e != e else e for e in errors]
    ax.barh(y, means, xerr=err, color=[COLORS[i % len(COLORS)] for i in range(len(names))], capsize=4, alpha=0.85)
    ax.set_yticks(y, names)
    ax.set_xlabel(metric)
    ax.set_title(title)
    lo = min(m - e for m, e in zip(means, err, strict=True))
    hi = max(m + e for m, e in zip(means, err, strict=True))
    ax.set_xlim(min(0.0, lo), hi + 0.05 * max(abs(hi), abs(lo), 1e-9))  # from 0: bars compare by length
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.grid(axis="x", alpha=0.3)
    return _img(fig, f"bar chart of {metric}")


def robustness_chart(curves: dict[str, dict[str, list[float]]], levels: int, metric: str) -> str:
    """curves: input -> {model name: scores at levels 0..levels}; one panel per input."""
    return _img(robustness_figure(curves, levels, metric), "robustness curves")


def robustness_figure(curves: dict[str, dict[str, list[float]]], levels: int, metric: str) -> Any:
    n = len(curves)
    fig, axes = _figure(min(4.2 * n, 13.0), 3.6, ncols=n, squeeze=False)
    # One colour and line style per model across all panels (more than 10 models: dashed lines too).
    order = list(dict.fromkeys(name for series in curves.values() for name in series))
    for ax, (inp, series) in zip(axes[0], curves.items(), strict=True):
        for name, scores in series.items():
            i = order.index(name)
            ax.plot(range(levels + 1), scores, marker="o", ms=3, label=name, color=COLORS[i % len(COLORS)],
                    ls="-" if i < len(COLORS) else "--")  # fmt: skip
        ax.set_title(f"noise on {inp}")
        ax.set_xlabel("noise level (0 = clean)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small")
    return fig


def grouped_bars(values: dict[str, dict[str, float]], ylabel: str, title: str) -> str:
    """values: model name -> {input: value}."""
    names = list(values)
    inputs = list(dict.fromkeys(i for v in values.values() for i in v))
    fig, ax = _figure(max(5.0, 1.1 * len(names) * max(1, len(inputs)) / 2 + 2), 3.6)
    width = 0.8 / max(1, len(inputs))
    for j, inp in enumerate(inputs):
        xs = np.arange(len(names)) + (j - (len(inputs) - 1) / 2) * width
        ax.bar(xs, [values[n].get(inp, np.nan) for n in names], width, label=inp, color=COLORS[j % len(COLORS)])
    ax.set_xticks(np.arange(len(names)), names, rotation=20, ha="right")
    ax.axhline(0, color="#444", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _img(fig, title)


def confusion_chart(matrix: list[list[int]], classes: list[Any]) -> str:
    m = np.asarray(matrix)
    k = len(classes)
    fig, ax = _figure(1.2 + 0.5 * max(k, 4), 1.0 + 0.5 * max(k, 4))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 6 else 0)
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black",
                    fontsize="small")  # fmt: skip
    return _img(fig, "confusion matrix")


def roc_chart(targets: np.ndarray, proba: np.ndarray, classes: list[Any]) -> str:
    from sklearn.metrics import auc, roc_curve

    fig, ax = _figure(5.5, 4.5)
    which = [1] if len(classes) == 2 else range(len(classes))
    for i in which:
        positives = targets == i
        if positives.all() or not positives.any():
            continue  # undefined without both positives and negatives
        fpr, tpr, _ = roc_curve(positives, proba[:, i])
        label = f"{classes[i]} (AUC {auc(fpr, tpr):.3f})"
        ax.plot(fpr, tpr, label=label, color=COLORS[i % len(COLORS)], lw=1.5)
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one class against the rest" if len(classes) > 2 else f"ROC, positive class {classes[1]}")
    ax.legend(fontsize="small", loc="lower right")
    return _img(fig, "ROC curves")


def scatter_chart(targets: np.ndarray, predictions: np.ndarray) -> str:
    fig, ax = _figure(5.0, 4.5)
    ax.scatter(targets, predictions, s=8, alpha=0.6)
    lo, hi = float(min(targets.min(), predictions.min())), float(max(targets.max(), predictions.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="#999")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("predicted against true")
    return _img(fig, "predicted against true")


def training_chart(histories: dict[str, list[dict]], monitor: str) -> str:
    """Loss curves of the first model, and the validation metric of every model, per epoch."""
    fig, (a, b) = _figure(11.0, 3.8, ncols=2)
    first, hist = next(iter(histories.items()))
    epochs = [h["epoch"] + 1 for h in hist]
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        if hist and key in hist[0]:
            a.plot(epochs, [h[key] for h in hist], style, label=key.replace("_", " "))
    a.set_title(f"loss: {first}")
    a.set_xlabel("epoch")
    a.legend(fontsize="small")
    a.grid(alpha=0.3)
    for i, (name, h) in enumerate(histories.items()):
        if h and f"val_{monitor}" in h[0]:
            b.plot([r["epoch"] + 1 for r in h], [r[f"val_{monitor}"] for r in h], label=name, color=COLORS[i % 10])
    b.set_title(f"validation {monitor}")
    b.set_xlabel("epoch")
    b.legend(fontsize="small")
    b.grid(alpha=0.3)
    return _img(fig, "training curves")


# ---- sections shared by both reports ------------------------------------------------------------------------
def _detail_sections(
    task: dict[str, Any], metrics: dict[str, Any], targets: np.ndarray, outputs: np.ndarray, name: str
) -> dict[str, str]:
    """Confusion matrix, ROC curves and per-class metrics of one model's test outputs."""
    s: dict[str, str] = {}
    intro = _note(f"model: {name}")
    if task["problem_type"] == "multilabel":
        na = _note("not applicable to a multilabel task: see the per-label metrics")
        s["confusion-matrix"] = s["roc-curves"] = intro + na
        rows = [{"label": c} | v for c, v in metrics["per_class"].items()]
        s["per-class"] = intro + _table(rows, ["label", "precision", "recall", "f1", "support"], left=("label",))
        return s
    if task["problem_type"] == "regression":
        na = _note("not applicable: this is a regression task")
        s["confusion-matrix"] = intro + na + scatter_chart(targets * task["y_std"] + task["y_mean"], outputs)
        s["roc-curves"] = na
        s["per-class"] = na
        return s
    classes = task["classes"]
    s["confusion-matrix"] = intro + confusion_chart(metrics["confusion_matrix"], classes)
    s["roc-curves"] = intro + roc_chart(targets, outputs, classes)
    rows = [{"class": c} | v for c, v in metrics["per_class"].items()]
    s["per-class"] = intro + _table(rows, ["class", "precision", "recall", "f1", "support"], left=("class",))
    return s


def _scores(robust: dict[str, Any], name: str) -> list[float] | None:
    """The noise curve of one input, or None where it was not measured."""
    return (robust.get("noise", {}).get(name) or {}).get("scores")


def _robustness_sections(robust: dict[str, dict], metric: str) -> dict[str, str]:
    """robust: model name -> robustness dict (already averaged over seeds where there are several)."""
    s: dict[str, str] = {}
    names = list(robust)
    inputs = list(dict.fromkeys(i for r in robust.values() for i in r["inputs"]))
    body = _note(
        f"{metric} on the test rows with one input removed (the model is told it is absent), and with noise of "
        "increasing severity on one input at a time; relative robustness is the area under the curve divided by "
        "the clean score (1 = no loss)."
    )
    rows = []
    for n in names:
        r = robust[n]
        row = {"model": n, "clean": r["clean"]}
        row |= {f"without {i}": r["missing"].get(i) for i in inputs}
        row |= {f"rel. robustness {i}": r.get("noise", {}).get(i, {}).get("relative_robustness") for i in inputs}
        rows.append(row)
    cols = ["model", "clean"] + [f"without {i}" for i in inputs] + [f"rel. robustness {i}" for i in inputs]
    body += _table(rows, cols, left=("model",))
    noisy = [r for r in robust.values() if r.get("noise")]
    if noisy:
        levels = noisy[0]["levels"]
        curves = {i: {n: _scores(r, i) for n, r in robust.items() if _scores(r, i)} for i in inputs}
        body += robustness_chart({i: c for i, c in curves.items() if c}, levels, metric)
        kinds = {i: r["noise"][i]["noise"] for r in noisy for i in r["noise"]}
        body += "<ul>" + "".join(f"<li>{_esc(i)}: {_esc(k)}</li>" for i, k in kinds.items()) + "</ul>"
    s["robustness"] = body
    multi = {n: r for n, r in robust.items() if len(r["inputs"]) > 1}
    if multi:
        s["contribution"] = (
            _note(
                "drop-one ablation: clean score minus the score with the input removed; permutation importance: "
                "the loss when the input is shuffled across rows. Higher means the model relies more on it."
            )  # fmt: skip
            + grouped_bars({n: r["ablation"] for n, r in multi.items()}, f"{metric} lost", "drop-one-modality ablation")
            + grouped_bars({n: r["permutation"] for n, r in multi.items()}, f"{metric} lost", "permutation importance")
        )
    else:
        s["contribution"] = _note("only single-input models: there is no modality mix to attribute")
    return s


def _average_robustness(results: list[dict]) -> dict[str, Any]:
    """The robustness dicts of several seeds, averaged number by number."""
    first = results[0]["robustness"]
    out = {k: first[k] for k in ("metric", "higher_is_better", "inputs")}
    out["clean"] = float(np.mean([r["robustness"]["clean"] for r in results]))
    for key in ("missing", "ablation", "permutation"):
        out[key] = {i: float(np.mean([r["robustness"][key][i] for r in results])) for i in first[key]}
    if first.get("noise"):
        out["levels"] = first["levels"]
        out["noise"] = {}
        for i, v in first["noise"].items():
            if v["scores"] is None:  # not measured (frozen pretrained input)
                out["noise"][i] = v
                continue
            scores = np.mean([r["robustness"]["noise"][i]["scores"] for r in results], axis=0).tolist()
            rel = float(np.mean([r["robustness"]["noise"][i]["relative_robustness"] for r in results]))
            out["noise"][i] = v | {"scores": scores, "relative_robustness": rel}
    return out


def compare_robustness_png(board: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """The compare's robustness curves (mean over seeds) as a PNG file, e.g. for a README; None when the compare
    measured no noise (--noise-levels 0)."""
    rows = board["leaderboard"]
    robust = {r["entry"]: _average_robustness([x for x in board["results"] if x["entry"] == r["entry"]]) for r in rows}
    inputs = list(board["inputs"])
    curves = {i: {n: _scores(r, i) for n, r in robust.items() if _scores(r, i)} for i in inputs}
    curves = {i: c for i, c in curves.items() if c}
    if not curves:
        return None
    fig = robustness_figure(curves, board["noise_levels"], board["metric"])
    path = Path(path)
    fig.savefig(path, format="png", dpi=80)
    return path


# ---- the two reports ----------------------------------------------------------------------------------------
def compare_report(folder: str | os.PathLike[str]) -> str:
    """The report of a compare folder (leaderboard.json, test_targets.npy and the entries' results)."""
    from polymodal.evaluation.compare import OUTPUTS, RESULT, TARGETS, Entry, load_array, verdict
    from polymodal.model.artifact import read_json

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
        shown.append(d)
    s["leaderboard"] = (
        f'<p class="verdict"><b>Verdict:</b> {_esc(board.get("verdict") or verdict(board))}</p>'
        + _note(
            f"ranked by mean test {metric} over {board['seeds']} seed(s); ci95 is the half-width of the 95 % "
            "t-interval of the mean; train seconds of an ensemble include its members' training; peak memory is "
            "the growth of resident memory during the entry."
        )  # fmt: skip
        + _table(shown, list(shown[0]), left=("entry", "inputs"))
    )
    s["bar-chart"] = bar_chart(
        [r["entry"] for r in rows], [r[f"{metric}_mean"] for r in rows], [r[f"{metric}_std"] for r in rows],
        metric, f"test {metric}, mean ± std over seeds",
    )  # fmt: skip
    results = board["results"]
    robust = {r["entry"]: _average_robustness([x for x in results if x["entry"] == r["entry"]]) for r in rows}
    s |= _robustness_sections(robust, metric)
    best = rows[0]
    best_result = next(r for r in results if r["entry"] == best["entry"] and r["seed"] == 0)
    entry_dir = folder / "models" / Entry(best["entry"], "", [], "").slug / "seed0"
    targets, outputs = load_array(folder / TARGETS), load_array(entry_dir / OUTPUTS)
    s |= _detail_sections(task, best_result["metrics"], targets, outputs, f"{best['entry']} (rank 1), seed 0")
    histories = {}
    for r in rows:
        path = folder / "models" / Entry(r["entry"], "", [], "").slug / "seed0" / RESULT
        hist = read_json(path).get("history") if path.exists() else None
        if hist:
            histories[r["entry"]] = hist
    monitor = {"regression": "rmse", "multilabel": "f1_micro"}.get(task["problem_type"], "accuracy")
    s["training-curves"] = (
        _note("seed 0; ensembles have no curves of their own (their members' are shown)")
        + training_chart(histories, monitor)
        if histories
        else _note("no training history recorded")
    )
    wall = board.get("wall_over_encoder_pass")
    subtitle = (
        f"label {board['label']!r} ({board['problem_type']}), inputs: {', '.join(board['inputs'])}; "
        f"{len(rows)} entries x {board['seeds']} seed(s); compare time {board.get('wall_seconds_total', 0):.0f} s"
        " (entries finished by earlier runs included)" + (f" = {wall}x one encoder pass over the data" if wall else "")
    )
    return page("polymodal compare", subtitle, s)


def _bootstrap(targets: np.ndarray, outputs: np.ndarray, task: Any, n: int = 200, seed: int = 0) -> dict[str, tuple]:
    """Headline metrics with a 95 % bootstrap interval over the test rows: (value, half-width)."""
    from sklearn import metrics as skm

    def headline(t: np.ndarray, o: np.ndarray) -> dict[str, float]:
        if task.is_multilabel:
            from polymodal.tasks import label_sets

            t, pred = t.astype(np.int64), label_sets(o)
            return {
                "f1_micro": skm.f1_score(t, pred, average="micro", zero_division=0),
                "f1_macro": skm.f1_score(t, pred, average="macro", zero_division=0),
                "jaccard_samples": skm.jaccard_score(t, pred, average="samples", zero_division=0),
                "exact_match": skm.accuracy_score(t, pred),
            }
        if task.is_classification:
            pred = o.argmax(axis=1)
            return {
                "accuracy": skm.accuracy_score(t, pred),
                "f1_macro": skm.f1_score(t, pred, average="macro", zero_division=0),
                "precision_macro": skm.precision_score(t, pred, average="macro", zero_division=0),
                "recall_macro": skm.recall_score(t, pred, average="macro", zero_division=0),
            }
        y = t * task.y_std + task.y_mean
        return {"rmse": float(np.sqrt(np.mean((y - o) ** 2))), "mae": float(np.mean(np.abs(y - o)))}

    rng = np.random.default_rng(seed)
    full = headline(targets, outputs)
    samples = [
        headline(targets[i], outputs[i]) for i in (rng.integers(len(targets), size=len(targets)) for _ in range(n))
    ]
    out = {}
    for k, v in full.items():
        lo, hi = np.percentile([x[k] for x in samples], [2.5, 97.5])
        out[k] = (float(v), float(hi - lo) / 2)
    return out


def model_report(
    model: Any,
    data: Any,
    name: str = "model",
    history: list[dict] | None = None,
    noise_levels: int = 5,
    permutations: int = 3,
    noise_rows: int | None = 1000,
    group_by: str | None = None,
) -> str:
    """Evaluate one model (an `InferenceEngine` or an `EnsembleModel`) on a labelled table; the report's HTML.
    The noise curves use a fixed sample of at most `noise_rows` rows (None: all). `group_by`: a column whose
    values get their own metrics (a "groups" section)."""
    from polymodal.data.io import read_table
    from polymodal.data.validate import BadRowsError, check_columns
    from polymodal.evaluation.groups import check_group_column, group_metrics
    from polymodal.evaluation.robustness import (
        NoisyInputs,
        check_noise_rows,
        evaluate_robustness,
        metric_of,
        noise_sample,
    )

    check_noise_rows(noise_rows)
    df, base_dir = read_table(data)
    schema, task = model.schema, model.task
    if schema.label not in df.columns:
        raise UserError(f"the table has no label column {schema.label!r}: a report needs labelled rows")
    check_group_column(df, group_by, str(data) if not hasattr(data, "columns") else "the DataFrame")
    check_columns(df, schema, training=False)
    # The model's own pipeline: decoded media (kept for the noise) and frozen embeddings, then preprocessing.
    media, frozen, problems = model.pipeline.decode(df, base_dir)
    if problems:
        raise BadRowsError(problems, str(data) if not hasattr(data, "columns") else "the DataFrame")
    features = model.pipeline.features(df, media, frozen)
    targets = task.encode_targets(df[schema.label])
    start = time.perf_counter()
    outputs = model.outputs(features)
    infer_ms = 1000 * (time.perf_counter() - start) / max(1, len(df))
    metrics = task.metrics(df[schema.label], outputs)
    metric, _ = metric_of(task)
    noisy = None
    if noise_levels > 0:
        rows = noise_sample(len(df), noise_rows)
        noisy = NoisyInputs(model.preprocessor, df, media, noise_levels, rows=rows, pipeline=model.pipeline,
                            base_dir=base_dir)  # fmt: skip
    robust = evaluate_robustness(model, features, targets, noisy, permutations)
    params = model.parameters if hasattr(model, "parameters") and isinstance(model.parameters, int) else None
    if params is None:
        params = sum(t.numel() for t in model.net.parameters())

    s: dict[str, str] = {}
    row = {"model": name, "rows": len(df)} | {k: v for k, v in metrics.items() if isinstance(v, float)}
    row |= {"parameters": params, "infer_ms_per_sample": infer_ms}
    s["leaderboard"] = _note("one model: its test metrics") + _table([row], list(row), left=("model",))
    if group_by:
        per = group_metrics(task, df[schema.label], outputs, df[group_by])
        rows = [{group_by: g} | m for g, m in per.items()]
        s["leaderboard"] += _note(f"per group: the metrics of each value of {group_by!r}") + _table(
            rows, list(rows[0]), left=(group_by,)
        )
    ci = _bootstrap(targets, outputs, task)
    s["bar-chart"] = _note("error bars: 95 % bootstrap interval over the test rows (200 resamples)") + bar_chart(
        list(ci), [v for v, _ in ci.values()], [e for _, e in ci.values()], "score", f"{name}: test metrics"
    )
    s |= _robustness_sections({name: robust}, metric)
    s |= _detail_sections(task.to_dict(), metrics, targets, outputs, name)
    monitor = task.monitor[0]
    s["training-curves"] = training_chart({name: history}, monitor) if history else _note("no training history")
    subtitle = f"{name} on {len(df)} labelled rows; label {schema.label!r} ({task.problem_type.value})"
    return page(f"polymodal report: {name}", subtitle, s)
