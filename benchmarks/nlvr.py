"""NLVR v1 (Suhr et al., ACL 2017): is the sentence true of the picture? Scratch vs frozen pretrained encoders.

The training split's labels are not public, so this trains on `dev` and tests on `hidden`. One row per (example,
image permutation): sentence, image (absolute path to the 400x100 PNG), label ("true"/"false"), identifier and
directory (for grouping, ignored by the model). Validation: the dev examples of one image directory
(`--valid-dir`, default 0), so all six permutations of an example stay on one side. Entries: text only, image only,
early, late and attention fusion, each with scratch encoders (images squashed to `--image-size` squares) and with
`preset="pretrained"` (frozen MiniLM + EfficientNet-Lite0 through one shared feature cache, so the encoders run
once for all pretrained entries: the pretrained early fusion runs first and fills the cache). Test metrics per row
(`evaluate`) and per example (the six permutations' probabilities averaged), beside the majority class.

    python benchmarks/nlvr.py [--nlvr ../shared/data/nlvr] [--max-epochs 15] [--scratch-max-epochs N] [--resume]
    python benchmarks/nlvr.py --tokens --out benchmarks/results/nlvr_tokens.json   # FiLM, relation, transformer

Prints a table and writes benchmarks/results/nlvr.json after every entry; `--resume` (same settings) keeps the
finished entries of a killed run and the feature cache (--cache-dir, default $TMPDIR/polymodal_nlvr_cache).
Data: Cornell NLVR v1 (research use; cite the paper).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

ROOT = Path(__file__).resolve().parents[1]
GROUP = ["identifier", "directory"]
KINDS = {
    "text only": {"fusion": "early", "ignore": ["image"]},
    "image only": {"fusion": "early", "ignore": ["sentence"]},
    "early fusion": {"fusion": "early", "ignore": []},
    "late fusion": {"fusion": "late", "ignore": []},
    "attention fusion": {"fusion": "attention", "ignore": []},
    # Token-level fusions (issue 13): words against image regions, not one pooled vector per input.
    "film": {"fusion": "film", "ignore": []},
    "relation network": {"fusion": "relation", "ignore": []},
    "token transformer": {"fusion": "token_transformer", "ignore": []},
}
TOKEN_KINDS = ("film", "relation network", "token transformer")
PRESETS = ("scratch", "pretrained")
# Run order: the pretrained early fusion (both columns) first, so it alone pays for the feature extraction.
POOLED = [k for k in KINDS if k not in TOKEN_KINDS]
POOLED_ORDER = [("early fusion", "pretrained")] + [(k, "pretrained") for k in POOLED if k != "early fusion"]
POOLED_ORDER += [(k, "scratch") for k in POOLED]
# The token entries fill their own cache namespace (fp16 tokens per row): the first pretrained one pays for it.
TOKEN_ORDER = [(k, p) for p in PRESETS[::-1] for k in TOKEN_KINDS]
RUN_ORDER = POOLED_ORDER + TOKEN_ORDER
FULL_EPOCHS = 15
NOTE = (
    "max_epochs of the scratch entries reduced from {full} to {n} so the run fits about 20 minutes on the shared "
    "2-core CPU: a scratch image epoch took 22-30 s in this run but up to ~4 minutes in an earlier attempt while "
    "other jobs loaded the CPU; the pretrained entries train on cached embeddings (seconds per epoch) and keep "
    "max_epochs with early stopping"
)
PEERS = {
    "sklearn_logreg_tfidf_pixels_same_split": {"text": 0.553, "image": 0.529, "concatenated": 0.539},
    "published_nlvr_full_74k_train": {"cnn_rnn": 0.58, "nmn": 0.62, "note": "about; trained on the 74k train set"},
}


def nlvr_table(nlvr: Path, split: str, limit: int | None = None) -> pd.DataFrame:
    """One row per (example, permutation k = 0..5) with an existing PNG."""
    images = {p.name: p.resolve() for p in (nlvr / split / "images").glob("*/*.png")}
    rows = []
    for line in (nlvr / split / f"{split}.json").read_text().splitlines()[:limit]:
        ex = json.loads(line)
        for k in range(6):
            path = images.get(f"{split}-{ex['identifier']}-{k}.png")
            if path is not None:
                rows.append({"sentence": ex["sentence"], "image": str(path), "label": ex["label"],
                             "identifier": ex["identifier"], "directory": str(path.parent.name)})  # fmt: skip
    return pd.DataFrame(rows)


def scores(y_true: pd.Series, y_pred: pd.Series) -> dict[str, float]:
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "f1_macro": round(float(f1_score(y_true, y_pred, average="macro")), 4),
    }


def per_example(test: pd.DataFrame, proba: pd.DataFrame) -> dict[str, float]:
    """Average the six permutations' probabilities of each example, then take the most probable class."""
    mean = proba.groupby(test["identifier"].to_numpy()).mean()
    truth = test.groupby("identifier")["label"].first().loc[mean.index]
    return scores(truth, mean.idxmax(axis=1)) | {"n": len(mean)}


