"""Frozen feature extraction throughput: polymodal's `FrozenExtractor` vs a plain hand-written torch loop.

Text: NLVR sentences through `minilm` (all-MiniLM-L6-v2; plain loop: tokenizer padding to the batch's longest +
AutoModel + mean pooling). Images: NLVR dev PNGs (400x100, squashed to 224x224) through `efficientnet-lite0` (plain
loop: PIL decode + resize + normalize, NCHW float batch, forward). Both sides use the same encoder files, settings
(`polymodal.preprocess.pretrained.settings`, text max_len 64), batch size and inputs, in the same run; model loading
is timed apart. Rows: distinct sentences (dev + hidden) and distinct images, where both sides do the same work; and
the 989 dev rows' sentences as a table holds them (249 distinct: polymodal encodes each distinct text once, the plain
loop every row). Each timing is the best of --repeats interleaved runs (the CPU is shared), each polymodal run with
a fresh temporary cache dir. The second extraction uses a new extractor on the same cache dir (what a later fit
sees: every row a cache hit read from disk). Diagnostic: the plain image loop in channels-last memory format.

    python benchmarks/encode_throughput.py [--nlvr ../shared/data/nlvr] [--images 300] [--repeats 3]
    python benchmarks/encode_throughput.py --int8 [--texts 300] [--images 100]   # int8 ONNX path vs plain fp32

Prints a table and writes benchmarks/results/encode_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from polymodal.data.schema import Modality
from polymodal.encoders.cache import FrozenExtractor
from polymodal.encoders.pretrained import resolve
from polymodal.model.artifact import write_json
from polymodal.preprocess.pretrained import settings

ROOT = Path(__file__).resolve().parents[1]


def nlvr_inputs(nlvr: Path, n_images: int) -> tuple[list[str], list[str], list[str]]:
    """(distinct sentences of dev + hidden, the dev rows' sentences with their repeats, n distinct dev images)."""
    rows = {split: [json.loads(line)["sentence"] for line in (nlvr / split / f"{split}.json").read_text().splitlines()]
            for split in ("dev", "hidden")}  # fmt: skip
    distinct = list(dict.fromkeys(rows["dev"] + rows["hidden"]))
    images = sorted(str(p) for p in (nlvr / "dev" / "images").glob("*/*.png"))
    step = max(1, len(images) // n_images)  # spread over folders and examples, not the first few examples
    return distinct, rows["dev"], images[::step][:n_images]


# ---- the plain loops -----------------------------------------------------------------------------------------
class PlainText:
    def __init__(self, path: str, max_len: int, batch_size: int, padding: bool | str = True):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_len, self.batch_size, self.padding = max_len, batch_size, padding

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tok(
                    texts[s : s + self.batch_size],
                    padding=self.padding,
                    truncation=True,
                    max_length=self.max_len,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).numpy())
        return np.concatenate(out)


class PlainImage:
    def __init__(self, weights: str, st: dict, batch_size: int, channels_last: bool = False):
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        self.size, self.batch_size, self.channels_last = st["size"], batch_size, channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(st["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(st["std"]).view(1, 3, 1, 1)

    def __call__(self, paths: list[str]) -> np.ndarray:
        from PIL import Image

        out = []
        with torch.inference_mode():
            for s in range(0, len(paths), self.batch_size):
                arrs = []
                for p in paths[s : s + self.batch_size]:
                    with Image.open(p) as im:
                        arrs.append(np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)))
                x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
                x = (x - self.mean) / self.std
                # NCHW contiguous, as torchvision's ToTensor gives; channels_last is a diagnostic variant
                x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
                out.append(self.model.extract_features(x).mean(dim=(2, 3)).numpy())
        return np.concatenate(out)


# ---- timing --------------------------------------------------------------------------------------------------
def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench_modality(
    modality: Modality, name: str, values: list[str], st: dict, plain: dict, batch_size: int, repeats: int
) -> dict:
    """Interleaved repeats of: polymodal first extraction (fresh cache), second (new extractor, all hits), and each
    plain loop variant (`plain["plain"]` is the reference; the others are diagnostics)."""
    ref = resolve(name)
    col = modality.value
    first, second, stats = [], [], {}
    runs: dict[str, list[float]] = {k: [] for k in plain}
    poly = ref_out = None
    for _ in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="polymodal_encode_"))
        try:
            ex = FrozenExtractor(ref, modality, st, cache_dir=cache, batch_size=batch_size, progress=False)
            _ = ex.module  # load the weights (and the tokenizer) outside the timed part, as for the plain loop
            if modality is Modality.TEXT:
                ex.inputs._load_tool()
            t, (poly, present, problems) = timed(ex, col, values, Path("."))
            assert present.all() and not problems, problems
            first.append(t)
            stats = dict(ex.stats)
            again = FrozenExtractor(ref, modality, st, cache_dir=cache, batch_size=batch_size, progress=False)
            t, (emb2, _, _) = timed(again, col, values, Path("."))
            assert again.stats["misses"] == 0 and np.array_equal(emb2, poly)
            second.append(t)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        for k, fn in plain.items():
            t, out = timed(fn, values)
            runs[k].append(t)
            ref_out = out if k == "plain" else ref_out
    cos = (poly * ref_out).sum(1) / (np.linalg.norm(poly, axis=1) * np.linalg.norm(ref_out, axis=1))
    n, best = len(values), min(first)
    return {
        "encoder": name,
        "inputs": n,
        "unique_inputs": len(set(values)),
        "batch_size": batch_size,
        "polymodal_first_s": round(best, 3),
        "polymodal_first_per_s": round(n / best, 1),
        "plain_s": round(min(runs["plain"]), 3),
        "plain_per_s": round(n / min(runs["plain"]), 1),
        "ratio_polymodal_over_plain": round(min(runs["plain"]) / best, 3),
        "cached_second_s": round(min(second), 3),
        "cached_speedup": round(best / min(second), 1),
        "min_cosine_vs_plain": round(float(cos.min()), 6),
        "diagnostics": {
            k: {
                "s": round(min(v), 3),
                "per_s": round(n / min(v), 1),
                "ratio_polymodal_over_it": round(min(v) / best, 3),
            }
            for k, v in runs.items()
            if k != "plain"
        },
        "all_runs_s": {"polymodal_first": first, "polymodal_second": second} | runs,
        "extractor_stats_first_run": stats,
    }


