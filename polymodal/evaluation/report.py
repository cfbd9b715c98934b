"""The report of one model: `model_report(model, table)` evaluates it on a labelled table. Its sections (ids in
`polymodal.evaluation.html.SECTIONS`): leaderboard, bar chart with error bars, robustness curves, modality
contribution, confusion matrix, ROC curves, training curves, per-class metrics. The sections shared with the
compare report (`polymodal.studies.report`) live here too.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from polymodal.data.schema import FRAMES, SOUND, Modality
from polymodal.errors import UserError
from polymodal.evaluation.html import (
    bar_chart,
    confusion_chart,
    esc,
    grouped_bars,
    note,
    page,
    robustness_chart,
    roc_chart,
    scatter_chart,
    table,
    training_chart,
)


# ---- sections shared by both reports ------------------------------------------------------------------------
def detail_sections(
    task: dict[str, Any], metrics: dict[str, Any], targets: np.ndarray, outputs: np.ndarray, name: str
) -> dict[str, str]:
    """Confusion matrix, ROC curves and per-class metrics of one model's test outputs."""
    s: dict[str, str] = {}
    intro = note(f"model: {name}")
    if task["problem_type"] == "multilabel":
        na = note("not applicable to a multilabel task: see the per-label metrics")
        s["confusion-matrix"] = s["roc-curves"] = intro + na
        rows = [{"label": c} | v for c, v in metrics["per_class"].items()]
        s["per-class"] = intro + table(rows, ["label", "precision", "recall", "f1", "support"], left=("label",))
        return s
    if task["problem_type"] == "text":  # the examples section shows the generated text instead
        s["confusion-matrix"] = s["roc-curves"] = s["per-class"] = intro + note("not applicable to a text task")
        return s
    if task["problem_type"] == "regression":
        na = note("not applicable: this is a regression task")
        s["confusion-matrix"] = intro + na + scatter_chart(targets * task["y_std"] + task["y_mean"], outputs)
        s["roc-curves"] = na
        s["per-class"] = na
        return s
    classes = task["classes"]
    s["confusion-matrix"] = intro + confusion_chart(metrics["confusion_matrix"], classes)
    s["roc-curves"] = intro + roc_chart(targets, outputs, classes)
    rows = [{"class": c} | v for c, v in metrics["per_class"].items()]
    s["per-class"] = intro + table(rows, ["class", "precision", "recall", "f1", "support"], left=("class",))
    return s


def noise_scores(robust: dict[str, Any], name: str) -> list[float] | None:
    """The noise curve of one input, or None where it was not measured."""
    return (robust.get("noise", {}).get(name) or {}).get("scores")