def extractor_stats(stats: dict) -> dict:
    return {k: {s: round(v, 2) if isinstance(v, float) else v for s, v in st.items()} for k, st in stats.items()}


def run_entry(kind: str, preset: str, train, valid, test, a: argparse.Namespace) -> dict:
    from polymodal import MultimodalPredictor

    spec = KINDS[kind]
    p = MultimodalPredictor(
        label="label",
        fusion=spec["fusion"],
        ignore=spec["ignore"] + GROUP,
        modalities={c: m for c, m in (("sentence", "text"), ("image", "image")) if c not in spec["ignore"]},
        preset=preset,
        cache_dir=a.cache_dir,
        preprocess={"image_size": a.image_size},
        max_epochs=a.max_epochs if preset == "pretrained" else a.scratch_max_epochs,
        patience=a.patience,
        seed=a.seed,
        # Library bug (polymodal/training/fit.py, train()): image augmentation is applied to frozen image columns,
        # whose inputs are (batch, 1280) embeddings, and affine_grid raises. Frozen embeddings cannot be augmented
        # anyway, so the pretrained entries train without it (what the fix gives); scratch entries keep it.
        augment=preset == "scratch",
        progress=False,
    )
    start = time.perf_counter()
    p.fit(train, valid=valid)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    m = p.evaluate(test)
    eval_s = time.perf_counter() - start
    proba = p.predict_proba(test)
    test_stats = {k: e.stats for k, e in p.engine.pipeline._extractors.items()}
    row = {"accuracy": round(m["accuracy"], 4), "f1_macro": round(m["f1_macro"], 4), "n": m["n"]}
    return {
        "entry": f"{kind}, {preset}",
        "kind": kind,
        "preset": preset,
        "fusion": spec["fusion"],
        "inputs": list(p.engine.schema.inputs),
        "test_per_row": row,
        "test_per_example": per_example(test, proba),
        "valid_accuracy": round(p.metrics_["valid"]["accuracy"], 4),
        "fit_seconds": round(fit_s, 1),
        "train_seconds": round(p.metrics_["train_seconds"], 1),
        "evaluate_seconds": round(eval_s, 1),
        "epochs": p.metrics_["epochs"],
        "best_epoch": p.metrics_["best_epoch"],
        "parameters": p.info()["parameters"],
        "feature_extraction_fit": extractor_stats(p.metrics_.get("feature_cache", {})),
        "feature_extraction_test": extractor_stats(test_stats),
    }