def bench_int8(
    modality: Modality, name: str, values: list[str], st: dict, plain, batch_size: int, repeats: int
) -> dict:
    """The int8 ONNX Runtime path of the feature pass (`FrozenExtractor(runtime="onnx-int8")`, fresh cache each
    run; the graph is exported and quantized once, before timing) against the plain fp32 loop, interleaved."""
    ref = resolve(name)
    col = modality.value
    warm = FrozenExtractor(ref, modality, st, cache_dir=Path(tempfile.mkdtemp()), progress=False, runtime="onnx-int8")
    warm(col, values[:2], Path("."))  # export + quantize once (kept under the cache root), load the session
    int8, plain_t, emb = [], [], None
    for _ in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="polymodal_encode_"))
        try:
            ex = FrozenExtractor(ref, modality, st, cache_dir=cache, batch_size=batch_size, progress=False,
                                 runtime="onnx-int8")  # fmt: skip
            ex._int8 = warm._int8  # the loaded session: model loading is excluded on both sides
            t, (emb, present, problems) = timed(ex, col, values, Path("."))
            assert present.all() and not problems, problems
            int8.append(t)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        t, ref_out = timed(plain, values)
        plain_t.append(t)
    cos = (emb * ref_out).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref_out, axis=1))
    n = len(values)
    return {
        "encoder": name,
        "inputs": n,
        "unique_inputs": len(set(values)),
        "int8_s": round(min(int8), 3),
        "int8_per_s": round(n / min(int8), 1),
        "plain_fp32_s": round(min(plain_t), 3),
        "plain_fp32_per_s": round(n / min(plain_t), 1),
        "speedup_over_plain": round(min(plain_t) / min(int8), 3),
        "min_cosine_vs_fp32": round(float(cos.min()), 6),
        "mean_cosine_vs_fp32": round(float(cos.mean()), 6),
        "graph": str(warm._int8.path),
        "all_runs_s": {"int8": int8, "plain": plain_t},
    }


