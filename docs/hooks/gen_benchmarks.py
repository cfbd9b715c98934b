"""Benchmark tables generated from benchmarks/results/*.json, so no number in them is typed by hand.

`render(name, folder, page_src)` reads `folder/name.json`, picks the renderer of its benchmark (the JSON's
`benchmark` key, else the longest known prefix of the file name) and returns the table in markdown, followed by a
link to the JSON. The words of a table (row labels that describe a run) live here; every number comes from the file.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_format import _bold_max, _f, _table
from bench_media import (
    audio_augment,
    av_video,
    av_video_sound,
    captions,
    encode_once,
    sort_of_clevr,
    speakers,
    speech_padding,
    text_decoding,
    voice_privacy,
)


def av_digits(d: dict) -> str:
    rows = [
        [
            r["entry"],
            _f(r["accuracy"]),
            _f(r["f1_macro"]),
            _f(r["train_seconds"], 1),
            round(r["peak_rss_mb"]),
            r["epochs"],
        ]
        for r in d["results"]
    ]
    rows = _bold_max(_bold_max(rows, 1), 2)
    return _table(["entry", "accuracy", "macro-F1", "train s", "peak RSS MB", "epochs"], rows)


def compare(d: dict) -> str:
    metric = d.get("metric", "accuracy")
    board = d["leaderboard"]
    inputs = [k.split(":", 1)[1] for k in board[0] if k.startswith("missing:")]
    header = ["#", "entry", metric, "macro-F1", "params", "train s", "infer ms/row"]
    header += [f"without {i}" for i in inputs] + [f"rel. rob. {i}" for i in inputs]
    rows = []
    for r in board:
        row = [r["rank"], r["entry"], f"{_f(r[f'{metric}_mean'])} ± {_f(r[f'{metric}_std'])}"]
        row += [_f(r.get("f1_macro_mean")), f"{r['parameters']:,}", _f(r["train_seconds"], 1)]
        row += [_f(r.get("infer_ms_per_sample"), 2)]
        row += [_f(r.get(f"missing:{i}")) for i in inputs] + [_f(r.get(f"robustness:{i}")) for i in inputs]
        rows.append(row)
    extra = ""
    if d.get("majority_class_accuracy") is not None:
        extra = f"\n\nMajority class: {_f(d['majority_class_accuracy'])}."
    return _table(header, rows) + extra


def compress(d: dict) -> str:
    rows = []
    for r in d["results"]:
        agreement = r.get("argmax_agreement_vs_pytorch_fp32")
        rows.append(
            [
                r["variant"],
                r["runtime"],
                _f(r["accuracy"], 4),
                _f(r["f1_macro"], 4),
                _f(r["file_bytes"] / 1e6, 2),
                f"{_f(r['b1_p50_ms'], 2)} / {_f(r['b1_p99_ms'], 2)}",
                f"{_f(r['b32_p50_ms'], 2)} / {_f(r['b32_p99_ms'], 2)}",
                _f(round(r["rss_after_load_mb"])) if r.get("rss_after_load_mb") is not None else "-",
                "reference" if agreement is None else _f(agreement),
            ]
        )
    header = ["variant", "runtime", "accuracy", "macro-F1", "file MB", "b1 p50 / p99 ms", "b32 p50 / p99 ms/row"]
    return _table(header + ["RSS after load MB", "agreement with PyTorch fp32"], rows)


DDP_RUNS = {
    "1p1t": "1 process, 1 thread",
    "1p2t": "1 process, 2 threads",
    "2p1t": "DDP, Lightning starts rank 1",
    "tr2p1t": "DDP under torchrun",
}


def ddp_scaling(d: dict) -> str:
    rows = []
    for r in d["runs"]:
        m = re.fullmatch(r"(tr)?(\d+)p(\d+)t", r["run"])
        shape = f"{m.group(2)} x {m.group(3)}" if m else "-"
        if not r.get("ok", True):
            rows.append([DDP_RUNS.get(r["run"], r["run"]), shape, "failed", "", "", "", ""])
            continue
        rows.append(
            [
                DDP_RUNS.get(r["run"], r["run"]),
                shape,
                round(r["rows_per_s"]),
                _f(r["wall_s"], 1),
                round(r["peak_rss_mb"]),
                _f(r.get("valid_accuracy")),
                _f(r.get("evaluate_accuracy")),
            ]
        )
    header = ["run", "processes x threads", "train rows/s (loop)", "wall s", "peak RSS MB"]
    return _table(header + ["valid acc (DDP, gathered)", "`polymodal evaluate` acc"], rows)


ENCODE_INPUTS = {"text": "sentences", "text_dev_rows": "dev rows' sentences", "image": "images"}


def encode_throughput(d: dict) -> str:
    rows = []
    int8 = "int8_per_s" in next(iter(d["results"].values()))
    for key, r in d["results"].items():
        label = f"{ENCODE_INPUTS.get(key, key)} ({r['encoder']})"
        n = f"{r['inputs']} ({r['unique_inputs']})"
        if int8:
            rows.append(
                [
                    label,
                    n,
                    _f(r["int8_per_s"], 1),
                    _f(r["plain_fp32_per_s"], 1),
                    f"{_f(r['speedup_over_plain'], 2)}x",
                    _f(r["min_cosine_vs_fp32"]),
                    _f(r["mean_cosine_vs_fp32"]),
                ]
            )
        else:
            rows.append(
                [
                    label,
                    n,
                    _f(r["polymodal_first_per_s"], 1),
                    _f(r["plain_per_s"], 1),
                    _f(r["ratio_polymodal_over_plain"], 2),
                    f"{_f(r['cached_second_s'])} s",
                    f"{round(r['cached_speedup'])}x",
                    _f(r["min_cosine_vs_plain"]),
                ]
            )
    if int8:
        header = ["input", "n (distinct)", "int8 ONNX /s", "plain fp32 HF loop /s", "speed-up"]
        return _table(header + ["min cosine to fp32", "mean cosine to fp32"], rows)
    header = ["input", "n (distinct)", "polymodal /s", "plain HF loop /s", "ratio", "cached second pass", "speed-up"]
    return _table(header + ["min cosine to plain"], rows)


def index_scale(d: dict) -> str:
    rows = []
    for r in d["results"]:
        chosen = r["chosen"]
        reached = chosen is not None
        point = chosen if reached else r["sweep"][-1]
        setting = "exact" if r["knob_name"] is None else f"{r['knob_name']}={point['knob']}"
        if not reached:
            setting += f" (largest tried; {d.get('target_recall@10', 0.95)} not reached)"
        build = _f(r["build_seconds"], 1)
        if r["kind"] == "ivf":
            build += f" ({_f(r['train_seconds'], 1)} k-means)"
        rows.append(
            [
                r["kind"] + (" (exact)" if r["kind"] == "flat" else ""),
                build,
                round(r["memory_mib"]),
                setting,
                _f(point["recall@10"]),
                _f(point["p50_ms"]),
                _f(point["p99_ms"]),
            ]
        )
    caption = (
        f"{d['n']:,} vectors, {d['dim']}-d, {d['clusters']:,} clusters, spread {d['spread']}; "
        f"FAISS {d.get('faiss', '?')}; {d['seconds']:.0f} s in all."
    )
    header = ["index", "build s", "memory MiB", "setting", "recall@10", "p50 ms", "p99 ms"]
    return _table(header, rows) + f"\n\n{caption}"


def nlvr(d: dict) -> str:
    base = d["majority_baseline"]
    rows = [
        [
            f"majority class ({base['class']})",
            "",
            _f(base["test_per_row"]["accuracy"]),
            _f(base["test_per_row"]["f1_macro"]),
            _f(base["test_per_example"]["accuracy"]),
            "",
            "",
        ]
    ]
    for r in d["results"]:
        rows.append(
            [
                r["kind"],
                r["preset"] + (", frozen" if r["preset"] == "pretrained" else ""),
                _f(r["test_per_row"]["accuracy"]),
                _f(r["test_per_row"]["f1_macro"]),
                _f(r["test_per_example"]["accuracy"]),
                f"{r['epochs']} ({r['best_epoch']})",
                _f(r["train_seconds"], 0),
            ]
        )
    header = ["entry", "encoders", "test accuracy (row)", "macro-F1", "accuracy (example)", "epochs (best)", "train s"]
    return _table(header, rows)


def pii(d: dict) -> str:
    ours, peer = d["results"]["polymodal"], d["results"].get("scrubadub", {})
    rows = []
    for entity, r in ours.items():
        p = peer.get(entity, {})
        rows.append(
            [
                entity,
                r["planted"],
                _f(r["precision"]),
                _f(r["recall"]),
                _f(p.get("precision")),
                _f(p.get("recall")),
            ]
        )
    header = ["entity", "planted", "polymodal precision", "polymodal recall"]
    return _table(header + ["scrubadub precision", "scrubadub recall"], rows)


def retrieval(d: dict) -> str:
    directions = [k for k in d["results"][0] if "->" in k]
    header = ["entry"] + [f"{k} {m}" for k in directions for m in ("mAP", "P@1")] + ["seconds"]
    rows = []
    for r in d["results"]:
        row = [r["entry"]]
        for k in directions:
            row += [_f(r[k]["mAP"]), _f(r[k]["precision@1"])]
        rows.append(row + [_f(r["seconds"], 1)])
    return _table(header, rows)


RL_EXTRACTORS = {
    "polymodal": ("polymodal (cell codes + TextRNN + embedding, early fusion)", "token ids"),
    "bow": ("SB3 default (flatten + bag of words)", "bag of words"),
    "blind": ("polymodal, mission hidden", "no"),
    "legacy": ("polymodal, DQN settings before issue 28", "token ids"),
}


def rl_babyai(d: dict) -> str:
    seeded = any("seed" in r for r in d["runs"])
    sampled = any("final_sampled" in r for r in d["runs"])  # runs since the sampled-action evaluation
    rows = []
    for r in d["runs"]:
        extractor, sees = RL_EXTRACTORS.get(r["name"].split("-")[0], ("-", "-"))
        final = r["final"]
        to09 = r.get("steps_to_0.9")
        row = [r["name"], r["algo"].upper(), extractor, sees]
        row += [r["seed"]] if seeded else []
        row += [f"{r['steps']:,}", _f(final["success_rate"])]
        row += [_f(r["final_sampled"]["success_rate"]) if "final_sampled" in r else "-"] if sampled else []
        if seeded:  # the best curve point and the largest fall after first reaching 0.8 (the no-collapse rule)
            c = r.get("collapse") or {}
            row += [_f(max(h["success_rate"] for h in r["history"]), 2), _f(c.get("max_drop"), 2)]
        row += [_f(final["mean_return"]), "not reached" if to09 is None else f"{to09:,}", round(r["train_seconds"])]
        rows.append(row)
    header = ["run", "algorithm", "extractor", "sees mission"] + (["seed"] if seeded else [])
    header += ["steps", f"success ({d.get('episodes', '?')} ep.)"] + (["sampled actions"] if sampled else [])
    header += ["best point", "max fall after 0.8"] if seeded else []
    table = _table(header + ["mean return", "steps to 0.9", "train s"], rows)
    speed = d.get("speed")
    if speed:
        rate = speed["steps_per_second"]
        table += (
            f"\n\nDQN training steps per second (same process, alternating, {speed['steps']:,} steps each): polymodal "
            f"{_f(rate['polymodal-dqn'], 1)}, SB3 default {_f(rate['bow-dqn'], 1)}: the polymodal extractor takes "
            f"{_f(speed['time_per_step_ratio'], 2)}x the time per step (load average "
            f"{', '.join(_f(v, 1) for v in speed['load_average_1_5_15'])})."
        )
    goals = d.get("goals") or {}
    if goals:
        table += "\n\n" + "\n".join(f"- goal {'met' if ok else '**not met**'}: {g}" for g, ok in goals.items())
    return table


def _power(n: int) -> str:
    exp = len(str(n)) - 1
    return f"10^{exp}" if n == 10**exp else f"{n:,}"


def scale_rows(d: dict) -> str:
    runs = [r for r in d["runs"] if r.get("ok")]
    runs.sort(key=lambda r: (r["verb"] != "fit", r["rows"], r["mode"] != "on"))
    rows = []
    for r in runs:
        rate = r.get("rows_per_s_fit") if r["verb"] == "fit" else r.get("rows_per_s")
        rows.append(
            [
                _power(r["rows"]),
                "streaming" if r["mode"] == "on" else "in memory",
                r["verb"],
                _f(r["wall_s"], 1),
                round(r["peak_rss_mb"]),
                round(r["peak_rss_main_mb"]),
                _f(round(rate)) if rate else "",
                _f(r.get("valid_accuracy")) if r.get("valid_accuracy") is not None else "",
            ]
        )
    header = ["rows", "mode", "verb", "wall s", "peak RSS MB (process tree)", "peak RSS MB (main process)"]
    return _table(header + ["rows/s (whole fit)", "valid acc"], rows)


def serve_load(d: dict) -> str:
    rows = [
        [
            r.get("server", r.get("batching")),
            r["load"],
            r["requests"],
            _f(r["throughput_rps"], 1),
            _f(r["p50_ms"], 1),
            _f(r["p95_ms"], 1),
            _f(r["p99_ms"], 1),
            r["errors"],
            _f(r["mean_batch_rows"], 1),
        ]
        for r in d["load"]
    ]
    header = ["server", "load", "requests", "answered/s", "p50 ms", "p95 ms", "p99 ms", "errors", "rows per pass"]
    out = _table(header, rows)
    if "goals_measured" in d:  # the goals of each polymodal runtime, and how it compares with the peer
        g = d["goals"]
        goal_rows = []
        for name, m in d["goals_measured"].items():
            got, met = m["measured"], m["met"]
            peer = d.get("versus_peer", {}).get(name, {})

            def cell(key: str, digits: int = 1) -> str:
                return f"{_f(float(got[key]), digits)} ({'met' if met[key] else 'not met'})"  # noqa: B023

            goal_rows.append([
                name, cell("p50_ms_at_10_rps"), cell("p99_ms_at_100_rps"), cell("saturation_rps", 0),
                f"{got['errors']} ({'met' if met['errors'] else 'not met'})",
                f"{_f(peer.get('p50_at_10_rps_x_faster'), 1)}x / {_f(peer.get('p99_at_100_rps_x_faster'), 1)}x / "
                f"{_f(peer.get('saturation_x_more'), 1)}x",
            ])  # fmt: skip
        header = [
            "runtime", f"p50 ms at 10 req/s (goal <= {g['p50_ms_at_10_rps']:g})",
            f"p99 ms at 100 req/s (goal < {g['p99_ms_at_100_rps']:g})",
            f"saturation req/s (goal >= {g['saturation_rps']:g})", "errors (goal 0)",
            "vs peer: p50 / p99 faster, saturation more",
        ]  # fmt: skip
        out += "\n\n" + _table(header, goal_rows)
    return out


def rl_extractor_speed(d: dict) -> str:
    """Per-step cost of the polymodal RL extractor against SB3's default (bag of words), before and after."""
    rows = []
    for label, entry in d["entries"].items():
        for env, algos in entry["results"].items():
            for algo, r in algos.items():
                for name, ratio in r["ratio_vs_bow"].items():
                    rows.append([label, env, algo.upper(), name, _f(ratio["act"], 2), _f(ratio["train"], 2),
                                 _f(ratio["learn_time_per_step"], 2)])  # fmt: skip
    header = ["code", "env", "algo", "extractor", "act x default", "train x default", "learn() time / step x default"]
    return _table(header, rows) + f"\n\nGoal: {d['goal']}. Ratios are within one run (the machine was shared)."