def print_table(results: list[dict], baseline: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in ("entry", "row acc", "row F1", "example acc", "example F1", "valid acc", "train s", "fit s", "epochs"):
        t.add_column(c, justify="left" if c == "entry" else "right")

    def cells(rw: dict, ex: dict) -> list[str]:
        return [f"{rw['accuracy']:.4f}", f"{rw['f1_macro']:.4f}", f"{ex['accuracy']:.4f}", f"{ex['f1_macro']:.4f}"]

    t.add_row(f"majority ({baseline['class']})", *cells(baseline["test_per_row"], baseline["test_per_example"]),
              "", "", "", "")  # fmt: skip
    for r in results:
        extra = [f"{r['valid_accuracy']:.4f}", f"{r['train_seconds']:.1f}", f"{r['fit_seconds']:.1f}", str(r["epochs"])]
        t.add_row(r["entry"], *cells(r["test_per_row"], r["test_per_example"]), *extra)
    Console(width=140).print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nlvr", type=Path, default=ROOT.parent / "shared" / "data" / "nlvr")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "nlvr.json")
    ap.add_argument("--max-epochs", type=int, default=FULL_EPOCHS)
    ap.add_argument("--scratch-max-epochs", type=int, help="for the scratch entries (default: --max-epochs)")
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--valid-dir", default="0", help="dev image directory held out for validation")
    ap.add_argument("--seed", type=int, default=0)
    cache_help = "feature cache shared by the pretrained entries; emptied at the start unless --resume"
    ap.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_nlvr_cache", help=cache_help
    )
    ap.add_argument("--entries", nargs="*", help='subset, e.g. "early fusion, pretrained"')
    ap.add_argument(
        "--tokens", action="store_true", help="the token-level fusion entries (film, relation, token transformer)"
    )
    ap.add_argument("--resume", action="store_true", help="keep the finished entries of --out (same settings)")
    ap.add_argument("--limit", type=int, help="smoke test: the first N examples of each split only")
    a = ap.parse_args()
    a.scratch_max_epochs = a.scratch_max_epochs or a.max_epochs
    settings = {
        "max_epochs": a.max_epochs,
        "scratch_max_epochs": a.scratch_max_epochs,
        "patience": a.patience,
        "image_size": a.image_size,
        "seed": a.seed,
        "valid_directory": a.valid_dir,
        "limit": a.limit,
        "pretrained": {"text": "minilm (frozen)", "image": "efficientnet-lite0 (frozen)"},
    }
    if a.tokens:
        settings["tokens"] = "frozen pretrained entries cache fp16 tokens (text: words, image: 7x7 feature-map cells)"
    previous = json.loads(a.out.read_text()) if a.resume and a.out.exists() else {}
    if previous and previous.get("settings") != settings:
        raise SystemExit(f"--resume: {a.out} was written with other settings: {previous.get('settings')}")
    results = list(previous.get("results", []))
    commands = previous.get("commands", []) + ["python benchmarks/nlvr.py " + shlex.join(sys.argv[1:])]
    if not a.resume:
        shutil.rmtree(a.cache_dir, ignore_errors=True)  # the first pretrained entry must pay for the encoders
    wall = time.perf_counter()
    wall_before = previous.get("wall_seconds", 0.0)

    dev, test = nlvr_table(a.nlvr, "dev", a.limit), nlvr_table(a.nlvr, "hidden", a.limit)
    is_valid = dev["directory"] == a.valid_dir
    train, valid = dev[~is_valid].reset_index(drop=True), dev[is_valid].reset_index(drop=True)
    assert not set(train["identifier"]) & set(valid["identifier"])
    majority = train["label"].value_counts().idxmax()
    ex_test = test.groupby("identifier")["label"].first()
    baseline = {
        "class": majority,
        "test_per_row": scores(test["label"], pd.Series(majority, index=test.index)),
        "test_per_example": scores(ex_test, pd.Series(majority, index=ex_test.index)),
    }
    print(f"train {len(train)} rows ({train['identifier'].nunique()} examples), valid {len(valid)} rows "
          f"(directory {a.valid_dir}), test {len(test)} rows ({test['identifier'].nunique()} examples); "
          f"majority '{majority}' {baseline['test_per_row']['accuracy']:.4f}", flush=True)  # fmt: skip

    def report(complete: bool) -> dict:
        rank = {(k, p): i for i, (k, p) in enumerate((k, p) for p in PRESETS for k in KINDS)}
        ordered = sorted(results, key=lambda r: rank[(r["kind"], r["preset"])])
        pretrained = sorted((r for r in results if r["preset"] == "pretrained"), key=lambda r: r["finished"])
        return {
            "benchmark": "nlvr",
            "command": commands[0],
            "commands": commands,
            "complete": complete,
            "date": time.strftime("%Y-%m-%d"),
            "wall_seconds": round(wall_before + time.perf_counter() - wall, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
            },
            "data": {
                "train": "dev minus the valid directory",
                "valid": f"dev directory {a.valid_dir}",
                "test": "hidden",
                "train_rows": len(train),
                "valid_rows": len(valid),
                "test_rows": len(test),
                "train_examples": int(train["identifier"].nunique()),
                "test_examples": int(ex_test.size),
            },
            "settings": settings,
            "note": NOTE.format(full=FULL_EPOCHS, n=a.scratch_max_epochs)
            if a.scratch_max_epochs < FULL_EPOCHS
            else None,
            "majority_baseline": baseline,
            "results": ordered,
            "feature_cache": {
                "what": "frozen encoders run by each pretrained entry, in run order: fit (train+valid) and test "
                "(evaluate + predict_proba); one shared cache_dir, empty before the first",
                "first": pretrained[0]["entry"] if pretrained else None,
                "per_entry": {
                    r["entry"]: {
                        "fit_seconds": r["fit_seconds"],
                        "train_seconds": r["train_seconds"],
                        "fit": r["feature_extraction_fit"],
                        "test": r["feature_extraction_test"],
                    }
                    for r in pretrained
                },
            },
            "peers": PEERS,
        }

    def write(rep: dict) -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rep, indent=2))
        os.replace(tmp, a.out)

    done = {r["entry"] for r in results}
    planned = TOKEN_ORDER if a.tokens else POOLED_ORDER
    order = [e for e in planned if a.entries is None or f"{e[0]}, {e[1]}" in a.entries]
    for kind, preset in order:
        if f"{kind}, {preset}" in done:
            continue
        r = run_entry(kind, preset, train, valid, test, a) | {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        results.append(r)
        write(report(complete=False))  # a killed run keeps what it finished (see --resume)
        enc = sum(s.get("encode_seconds", 0.0) for s in r["feature_extraction_fit"].values())
        rw, ex = r["test_per_row"], r["test_per_example"]
        print(f"{r['entry']:30s} row acc {rw['accuracy']:.4f} F1 {rw['f1_macro']:.4f}  example acc "
              f"{ex['accuracy']:.4f}  fit {r['fit_seconds']:.1f} s (train {r['train_seconds']:.1f}, "
              f"encoders {enc:.1f})  epochs {r['epochs']}", flush=True)  # fmt: skip

    rep = report(complete={r["entry"] for r in results} >= {f"{k}, {p}" for k, p in planned})
    print_table(
        rep["results"], baseline, f"NLVR v1: train dev (valid dir {a.valid_dir}), test hidden ({len(test)} rows)"
    )
    write(rep)
    print(f"wrote {a.out} ({rep['wall_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
