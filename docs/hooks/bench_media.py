"""Benchmark tables of the audio, video, captioning and decoding benchmarks (see gen_benchmarks.py, which
picks the renderer of each JSON file)."""

from __future__ import annotations

from bench_format import _bold_max, _f, _table


def sort_of_clevr(d: dict) -> str:
    rows = [
        [
            r["fusion"],
            "tokens" if r["token_level"] else "pooled",
            _f(r["relational"]),
            _f(r["non_relational"]),
            _f(r["accuracy"]),
            r["epochs"],
            _f(r["train_seconds"], 0),
        ]
        for r in d["entries"]
    ]
    for col in (2, 3, 4):
        rows = _bold_max(rows, col)
    return _table(["fusion", "level", "relational", "non-relational", "all", "epochs", "train s"], rows)


def captions(d: dict) -> str:
    """Sort-of-CLEVR captions: one row per entry (the constant caption is a reference line), then the settings."""
    rows = []
    for r in d["results"]:
        acc = [_f(r[k]) for k in ("attribute_accuracy", "shape_accuracy", "row_accuracy", "column_accuracy")]
        speed = [_f(r.get("train_seconds"), 0), _f(r.get("ms_per_picture"), 2), r.get("features", "-")]
        rows.append([r["entry"], *acc, _f(r["exact_match"]), _f(r["cider"]), _f(r["bleu4"], 1), *speed])
    header = ["entry", "attribute accuracy", "shape", "row", "column", "exact match", "CIDEr", "BLEU-4", "train s"]
    out = _table(header + ["ms / picture", "what it reads"], _bold_max(_bold_max(rows, 1), 5))
    s, m = d["settings"], d["machine"]
    poly = next((r for r in d["results"] if r["entry"] == "polymodal"), None)
    epochs = f" polymodal trained {poly['epochs']} epochs (the best: epoch {poly['best_epoch'] + 1})." if poly else ""
    load = " -> ".join(", ".join(_f(v, 2) for v in m[k]) for k in ("load_average_start", "load_average_end"))
    return (
        out
        + f"\n\n{s['train_pictures']:,} training / {s['test_pictures']} test pictures ({d['table']}); the CNN reads "
        + f"{s['image_size']} px pictures (full size 75), the peers {s['peer_size']} x {s['peer_size']} pixels. "
        + f"Training budget {_f(s['minutes'], 0)} min or {s['max_epochs']} epochs;{epochs} Goal: attribute accuracy "
        + f">= {d['goal']['attribute_accuracy']}, met: {_f(d['goal_met'])}. {m['cpus']} CPUs, load average {load}."
    )


def encode_once(d: dict) -> str:
    """Epoch time and image-encoder work, each picture encoded per row vs once (shuffled or grouped batches)."""
    rows = [
        [r["fusion"], r["mode"].replace("_", " "), _f(r["seconds_per_epoch"], 1),
         f"{r['image_encoder_rows_per_epoch']:,}", f"{r['train_rows']:,}", _f(r["features_mb"], 1),
         f"{_f(r['speedup'], 2)}x"]
        for r in d["entries"]
    ]  # fmt: skip
    s = d["settings"]
    header = ["fusion", "mode", "s / epoch", "image-encoder rows / epoch", "rows", "features MB", "speed-up"]
    setting = (f"{s['train_pictures']} pictures x {_f(s['questions_per_picture'], 0)} questions at {s['image_size']} "
               f"px, batch {s['batch_size']}, {s['epochs']} epoch(s). {d['note']}.")  # fmt: skip
    return _table(header, rows) + "\n\n" + setting


VOICE_ROWS = {
    "clean": "clean audio, models trained on clean audio",
    "ignorant (alpha 0.8)": "ignorant attacker: clean-trained models, McAdams test audio (alpha 0.8)",
    "ignorant (alpha 0.7-0.9 per clip)": "same, a random alpha in [0.7, 0.9] per clip",
    "informed (alpha 0.8)": "informed attacker: models retrained on McAdams audio (alpha 0.8)",
}
VOICE_WARP_ROWS = {
    "clean": "models trained on clean audio with `train.audio_warp={strength}`, clean test audio",
    "ignorant (alpha 0.8)": "same models, McAdams test audio (alpha 0.8)",
    "ignorant (alpha 0.7-0.9 per clip)": "same models, a random alpha in [0.7, 0.9] per clip",
}


