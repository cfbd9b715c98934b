"""Decoding speed of a text model: generated tokens per second, greedy and beam 4, batch 1 and batch 32, PyTorch
vs ONNX Runtime, in one run, with the strings of both runtimes compared for every configuration.

The model is fitted here: on the first `--train-rows` rows of the digit-strings table
(../shared/bench/make_digit_strings.py, spoken + handwritten digits -> "three one four"; audio and image inputs,
attention fusion, transformer decoder dim 128, 2 layers, 4 heads, max length 8, as benchmarks/digit_strings.py)
for `--epochs` epochs, or, when that table is absent, on a small generated every-kind table (tests/synth.py).
Then exported (`export_onnx`: the encoder/fusion graph and the decoder-step graph) and both runtimes decode the
same `--rows` test rows, preprocessed once beforehand (media decoding is not timed).

Timed per configuration: `engine.outputs(features, batch_size)` (encoder + fusion + decoding), one warm-up pass,
then the median of `--repeats` passes; separately the encoder + fusion alone (the memory the decoder reads), so
decoding alone is the difference. Tokens: the returned (best) hypothesis's tokens, <bos> excluded, <eos>
included. One thread everywhere: torch intra-op and inter-op threads, ONNX Runtime intra-op and inter-op threads.

    nice -n 19 python benchmarks/text_decoding.py [--data /tmp/polymodal_digit_strings] [--rows 64] [--repeats 5]

Prints a table and writes benchmarks/results/text_decoding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch / onnxruntime load their thread pools

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)
BEAMS = (1, 4)


def digit_table(data: Path, train_rows: int, rows: int, work: Path) -> tuple[Path, pd.DataFrame, str]:
    """The first `train_rows` training rows (paths made absolute) and the first `rows` test rows."""
    train = pd.read_csv(data / "train.csv").head(train_rows)
    test = pd.read_csv(data / "test.csv").head(rows)
    for df in (train, test):
        for col in ("audio", "image"):
            df[col] = [str(data / p) for p in df[col]]
    train.to_csv(work / "train.csv", index=False)
    return work / "train.csv", test, "transcript"


def synth_table(rows: int, work: Path) -> tuple[Path, pd.DataFrame, str]:
    """tests/synth.py's every-kind table with a three-word text label, as tests/test_text_verbs.py builds it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from synth import make_table

    df = make_table(work, 800 + rows, seed=3)
    df["words"] = [f"a {'blue' if y // 2 else 'red'} {'dog' if y % 2 else 'cat'}" for y in df["y"]]
    df = df.drop(columns=["y", "score"])
    for col in ("image", "clip"):
        df[col] = [None if pd.isna(p) else str(work / p) for p in df[col]]
    df.iloc[:800].to_csv(work / "train.csv", index=False)
    return work / "train.csv", df.iloc[800:].reset_index(drop=True), "words"


def fit(train: Path, label: str, epochs: int, digits: bool, folder: Path) -> dict[str, Any]:
    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(
        label=label,
        problem_type="text",
        fusion="attention",
        ignore=["speaker"] if digits else [],
        preprocess={"image_size": 64, "sample_rate": 8000},
        decoder={"dim": 128, "layers": 2, "heads": 4, "max_length": 8, "label_smoothing": 0.1},
        max_epochs=epochs,
        seed=0,
        batch_size=32,
        progress=False,
    )
    start = time.perf_counter()
    p.fit(train)
    seconds = time.perf_counter() - start
    p.save(folder)
    return {"fit_seconds": round(seconds, 1), "parameters": p.info()["parameters"], "epochs": epochs,
            "inputs": list(p.engine.schema.inputs)}  # fmt: skip


def token_counts(outputs: np.ndarray) -> tuple[int, int]:
    """(tokens with <eos>, tokens without) of the best hypothesis of each row."""
    from polymodal.tasks.text import EOS, PAD

    ids = outputs[:, 0, 1:].astype(np.int64)
    with_eos = without = 0
    for row in ids:
        ends = np.flatnonzero(row == EOS)
        n = int(ends[0]) if len(ends) else int((row != PAD).sum())
        without += n
        with_eos += n + (1 if len(ends) else 0)
    return with_eos, without


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first-call allocations, ONNX Runtime's first-run planning
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def encoder_fn(engine: Any, features: Any, batch: int):
    """The encoder + fusion pass alone (the memory the decoder reads), batch by batch."""
    n = len(features)
    if engine.runtime == "onnx":
        net = engine.net

        def run() -> None:
            for s in range(0, n, batch):
                net.session.run(
                    ["memory", "memory_mask", "cache"], net.feed(features.take(np.arange(s, min(s + batch, n))))
                )

        return run
    import torch

    from polymodal.model.batch import iterate_batches

    def run_torch() -> None:
        with torch.inference_mode():
            for b in iterate_batches(features, batch):
                engine.net.memory(b["inputs"], b["present"])

    return run_torch