def tune(d: dict) -> str:
    startup = (d.get("reduced") or {}).get("pruner_startup")
    labels = {"pruned": f"median pruner, starts after {startup} trials", "unpruned": "no pruner"}
    rows = []
    for arm, r in d["arms"].items():
        states = r.get("states", {})
        best = (r.get("best") or {}).get("value")
        rows.append(
            [
                labels.get(arm, arm),
                _f(r["search_seconds"], 0),
                r["epochs_trained"],
                states.get("COMPLETE", 0),
                states.get("PRUNED", 0),
                _f(best, 4),
            ]
        )
    header = ["study", "search s (first trial start to last end)", "epochs trained", "complete", "pruned"]
    out = _table(header + ["best valid acc"], rows)
    refit = d.get("refit") or []
    if refit:
        seeds = ", ".join(f"seed {r['seed']}: {_f(r['accuracy'])}" for r in refit)
        out += (
            f"\n\nPruned / unpruned search time: **{_f(d['pruned_over_unpruned_search_seconds'], 2)}** (epochs "
            f"{_f(d['pruned_over_unpruned_epochs'], 2)}; goal <= {d['goal_pruned_ratio']}). Best configuration (from "
            f"the {d['best_from']} study) re-fit and tested: {seeds}; mean **{_f(d['test_accuracy_mean'])} +/- "
            f"{_f(d['test_accuracy_std'])}** (goal >= {d['goal_test_accuracy']})."
        )
    return out


