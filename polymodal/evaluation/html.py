"""HTML building blocks of the reports: one self-contained file (inline CSS, every chart a base64 PNG made with
matplotlib), readable from disk without a server. Tables, notes, the page frame and the charts every report uses."""

from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.files import write_text

SECTIONS = {
    "leaderboard": "Leaderboard",
    "bar-chart": "Task metric with error bars",
    "robustness": "Robustness to missing and noisy modalities",
    "contribution": "Modality contribution",
    "confusion-matrix": "Confusion matrix",
    "roc-curves": "ROC curves",
    "training-curves": "Training curves",
    "per-class": "Per-class metrics",
    "examples": "Best and worst examples",  # text models: reference vs generated text beside the inputs
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
def esc(v: Any) -> str:
    return html.escape(str(v))


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if v != v else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def figure(width: float = 7.0, height: float = 4.0, **kwargs: Any):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**kwargs)


def img(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(rows: list[dict[str, Any]], columns: list[str], left: tuple[str, ...] = ()) -> str:
    head = "".join(f'<th class="{"l" if c in left else ""}">{esc(c)}</th>' for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if c in left else ""}">{esc(fmt(r.get(c)))}</td>' for c in columns) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def page(title: str, subtitle: str, sections: dict[str, str]) -> str:
    """The whole document; `sections` maps a section id of SECTIONS to its HTML body."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        note(subtitle),
    ]
    for sid, heading in SECTIONS.items():
        parts.append(f'<section id="{sid}"><h2>{esc(heading)}</h2>{sections.get(sid, note("not available"))}</section>')
    parts.append(note(f"made by polymodal on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | os.PathLike[str], text: str) -> Path:
    """Write atomically (a temporary file beside it, then rename), with the umask's mode: a report is for sharing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text, encoding="utf-8")
    return path


# ---- charts -------------------------------------------------------------------------------------------------
def bar_chart(names: list[str], means: list[float], errors: list[float], metric: str, title: str) -> str:
    fig, ax = figure(7.5, 0.45 * len(names) + 1.4)
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
    return img(fig, f"bar chart of {metric}")


def robustness_chart(curves: dict[str, dict[str, list[float]]], levels: int, metric: str) -> str:
    """curves: input -> {model name: scores at levels 0..levels}; one panel per input."""
    return img(robustness_figure(curves, levels, metric), "robustness curves")


def robustness_figure(curves: dict[str, dict[str, list[float]]], levels: int, metric: str) -> Any:
    n = len(curves)
    fig, axes = figure(min(4.2 * n, 13.0), 3.6, ncols=n, squeeze=False)
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
    fig, ax = figure(max(5.0, 1.1 * len(names) * max(1, len(inputs)) / 2 + 2), 3.6)
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
    return img(fig, title)


def confusion_chart(matrix: list[list[int]], classes: list[Any]) -> str:
    m = np.asarray(matrix)
    k = len(classes)
    fig, ax = figure(1.2 + 0.5 * max(k, 4), 1.0 + 0.5 * max(k, 4))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 6 else 0)
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black",
                    fontsize="small")  # fmt: skip
    return img(fig, "confusion matrix")


def roc_chart(targets: np.ndarray, proba: np.ndarray, classes: list[Any]) -> str:
    from sklearn.metrics import auc, roc_curve

    fig, ax = figure(5.5, 4.5)
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
    return img(fig, "ROC curves")


def scatter_chart(targets: np.ndarray, predictions: np.ndarray) -> str:
    fig, ax = figure(5.0, 4.5)
    ax.scatter(targets, predictions, s=8, alpha=0.6)
    lo, hi = float(min(targets.min(), predictions.min())), float(max(targets.max(), predictions.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="#999")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("predicted against true")
    return img(fig, "predicted against true")


def training_chart(histories: dict[str, list[dict]], monitor: str) -> str:
    """Loss curves of the first model, and the validation metric of every model, per epoch."""
    fig, (a, b) = figure(11.0, 3.8, ncols=2)
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
    return img(fig, "training curves")