class StepCounter:
    """Wraps `beam_search` in the runtime modules to count decoder steps, hypotheses stepped and time in steps."""

    def __init__(self):
        self.steps = self.hyp_steps = 0
        self.step_s = self.search_s = 0.0

    def wrap(self, search):
        def counted(step, cache, n_rows, **kw):
            def inner(prefix, c, *shared):
                self.steps += 1
                self.hyp_steps += prefix.shape[0]
                start = time.perf_counter()
                out = step(prefix, c, *shared)
                self.step_s += time.perf_counter() - start
                return out

            start = time.perf_counter()
            try:
                return search(inner, cache, n_rows, **kw)
            finally:
                self.search_s += time.perf_counter() - start

        return counted


def count_steps(engine: Any, features: Any, batch: int) -> dict[str, Any]:
    import polymodal.model.onnx_text as onnx_text
    import polymodal.model.text_net as text_net

    counter = StepCounter()
    saved = text_net.beam_search, onnx_text.beam_search
    text_net.beam_search, onnx_text.beam_search = counter.wrap(saved[0]), counter.wrap(saved[1])
    try:
        engine.outputs(features, batch_size=batch)
    finally:
        text_net.beam_search, onnx_text.beam_search = saved
    return {"decoder_steps": counter.steps, "hypothesis_steps": counter.hyp_steps,
            "step_share_of_search": round(counter.step_s / max(counter.search_s, 1e-9), 3)}  # fmt: skip


def alternated(calls: dict[str, Any], repeats: int = 20) -> dict[str, float]:
    """Median ms of each of two calls, run alternately (a change of load hits both) after a warm-up pair; with the
    first's median over the second's as `speedup`."""
    runs: dict[str, list[float]] = {key: [] for key in calls}
    for i in range(repeats + 2):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            if i >= 2:
                runs[key].append(1000 * (time.perf_counter() - start))
    first, second = (statistics.median(runs[key]) for key in calls)
    return {key: round(statistics.median(runs[key]), 2) for key in calls} | {"speedup": round(first / second, 2)}


def step_memory_kv(engine: Any, features: Any) -> dict[str, Any] | None:
    """The transformer decoder step with the memory's keys and values recomputed vs cached, at beam 4, 32 rows
    (None for a decoder without that cache, e.g. the code before it existed)."""
    import torch

    from polymodal.model.batch import iterate_batches

    head = engine.net.head
    if not hasattr(head, "step_memory"):
        return None
    out: dict[str, Any] = {}
    with torch.inference_mode():
        batch = next(iter(iterate_batches(features, 32)))
        memory, mask, _ = engine.net.memory(batch["inputs"], batch["present"])
        mem, msk = memory.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)
        kv = head.step_memory(memory).repeat_interleave(4, 0)
        kv = kv.reshape(kv.shape[0], kv.shape[1], len(head.layers), -1)
        for t in (1, 5, 9):
            prefix = torch.ones(mem.shape[0], t, dtype=torch.long)
            calls = {"recomputed_ms": partial(head, mem, msk, prefix), "cached_ms": partial(head, mem, msk, prefix, kv)}
            out[f"prefix_{t}"] = alternated(calls)
        out["memory_tokens"] = int(memory.shape[1])
    return out


