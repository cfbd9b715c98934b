"""The tune report: one self-contained HTML file (inline CSS, Optuna's matplotlib plots as base64 PNGs)."""

from __future__ import annotations

import base64
import io
import time
import warnings
from typing import Any

from polymodal.evaluation.html import CSS, esc, note, table


def _png(ax: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(8, 4.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_png(kind: str, study: Any) -> bytes:
    """One of Optuna's matplotlib plots as PNG bytes: history, importances, parallel, intermediate."""
    from optuna.visualization import matplotlib as ovm

    fn = {
        "history": ovm.plot_optimization_history,
        "importances": ovm.plot_param_importances,
        "parallel": ovm.plot_parallel_coordinate,
        "intermediate": ovm.plot_intermediate_values,
    }[kind]
    import matplotlib

    # Optuna's plots switch pyplot to its own style: keep that inside this figure, not in the caller's process.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # experimental-API and axis-limit warnings are noise in a report
        return _png(fn(study))


def _img(kind: str, study: Any, alt: str) -> str:
    try:
        data = base64.b64encode(plot_png(kind, study)).decode("ascii")
    except Exception as e:  # e.g. importances need two finished trials that differ
        return note(f"{alt}: not available ({type(e).__name__}: {e})")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def tune_report(study: Any, summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    metric = summary["metric"]
    best = summary.get("best")
    head = [
        {"what": "study", "value": f"{summary['study']} ({summary['storage']})"},
        {"what": "trials with a verdict / budget", "value": f"{summary['verdicts']} / {summary['budget']}"},
        {"what": "states", "value": ", ".join(f"{k} {v}" for k, v in sorted(summary["states"].items()))},
        {"what": f"best {metric}", "value": "-" if best is None else f"{best['value']:.4f} (trial {best['number']})"},
        {"what": "best model folder", "value": summary.get("best_folder") or summary.get("best_note", "-")},
    ]
    if best is not None:
        head += [{"what": k, "value": v} for k, v in best["params"].items()]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    sections = {
        "Summary": table(head, ["what", "value"], left=("what", "value")),
        "Optimization history": _img("history", study, "optimization history"),
        f"Validation {metric} per epoch (pruned trials stop early)": _img("intermediate", study, "intermediate"),
        "Parameter importances": _img("importances", study, "parameter importances"),
        "Parallel coordinates": _img("parallel", study, "parallel coordinates"),
        "Trials": table(rows, columns, left=("state", "error")),
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>polymodal tune: {esc(summary['study'])}</title><style>{CSS}</style></head><body>",
        f"<h1>polymodal tune: {esc(summary['study'])}</h1>",
    ]
    parts += [f"<section><h2>{esc(h)}</h2>{body}</section>" for h, body in sections.items()]
    parts.append(note(f"made by polymodal on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"))
    parts.append("</body></html>")
    return "\n".join(parts)