RENDERERS: dict[str, Callable[[dict], str]] = {
    "audio_augment": audio_augment,
    "av_digits": av_digits,
    "av_video": av_video,
    "av_video_sound": av_video_sound,
    "captions": captions,
    "compare": compare,
    "compress_av_digits": compress,
    "ddp_scaling": ddp_scaling,
    "encode_once": encode_once,
    "encode_throughput": encode_throughput,
    "index_scale": index_scale,
    "nlvr": nlvr,
    "pii": pii,
    "retrieval_av_digits": retrieval,
    "rl_babyai": rl_babyai,
    "rl_extractor_speed": rl_extractor_speed,
    "scale_rows": scale_rows,
    "serve_load": serve_load,
    "sort_of_clevr": sort_of_clevr,
    "speakers": speakers,
    "speech_padding": speech_padding,
    "text_decoding": text_decoding,
    "tune_av_digits": tune,
    "voice_privacy": voice_privacy,
}


def renderer_for(name: str, data: dict) -> Callable[[dict], str]:
    keys = [data.get("benchmark") or "", name]
    for key in keys:
        matches = [k for k in RENDERERS if key.startswith(k)]
        if matches:
            return RENDERERS[max(matches, key=len)]
    raise KeyError(f"no table renderer for benchmarks/results/{name}.json; add one to {__file__}")


def render(name: str, folder: Path, page_src: str) -> str:
    """The table of `folder/name.json` and a link to the file, relative to the page (`page_src` in docs/)."""
    path = Path(folder) / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    table = renderer_for(name, data)(data)
    link = posixpath.relpath(f"benchmarks/results/{name}.json", posixpath.join("docs", posixpath.dirname(page_src)))
    command = data.get("command")
    source = f"Generated from [`benchmarks/results/{name}.json`]({link})"
    source += f" (`{' '.join(command.split())}`)." if command else "."
    return f"{table}\n\n{source}\n"


if __name__ == "__main__":  # python docs/hooks/gen_benchmarks.py NAME: print one table
    import sys

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    for n in sys.argv[1:] or sorted(p.stem for p in root.glob("*.json")):
        print(f"### {n}\n\n{render(n, root, 'benchmarks/x.md')}")