def robustness_sections(robust: dict[str, dict], metric: str) -> dict[str, str]:
    """robust: model name -> robustness dict (already averaged over seeds where there are several)."""
    s: dict[str, str] = {}
    names = list(robust)
    inputs = list(dict.fromkeys(i for r in robust.values() for i in r["inputs"]))
    body = note(
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
    body += table(rows, cols, left=("model",))
    noisy = [r for r in robust.values() if r.get("noise")]
    if noisy:
        levels = noisy[0]["levels"]
        curves = {i: {n: noise_scores(r, i) for n, r in robust.items() if noise_scores(r, i)} for i in inputs}
        body += robustness_chart({i: c for i, c in curves.items() if c}, levels, metric)
        kinds = {i: r["noise"][i]["noise"] for r in noisy for i in r["noise"]}
        body += "<ul>" + "".join(f"<li>{esc(i)}: {esc(k)}</li>" for i, k in kinds.items()) + "</ul>"
    s["robustness"] = body
    multi = {n: r for n, r in robust.items() if len(r["inputs"]) > 1}
    if multi:
        s["contribution"] = (
            note(
                "drop-one ablation: clean score minus the score with the input removed; permutation importance: "
                "the loss when the input is shuffled across rows. Higher means the model relies more on it."
            )  # fmt: skip
            + grouped_bars({n: r["ablation"] for n, r in multi.items()}, f"{metric} lost", "drop-one-modality ablation")
            + grouped_bars({n: r["permutation"] for n, r in multi.items()}, f"{metric} lost", "permutation importance")
        )
    else:
        s["contribution"] = note("only single-input models: there is no modality mix to attribute")
    return s


def average_robustness(results: list[dict]) -> dict[str, Any]:
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
            # None where a clean score of 0 leaves nothing to be relative to (e.g. CIDEr 0 of a text model)
            rels = [x for r in results if (x := r["robustness"]["noise"][i]["relative_robustness"]) is not None]
            rel = float(np.mean(rels)) if rels else None
            out["noise"][i] = v | {"scores": scores, "relative_robustness": rel}
    return out


def _bootstrap(targets: np.ndarray, outputs: np.ndarray, task: Any, n: int = 200, seed: int = 0) -> dict[str, tuple]:
    """Headline metrics with a 95 % bootstrap interval over the test rows: (value, half-width)."""
    from sklearn import metrics as skm

    def headline(t: np.ndarray, o: np.ndarray) -> dict[str, float]:
        if task.is_text:
            from polymodal.evaluation.text_report import text_headline

            return text_headline(task)(t, o)
        if task.is_multilabel:
            from polymodal.tasks import label_sets

            t, pred = t.astype(np.int64), label_sets(o, not task.allows_empty)
            empty = 1 if task.allows_empty else 0  # two empty sets agree (as in metrics.json)
            return {
                "f1_micro": skm.f1_score(t, pred, average="micro", zero_division=0),
                "f1_macro": skm.f1_score(t, pred, average="macro", zero_division=0),
                "jaccard_samples": skm.jaccard_score(t, pred, average="samples", zero_division=empty),
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


def _strip(frames: np.ndarray) -> str:
    """A clip's kept frames (t, 3, h, w) uint8 side by side, as one inline PNG."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(frames.transpose(0, 2, 3, 1)), axis=1)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="frames" style="display:inline;margin:0;image-rendering:pixelated;height:64px" ' \
           f'src="data:image/png;base64,{data}">'  # fmt: skip


def _sound(wave: np.ndarray | None, sample_rate: int) -> str:
    if wave is None:
        return '<span class="note">no sound track</span>'
    import base64
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="WAV", subtype="PCM_16")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'


def _clip(value: Any, base_dir: Any, cfg: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(frames, sound) of one cell decoded for the page, as the preprocessing decodes it: for a video whose frames
    went to a frozen encoder through the feature cache (not kept in memory)."""
    from polymodal.data.io import resolve_path
    from polymodal.data.media import MediaError
    from polymodal.data.validate import is_missing
    from polymodal.data.video import decode_video

    if cfg is None or is_missing(value):
        return None, None
    try:
        clip = decode_video(resolve_path(str(value), base_dir), cfg.video_frames, cfg.image_size, cfg.sample_rate,
                            fit=cfg.image_fit, fps=cfg.video_fps)  # fmt: skip
    except MediaError:
        return None, None
    return clip.frames, clip.sound


def video_examples(schema: Any, df: Any, media: dict, task: Any, outputs: np.ndarray, sample_rate: int,
                   k: int = 6, base_dir: Any = None, cfg: Any = None) -> str:  # fmt: skip
    """The first `k` rows' videos as the model saw them: the strip of kept frames and the sound track, with the
    label and the prediction. Clips whose decoded frames are not in `media` (a frozen frames encoder) are decoded
    again from `base_dir` with the preprocess section `cfg`."""
    predicted = task.decode(outputs) if not task.is_text else [""] * len(df)
    body = []
    for i in range(min(k, len(df))):
        cells = [str(i), esc(df[schema.label].iloc[i]), esc(predicted[i])]
        for col in schema.columns_of(Modality.VIDEO):
            if col + FRAMES in media and col + SOUND in media:
                frames, sound = media[col + FRAMES][i], media[col + SOUND][i]
            else:
                frames, sound = _clip(df[col].iloc[i], base_dir, cfg)
            cells.append('<span class="note">absent</span>' if frames is None else _strip(frames))
            cells.append("" if frames is None else _sound(sound, sample_rate))
        body.append("<tr>" + "".join(f'<td class="l">{c}</td>' for c in cells) + "</tr>")
    heads = ["row", "label", "predicted"] + [f"{c} {p}" for c in schema.columns_of(Modality.VIDEO)
                                             for p in ("frames", "sound")]  # fmt: skip
    head = "".join(f'<th class="l">{esc(h)}</th>' for h in heads)
    return note("the frames each video was reduced to (in time order) and its sound track, as the model saw them") + (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


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
    from polymodal.data.validate import BadRowsError, check_columns, check_group_column
    from polymodal.evaluation.groups import group_metrics
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
    s["leaderboard"] = note("one model: its test metrics") + table([row], list(row), left=("model",))
    if group_by:
        per = group_metrics(task, df[schema.label], outputs, df[group_by])
        rows = [{group_by: g} | m for g, m in per.items()]
        s["leaderboard"] += note(f"per group: the metrics of each value of {group_by!r}") + table(
            rows, list(rows[0]), left=(group_by,)
        )
    ci = _bootstrap(targets, outputs, task)
    s["bar-chart"] = note("error bars: 95 % bootstrap interval over the test rows (200 resamples)") + bar_chart(
        list(ci), [v for v, _ in ci.values()], [e for _, e in ci.values()], "score", f"{name}: test metrics"
    )
    s |= robustness_sections({name: robust}, metric)
    s |= detail_sections(task.to_dict(), metrics, targets, outputs, name)
    if schema.columns_of(Modality.VIDEO):
        cfg = model.preprocessor.config
        s["examples"] = video_examples(schema, df, media, task, outputs, cfg.sample_rate, base_dir=base_dir, cfg=cfg)
    if task.is_text:
        from polymodal.evaluation.text_report import examples_section

        s["examples"] = examples_section(task, schema, df, base_dir, outputs)
    monitor = task.monitor[0]
    s["training-curves"] = training_chart({name: history}, monitor) if history else note("no training history")
    subtitle = f"{name} on {len(df)} labelled rows; label {schema.label!r} ({task.problem_type.value})"
    return page(f"polymodal report: {name}", subtitle, s)