def main_int8(a: argparse.Namespace) -> None:
    texts, _, images = nlvr_inputs(a.nlvr, a.images)
    texts = texts[: a.texts] if a.texts else texts
    tref, iref = resolve("minilm"), resolve("efficientnet-lite0")
    tst = settings(Modality.TEXT, tref.kind, tref.path) | {"max_len": a.max_len}
    ist = settings(Modality.IMAGE, iref.kind, iref.path)
    bs, rep = a.batch_size, a.repeats
    results = {
        "text": bench_int8(Modality.TEXT, "minilm", texts, tst, PlainText(tref.path, a.max_len, bs), bs, rep),
        "image": bench_int8(Modality.IMAGE, "efficientnet-lite0", images, ist, PlainImage(iref.path, ist, bs), bs, rep),
    }
    for k, r in results.items():
        print(f"{k}: int8 {r['int8_per_s']:.1f}/s, plain fp32 {r['plain_fp32_per_s']:.1f}/s, "
              f"speed-up {r['speedup_over_plain']:.2f}x, cosine min {r['min_cosine_vs_fp32']:.4f} "
              f"mean {r['mean_cosine_vs_fp32']:.4f}")  # fmt: skip
    report = {
        "benchmark": "encode_throughput_int8",
        "command": "python benchmarks/encode_throughput.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },  # fmt: skip
        "settings": {
            "text_max_len": a.max_len,
            "batch_size": bs,
            "repeats": rep,
            "images": len(images),
            "texts": len(texts),
            "timing": "best of repeats, interleaved; loading excluded",
        },  # fmt: skip
        "goals": {"min_cosine_vs_fp32": ">= 0.99", "speedup_over_plain": ">= 2"},
        "results": results,
    }
    out = a.out if a.out.name != "encode_throughput.json" else a.out.with_name("encode_throughput_int8.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)  # atomic
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nlvr", type=Path, default=ROOT.parent / "shared" / "data" / "nlvr")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode_throughput.json")
    ap.add_argument("--int8", action="store_true", help="the int8 ONNX Runtime path vs the plain fp32 loop instead")
    ap.add_argument("--texts", type=int, default=0, help="with --int8: the first N distinct sentences (0: all)")
    a = ap.parse_args()
    if a.int8:
        main_int8(a)
        return

    texts, text_rows, images = nlvr_inputs(a.nlvr, a.images)
    tref, iref = resolve("minilm"), resolve("efficientnet-lite0")
    tst = settings(Modality.TEXT, tref.kind, tref.path) | {"max_len": a.max_len}
    ist = settings(Modality.IMAGE, iref.kind, iref.path)

    start = time.perf_counter()
    plain_text = PlainText(tref.path, a.max_len, a.batch_size)
    plain_text_load = time.perf_counter() - start
    start = time.perf_counter()
    plain_image = PlainImage(iref.path, ist, a.batch_size)
    plain_image_load = time.perf_counter() - start
    image_loops = {"plain": plain_image, "plain_channels_last": PlainImage(iref.path, ist, a.batch_size, True)}
    bs, rep = a.batch_size, a.repeats
    results = {
        "text": bench_modality(Modality.TEXT, "minilm", texts, tst, {"plain": plain_text}, bs, rep),
        "text_dev_rows": bench_modality(Modality.TEXT, "minilm", text_rows, tst, {"plain": plain_text}, bs, rep),
        "image": bench_modality(Modality.IMAGE, "efficientnet-lite0", images, ist, image_loops, bs, rep),
    }
    results["text"]["plain_load_s"] = round(plain_text_load, 2)
    results["image"]["plain_load_s"] = round(plain_image_load, 2)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Frozen feature extraction on NLVR, batch {a.batch_size}, best of {a.repeats}")
    for c in ("input", "n (distinct)", "polymodal /s", "plain /s", "ratio", "1st s", "cached 2nd s", "speed-up"):
        t.add_column(c, justify="left" if c == "input" else "right")
    for k, r in results.items():
        cells = [f"{r['polymodal_first_per_s']:.1f}", f"{r['plain_per_s']:.1f}"]
        cells += [f"{r['ratio_polymodal_over_plain']:.2f}", f"{r['polymodal_first_s']:.2f}"]
        cells += [f"{r['cached_second_s']:.3f}", f"{r['cached_speedup']:.0f}x"]
        label = {"text": "sentences, distinct", "text_dev_rows": "dev rows' sentences", "image": "images, distinct"}[k]
        t.add_row(
            f"{label} ({r['encoder'].replace('efficientnet-', '')})", f"{r['inputs']} ({r['unique_inputs']})", *cells
        )
    Console(width=120).print(t)
    for k, r in results.items():
        for name, d in r["diagnostics"].items():
            print(f"diagnostic {k}: {name} {d['per_s']:.1f}/s; polymodal / it = {d['ratio_polymodal_over_it']:.2f}")

    report = {
        "benchmark": "encode_throughput",
        "command": "python benchmarks/encode_throughput.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "settings": {
            "text_max_len": a.max_len,
            "batch_size": a.batch_size,
            "repeats": a.repeats,
            "images": len(images),
            "texts": len(texts),
            "text_dev_rows": len(text_rows),
            "image_settings": ist,
            "timing": "best of repeats; model load excluded on both sides; second = new extractor, same cache dir",
        },
        "goals": {"ratio_polymodal_over_plain": ">= 0.9", "cached_speedup": ">= 10"},
        "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, report)  # atomic
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