def self_attention_cache(engine: Any, features: Any) -> dict[str, Any] | None:
    """One transformer decoder step at beam 4 on 32 rows (128 hypotheses), at prefix lengths 1, 5 and 9: the whole
    prefix through the layers (the step before the self-attention cache) vs the last token with the keys and values
    of the others cached (`TransformerDecoder.step`). Alternated, medians of 20 after a warm-up pair."""
    import torch

    from polymodal.model.batch import iterate_batches

    head = engine.net.head
    if not hasattr(head, "step_memory") or head.init_cache(torch.zeros(1, 1, head.dim), None).shape[1] != 0:
        return None  # a decoder without the growing cache (e.g. the code before it)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        batch = next(iter(iterate_batches(features, 32)))
        memory, mask, _ = engine.net.memory(batch["inputs"], batch["present"])
        msk = mask.repeat_interleave(4, 0)
        flat = head.step_memory(memory).repeat_interleave(4, 0)
        kv = flat.reshape(flat.shape[0], flat.shape[1], len(head.layers), -1)
        for t in (1, 5, 9):
            prefix = torch.ones(flat.shape[0], t, dtype=torch.long)
            cache = head.init_cache(flat, msk)
            for i in range(t - 1):  # the keys and values of the first t - 1 tokens
                _, cache = head.step(prefix[:, : i + 1], flat, msk, cache)
            calls = {"whole_prefix_ms": partial(head, flat, msk, prefix, kv),
                     "cached_ms": partial(head.step, prefix, flat, msk, cache)}  # fmt: skip
            out[f"prefix_{t}"] = alternated(calls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/polymodal_digit_strings"))
    ap.add_argument("--train-rows", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_decoding.json")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from polymodal import MultimodalPredictor
    from polymodal.optimize.export import export_onnx
    from polymodal.tasks.text_metrics import exact_match, wer

    load_start = os.getloadavg()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="text_decoding_"))
    digits = (args.data / "train.csv").exists() and (args.data / "test.csv").exists()
    if digits:
        train, test, label = digit_table(args.data, args.train_rows, args.rows, work)
        source = f"digit strings ({args.data}, made by ../shared/bench/make_digit_strings.py): first "
        source += f"{args.train_rows} training rows, first {args.rows} test rows"
    else:
        train, test, label = synth_table(args.rows, work)
        source = f"generated every-kind table (tests/synth.py), 800 training rows, {args.rows} test rows"
    print(f"fitting on {source}", flush=True)
    model = fit(train, label, args.epochs, digits, work / "model")
    print(f"fitted in {model['fit_seconds']} s; exporting", flush=True)
    graph = export_onnx(work / "model", work / "model.onnx")

    runtimes = {
        "pytorch": MultimodalPredictor.load(work / "model").engine,
        # _load_onnx: the loader `load(runtime="onnx")` uses, with the intra-op thread count pinned
        "onnxruntime": MultimodalPredictor._load_onnx(graph, None, threads=args.threads).engine,
    }
    features = {name: e.features(test.drop(columns=[label]), Path.cwd())[0] for name, e in runtimes.items()}
    base = dict(runtimes["pytorch"].net.generation)
    refs = test[label].astype(str).tolist()

    encode = {}
    for name, engine in runtimes.items():
        for b in BATCHES:
            encode[(name, b)] = statistics.median(timed(encoder_fn(engine, features[name], b), args.repeats))

    results, strings = [], {}
    for beam in BEAMS:
        for b in BATCHES:
            for name, engine in runtimes.items():
                engine.net.generation = base | {"beam_size": beam, "n_best": 1, "no_repeat_ngram": 0}
                outputs: list[np.ndarray] = []

                def run(engine=engine, name=name, b=b, outputs=outputs) -> None:
                    outputs[:] = [engine.outputs(features[name], batch_size=b)]

                times = timed(run, args.repeats)
                out = outputs[0]
                total = statistics.median(times)
                tokens, tokens_no_eos = token_counts(out)
                texts = list(engine.task.decode(out))
                strings[(name, beam, b)] = (texts, out[:, 0, 0])
                decode_s = total - encode[(name, b)]  # <= 0 only when the load swamped the difference
                r = {
                    "runtime": name, "beam_size": beam, "batch_size": b, "rows": len(test),
                    "tokens": tokens, "tokens_without_eos": tokens_no_eos,
                    "seconds_median": round(total, 4), "seconds_all": [round(t, 4) for t in times],
                    "tokens_per_s": round(tokens / total, 1), "rows_per_s": round(len(test) / total, 2),
                    "ms_per_row": round(1000 * total / len(test), 3),
                    "encoder_ms_per_row": round(1000 * encode[(name, b)] / len(test), 3),
                    "tokens_per_s_best": round(tokens / min(times), 1),
                    "decode_tokens_per_s": round(tokens / decode_s, 1) if decode_s > 0 else None,
                    "wer": round(wer(refs, texts), 4), "exact_match": round(exact_match(refs, texts), 4),
                    **count_steps(engine, features[name], b),
                }  # fmt: skip
                results.append(r)
                print(f"{name:12s} beam {beam} batch {b:2d}: {r['tokens_per_s']:8.1f} tok/s "
                      f"{r['ms_per_row']:8.2f} ms/row", flush=True)  # fmt: skip

    step_ab = step_memory_kv(runtimes["pytorch"], features["pytorch"])
    cache_ab = self_attention_cache(runtimes["pytorch"], features["pytorch"])
    same = []
    for beam in BEAMS:
        for b in BATCHES:
            (pt, pts), (ox, oxs) = strings[("pytorch", beam, b)], strings[("onnxruntime", beam, b)]
            same.append({"beam_size": beam, "batch_size": b, "identical_strings": pt == ox,
                         "rows_differing": sum(x != y for x, y in zip(pt, ox, strict=True)),
                         "max_score_difference": float(np.max(np.abs(pts - oxs)))})  # fmt: skip
    batch_invariant = {f"{name} beam {beam}": strings[(name, beam, 1)][0] == strings[(name, beam, 32)][0]
                       for name in runtimes for beam in BEAMS}  # fmt: skip
    for r in results:
        r["identical_to_other_runtime"] = next(
            s["identical_strings"]
            for s in same
            if (s["beam_size"], s["batch_size"]) == (r["beam_size"], r["batch_size"])
        )

    doc = {
        "benchmark": "text_decoding",
        "command": "nice -n 19 python benchmarks/text_decoding.py " + " ".join(sys.argv[1:]),
        "table": source,
        "real_table": digits,
        "model": model | {"decoder": "transformer, dim 128, 2 layers, 4 heads, max length 8", "fusion": "attention"},
        "rows": len(test),
        "repeats": args.repeats,
        "timing": "engine.outputs on preprocessed rows (encoder + fusion + decoding; media decoding not timed); "
        "one warm-up pass then the median of the repeats",
        "tokens": "the best hypothesis's generated tokens, <bos> excluded, <eos> included (tokens_without_eos: "
        "without it)",
        "decode_tokens_per_s": "tokens / (total time - the encoder + fusion pass alone, timed separately); null "
        "when the load made the difference negative. tokens_per_s_best: from the fastest repeat",
        "step_memory_kv": step_ab,
        "self_attention_cache": cache_ab,
        "step_memory_kv_method": "the PyTorch decoder step at beam 4 on 32 rows (128 hypotheses), the memory's "
        "cross-attention keys and values recomputed in the step (as before step_memory) vs computed once "
        "beforehand, alternated, median of 20 each after 2 warm-ups, at prefix lengths 1, 5 and 9",
        "decoder_steps": "step calls over the rows (one un-timed pass); hypothesis_steps: rows stepped in them; "
        "step_share_of_search: time inside the decoder step / time in the whole search",
        "results": results,
        "equal_strings": same,
        "all_strings_identical": all(s["identical_strings"] for s in same),
        "batch_1_vs_32_identical": batch_invariant,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "ort_intra_op_threads": args.threads,
            "ort_inter_op_threads": 1,
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "nice": os.nice(0),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print()
    print(f"{'runtime':12s} {'beam':>4s} {'batch':>5s} {'tok/s':>9s} {'rows/s':>8s} {'ms/row':>8s} "
          f"{'enc ms/row':>10s} {'dec tok/s':>9s} {'steps':>6s} {'same':>5s}")  # fmt: skip
    for r in results:
        print(f"{r['runtime']:12s} {r['beam_size']:4d} {r['batch_size']:5d} {r['tokens_per_s']:9.1f} "
              f"{r['rows_per_s']:8.2f} {r['ms_per_row']:8.2f} {r['encoder_ms_per_row']:10.2f} "
              f"{r['decode_tokens_per_s'] or float('nan'):9.1f} {r['decoder_steps']:6d} "
              f"{str(r['identical_to_other_runtime']):>5s}")  # fmt: skip
    if step_ab:
        ab = [f"{k} {v['recomputed_ms']} vs {v['cached_ms']}" for k, v in step_ab.items() if k != "memory_tokens"]
        print("\ndecoder step, beam 4 x 32 rows, memory keys/values recomputed vs cached (ms): " + ", ".join(ab))
    if cache_ab:
        ab = [f"{k} {v['whole_prefix_ms']} vs {v['cached_ms']}" for k, v in cache_ab.items()]
        print("decoder step, beam 4 x 32 rows, whole prefix vs self-attention cache (ms): " + ", ".join(ab))
    print(f"\nall strings identical (PyTorch vs ONNX Runtime): {doc['all_strings_identical']}; "
          f"load average {load_start} -> {doc['machine']['load_average_end']}")  # fmt: skip
    from polymodal.files import write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
