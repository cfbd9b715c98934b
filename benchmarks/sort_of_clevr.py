"""Sort-of-CLEVR (Santoro et al. 2017): relational visual question answering as an ordinary table task.

Builds the table with ../shared/bench/make_sort_of_clevr.py (75x75 pictures of six coloured squares/circles,
20 questions each as sentences; the first 200 pictures are the test set), then fits each fusion on
(image, question) -> answer and scores the test questions per `kind` (relational / non-relational) and per
`subtype`, with `group_by`. The token fusions (relation, film, token_transformer) run beside today's pooled
fusions (early, attention), the paper's CNN+MLP baseline. Each entry trains under a wall-clock budget
(`--entry-minutes`) so the whole run stays bounded on a shared CPU; every reduction is written to the JSON.

    nice -n 10 python benchmarks/sort_of_clevr.py [--images 2000] [--entry-minutes 4] [--fusions ...]

Paper: relation network above 94 % on both kinds; CNN+MLP 63 % on relational questions.
Goal here: >= 0.95 relational and >= 0.99 non-relational.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"images": 10000, "test_images": 200, "image_size": 75, "max_epochs": 30}
GOAL = {"relational": 0.95, "non-relational": 0.99}


def build_table(shared: Path, data: Path, images: int, test_images: int) -> Path:
    if not (data / "test.csv").exists():
        script = shared / "bench" / "make_sort_of_clevr.py"
        cmd = [sys.executable, str(script), "--out", str(data), "--images", str(images)]
        subprocess.run([*cmd, "--test-images", str(test_images)], check=True)
    return data


class TimeBudget:
    """A Lightning callback that ends training after `seconds` (the best epoch's weights are kept as usual)."""

    def __new__(cls, seconds: float):
        import lightning.pytorch as pl

        class _Budget(pl.Callback):
            def __init__(self):
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                if time.perf_counter() - self.start > seconds:
                    trainer.should_stop = True

        return _Budget()


def run_entry(fusion: str, data: Path, args: argparse.Namespace) -> dict:
    import pandas as pd

    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(
        label="answer", fusion=fusion, data={"group_by": "kind", "ignore": ["subtype"]},
        preprocess={"image_size": args.image_size}, embed_dim=args.embed_dim, hidden=args.hidden,
        max_epochs=args.max_epochs, patience=args.max_epochs, batch_size=args.batch_size, lr=args.lr,
        augment=False,  # translation would move objects across "left side" / "top half"
        progress=False, seed=args.seed,
    )  # fmt: skip
    start = time.perf_counter()
    p.fit(data / "train.csv", callbacks=[TimeBudget(60 * args.entry_minutes)])
    fit_s = time.perf_counter() - start
    m = p.evaluate(data / "test.csv")
    test = pd.read_csv(data / "test.csv")
    sub = p.evaluate(data / "test.csv", group_by="subtype")["groups"]
    return {
        "fusion": fusion,
        "token_level": p.engine.net.tokens,
        "accuracy": m["accuracy"],
        "relational": m["groups"]["relational"]["accuracy"],
        "non_relational": m["groups"]["non-relational"]["accuracy"],
        "subtypes": {k: round(v["accuracy"], 4) for k, v in sub.items()},
        "test_questions": len(test),
        "epochs": p.metrics_["epochs"],
        "best_epoch": p.metrics_.get("best_epoch"),
        "train_seconds": round(fit_s, 1),
        "parameters": sum(t.numel() for t in p.engine.net.parameters()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=None, help="table folder (default /tmp/sort_of_clevr_N)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=200)
    ap.add_argument("--fusions", default="early,attention,relation,film,token_transformer")
    ap.add_argument("--image-size", type=int, default=40)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--entry-minutes", type=float, default=4.0, help="training budget of each entry")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sort_of_clevr.json")
    args = ap.parse_args()

    import torch

    from polymodal.model.artifact import write_json

    start = time.perf_counter()
    data = build_table(args.shared, args.data or Path(f"/tmp/sort_of_clevr_{args.images}"), args.images,
                       args.test_images)  # fmt: skip
    settings = {"images": args.images, "test_images": args.test_images, "image_size": args.image_size,
                "max_epochs": args.max_epochs, "entry_minutes": args.entry_minutes, "embed_dim": args.embed_dim,
                "hidden": args.hidden, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}  # fmt: skip
    # Entries of an earlier run with the same settings are kept: a later run adds or replaces entries.
    rows, wall = [], 0.0
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if old.get("settings") == settings:
            rows = [r for r in old["entries"] if r["fusion"] not in args.fusions.split(",")]
            wall = old.get("wall_seconds", 0.0)
    for fusion in args.fusions.split(","):
        r = run_entry(fusion, data, args)
        rows.append(r)
        print(f"{fusion:18s} relational {r['relational']:.4f}  non-relational {r['non_relational']:.4f}  "
              f"all {r['accuracy']:.4f}  {r['epochs']} epochs  {r['train_seconds']:.0f} s", flush=True)  # fmt: skip
    order = ["early", "attention", "relation", "film", "token_transformer"]
    rows.sort(key=lambda r: order.index(r["fusion"]) if r["fusion"] in order else len(order))
    reduced = {k: {"used": settings[k], "full": v} for k, v in FULL.items() if settings[k] != v}
    reduced["training"] = f"each entry stops after {args.entry_minutes} min of training (or max_epochs)"
    best = {k: max(r[k.replace("-", "_")] for r in rows if r["token_level"]) if any(r["token_level"] for r in rows)
            else None for k in GOAL}  # fmt: skip
    report = {
        "benchmark": "sort_of_clevr",
        "command": f"nice -n 10 python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": settings,
        "reduced": reduced,
        "goal": GOAL,
        "goal_met": {k: best[k] is not None and best[k] >= v for k, v in GOAL.items()},
        "paper": {"relation_network": ">0.94 both kinds", "cnn_mlp_relational": 0.63},
        "entries": rows,
        "wall_seconds": round(wall + time.perf_counter() - start, 1),  # over the runs that made these entries
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