def voice_privacy(d: dict) -> str:
    speaker, digit = d["results"]["speaker"], d["results"]["digit"]
    rows = [[label, _f(speaker.get(k)), _f(digit.get(k))] for k, label in VOICE_ROWS.items() if k in speaker]
    warp_s, warp_d = speaker.get("audio_warp") or {}, digit.get("audio_warp") or {}
    for k, label in VOICE_WARP_ROWS.items():
        if k in warp_s:
            rows.append([label.format(strength=warp_s.get("strength")), _f(warp_s[k]), _f(warp_d.get(k))])
    return _table(["condition", "speaker accuracy (lower is better)", "digit accuracy"], rows)


def _params(p: dict) -> str:
    return ", ".join(f"{k}={round(v, 5) if isinstance(v, float) else v}" for k, v in p.items())


def speakers(d: dict) -> str:
    """Leave-one-speaker-out: one row per entry and table, mean ± std over the held-out speakers."""
    n = len(d["settings"]["speakers"])
    rows = []
    for key, table in (("loso", "0 dB"), ("snr20", "20 dB")):
        for r in d.get(key, []):
            per = ", ".join(f"{f['speaker']} {_f(f['accuracy'])}" for f in r["folds"])
            rows.append([table, r["entry"], r["scored_on"], f"{_f(r['mean'])} ± {_f(r['std'])}", per,
                         _f(r["fit_seconds"], 0)])  # fmt: skip
    out = _table(["table", "entry", "scored on", f"accuracy (mean ± std, {n} speakers)", "per held-out speaker",
                  "fit s (all folds)"], rows)  # fmt: skip
    tune = d.get("tune") or {}
    if tune:
        runs = [[r["speaker"], r["validation"], _f(r["best_valid"]), _f(r["held_out_accuracy"]),
                 _params(r["best_params"])] for r in tune["runs"]]  # fmt: skip
        out += "\n\n" + _table(["held-out speaker", "tune validation", "best trial's validation accuracy",
                                  "its accuracy on the held-out speaker", "best trial"], runs)  # fmt: skip
    calls = d.get("invocations", [])
    if len(calls) > 1:  # a resumed run: which invocation measured which part
        out += "\n\nParts by invocation: " + "; ".join(
            f"{', '.join(c['parts'])}: `{c['command']}` ({c['date']}, load {c['load_at_start']:.1f})" for c in calls
        )
    return out


def av_video(d: dict) -> str:
    """AV-digit-order video: one row per compare entry, then decoding throughput and its share of an epoch."""
    rows = [[r["entry"], _f(r["test_accuracy"]), _f(r.get("test_macro_f1")), r["epochs"], _f(r["seconds_per_epoch"], 1)]
            for r in d["entries"]]  # fmt: skip
    out = _table(["entry", "test accuracy", "macro F1", "epochs", "s / epoch"], rows)
    speed = ", ".join(f"{w} workers {_f(v, 1)}" for w, v in d["decode_videos_per_s"].items())
    share = d.get("decode_share_of_streamed_epoch")
    return (
        out
        + av_video_branches(d)
        + av_video_reference(d)
        + f"\n\nDecoding (one PyAV pass per video, videos/s by loader workers): {speed}."
        + (
            f" Decoding one pass over the training videos would be {_f(100 * share, 1)} % of a streamed epoch."
            if share
            else ""
        )
    )


def av_video_branches(d: dict) -> str:
    """`--pretrain-branches` runs: each branch's last fit (the one the compare starts from or reads), on test."""
    fits = [(b, stages[list(stages)[-1]]) for b, stages in (d.get("pretrained") or {}).items()]
    if not fits or "wer" not in fits[0][1]["test"]:
        return ""
    rows = [[b, f["folder"].rsplit("/", 1)[-1], _f(f["test"]["wer"]), _f(f["test"]["exact_match"]), f["epochs"],
             "reused" if f.get("reused") else _f(f["seconds"], 0)] for b, f in fits]  # fmt: skip
    header = ["branch", "text model (folder)", "test WER", "exact digits", "epochs", "fit s"]
    return "\n\nThe branches' text models on the test clips' captions:\n\n" + _table(header, rows)


def av_video_reference(d: dict) -> str:
    """`--readout` runs: the same readouts under fixed rules (benchmarks/av_video_bayes.py), per split."""
    ref = d.get("readout_reference")
    if not ref:
        return ""
    rows = [[split, r["clips"], _f(r["hard"]), _f(r["bayes"]), " / ".join(_f(v) for v in r["frames_right_by_position"]),
             " / ".join(_f(v) for v in r["sound_right_by_position"])] for split, r in ref.items()]  # fmt: skip
    header = ["clips", "n", "hard rule", "Bayes rule", "frames: digit right by position", "sound: by position"]
    return "\n\nThe branches' readouts under fixed rules, no training (`benchmarks/av_video_bayes.py`):\n\n" + _table(
        header, rows
    )


def av_video_sound(d: dict) -> str:
    """The sound branch alone: one row per sound encoder, scored in the same run."""
    rows = [[name, _f(e["test"]["wer"]), _f(e["test"].get("cer")), _f(e["test"]["exact_match"], 2),
             " / ".join(_f(v) for v in e["per_position_accuracy"]), e["epochs"], _f(e["fit_seconds"], 0)]
            for name, e in d["entries"].items()]  # fmt: skip
    header = ["sound encoder", "test WER", "CER", "exact caption", "right by position", "epochs", "fit s"]
    return _table(header, rows)


def speech_padding(d: dict) -> str:
    """Padding of short clips for speech-embedding: one row per (padding, length, pooling), and the peer's."""
    rows = []
    for r in d["results"]:
        per = ", ".join(f"{k} {_f(v)}" for k, v in r["loso"].items())
        rows.append([r["padding"], _f(r["seconds"]), r["pooling"], _f(r["official"]),
                     f"{_f(r['loso_mean'])} ± {_f(r['loso_std'])}", per])  # fmt: skip
    return _table(["padding", "seconds read", "pooling", "official split", "leave one speaker out (mean ± std)",
                   "per held-out speaker"], _bold_max(rows, 4))  # fmt: skip


def audio_augment(d: dict) -> str:
    """Speaker-robust scratch audio: one row per variant, leave one speaker out."""
    rows = []
    for name, r in d["results"].items():
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(none)"
        per = ", ".join(f"{k} {_f(v['accuracy'])}" for k, v in r["per_speaker"].items())
        fit = sum(v["train_s"] for v in r["per_speaker"].values())
        rows.append([name, settings, f"{_f(r['loso_mean'])} ± {_f(r['loso_std'])}", per, _f(fit, 0)])
    return _table(["variant", "settings", "held-out speaker accuracy (mean ± std)", "per held-out speaker",
                   "fit s (5 folds)"], rows)  # fmt: skip


def text_decoding(d: dict) -> str:
    """Decoding speed of a text model: one row per (beam, batch, runtime), then the strings' equality and load."""
    rows = [
        [
            "greedy" if r["beam_size"] == 1 else f"beam {r['beam_size']}",
            r["batch_size"],
            r["runtime"],
            _f(r["tokens_per_s"], 0),
            _f(r["rows_per_s"], 1),
            _f(r["ms_per_row"], 2),
            _f(r["encoder_ms_per_row"], 2),
            _f(r["decode_tokens_per_s"], 0),
            r["decoder_steps"],
            _f(r["identical_to_other_runtime"]),
        ]
        for r in d["results"]
    ]
    header = ["decoding", "batch", "runtime", "tokens/s", "rows/s", "ms/row", "encoder ms/row"]
    out = _table(header + ["decoding-only tokens/s", "decoder steps", "same strings as the other runtime"], rows)
    m = d["machine"]
    load = " -> ".join(", ".join(_f(v, 2) for v in m[k]) for k in ("load_average_start", "load_average_end"))
    return (
        out
        + f"\n\n{d['rows']} rows ({d['table']}); model: {d['model']['decoder']}, {d['model']['fusion']} fusion of "
        + f"{', '.join(d['model']['inputs'])}, {d['model']['epochs']} epochs. Median of {d['repeats']} passes after "
        + f"a warm-up. Tokens: {d['tokens']}. Threads: torch {m['torch_threads']}, ONNX Runtime intra-op "
        + f"{m['ort_intra_op_threads']}; {m['cpus']} CPUs, load average {load}; torch {m['torch']}, onnxruntime "
        + f"{m['onnxruntime']}. Every configuration gives the same strings in both runtimes: "
        + f"{_f(d['all_strings_identical'])}."
        + _step_memory_kv(d.get("step_memory_kv"))
    )


def _step_memory_kv(ab: dict | None) -> str:
    if not ab:
        return ""
    cells = [f"prefix {k.split('_')[1]}: {_f(v['recomputed_ms'], 1)} vs {_f(v['cached_ms'], 1)} ms "
             f"({_f(v['speedup'], 2)}x)" for k, v in ab.items() if k.startswith("prefix_")]  # fmt: skip
    return (
        f" PyTorch decoder step at beam 4 on 32 rows ({ab['memory_tokens']} memory tokens), the memory's keys and "
        f"values recomputed in the step vs cached: {'; '.join(cells)}."
    )
