"""Epoch time on Sort-of-CLEVR with each picture encoded once per batch (issue 29 part 1), against row by row.

The table of ../shared/bench/make_sort_of_clevr.py repeats each picture on its 20 question rows. One predictor is
fitted for 1 epoch on a slice of it to get the fitted preprocessing, then the whole training slice is preprocessed
once and three modes train a fresh network from the same initial weights, in the same process, one after another:
- `row_by_row`: the features expanded to one pixel array per row, shuffled batches (what training did before);
- `distinct_shuffled`: one array per picture, shuffled batches, each batch's distinct pictures encoded once;
- `distinct_grouped`: one array per picture, batches of whole pictures' rows (`train.group_batches: on`).
For each: seconds per epoch (Lightning's training loop, validation on a fixed 200 rows included), image-encoder
rows per epoch (a forward hook), and the bytes of the training features.

    nice -n 19 python benchmarks/encode_once.py [--images 300] [--image-size 64] [--fusions early,relation]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("row_by_row", "distinct_shuffled", "distinct_grouped")


def features_bytes(features) -> int:
    return int(sum(v.nbytes for v in features.stored.values()) + sum(v.nbytes for v in features.index.values()))


def run_mode(mode: str, fusion: str, p, features, targets, valid, args) -> dict:
    import numpy as np
    import torch

    from polymodal.config import TrainConfig
    from polymodal.model.folder import build_net
    from polymodal.training import train
    from polymodal.training.data import MemoryRows

    e = p.engine
    p.config_.fusion.name = fusion
    torch.manual_seed(args.seed)
    net = build_net(p.config_, e.schema, e.preprocessor.input_specs(), e.task)
    rows_features = features.expand() if mode == "row_by_row" else features
    seen = []

    def count(module, inputs):
        if module.training:
            seen.append(int(inputs[0].shape[0]))

    encoder = net.encoders[net.keys["image"]]
    if net.tokens:
        real = encoder.forward_tokens
        encoder.forward_tokens = lambda x: count(encoder, (x,)) or real(x)
    else:
        encoder.register_forward_pre_hook(count)
    group = "on" if mode == "distinct_grouped" else "off"
    cfg = TrainConfig(max_epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      augment=False, progress=False, seed=args.seed, group_batches=group)  # fmt: skip
    result = train(net, e.task, e.schema.inputs, MemoryRows(rows_features, targets), valid, cfg)
    epochs = result["epochs"]
    return {
        "fusion": fusion,
        "mode": mode,
        "epochs": epochs,
        "seconds_per_epoch": round(result["train_seconds"] / epochs, 2),
        "image_encoder_rows_per_epoch": int(np.sum(seen) / epochs),
        "train_rows": len(features),
        "features_mb": round(features_bytes(rows_features) / 2**20, 1),
        "valid_history": [{k: v for k, v in h.items() if k.startswith("val_")} for h in result["history"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--images", type=int, default=300, help="training pictures (20 questions each)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--fusions", default="early,relation")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encode_once.json")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from polymodal import MultimodalPredictor
    from polymodal.model.artifact import write_json
    from polymodal.training.data import MemoryRows

    start = time.perf_counter()
    data = Path(f"/tmp/encode_once_clevr_{args.images}")
    if not (data / "train.csv").exists():
        cmd = [sys.executable, str(args.shared / "bench" / "make_sort_of_clevr.py"), "--out", str(data)]
        subprocess.run([*cmd, "--images", str(args.images + 10), "--test-images", "10"], check=True)
    df = pd.read_csv(data / "train.csv")
    df, valid_df = df.iloc[200:].reset_index(drop=True), df.iloc[:200].reset_index(drop=True)
    df = df.drop(columns=["kind", "subtype"])
    valid_df = valid_df.drop(columns=["kind", "subtype"])
    fit_table = data / "fit_slice.csv"
    # the preprocessing's fit (pixel statistics, vocabulary) and the task's classes: every answer is in it
    pd.concat([df.iloc[:400], df.groupby("answer").head(2)]).drop_duplicates().to_csv(fit_table, index=False)
    settings = dict(preprocess={"image_size": args.image_size}, embed_dim=64, hidden=128, augment=False)
    p = MultimodalPredictor(label="answer", fusion="early", max_epochs=1, progress=False, seed=args.seed, **settings)
    p.fit(fit_table)
    e = p.engine
    features, _ = e.features(df, data)
    valid_x, _ = e.features(valid_df, data)
    targets = e.task.encode_targets(df["answer"])
    valid = MemoryRows(valid_x, e.task.encode_targets(valid_df["answer"]))
    pictures = int(df["image"].nunique())
    rows = []
    for fusion in args.fusions.split(","):
        for mode in MODES:
            r = run_mode(mode, fusion, p, features, targets, valid, args)
            rows.append(r)
            n = r["image_encoder_rows_per_epoch"]
            print(f"{fusion:10s} {mode:18s} {r['seconds_per_epoch']:8.1f} s/epoch  encoder rows {n:6d}  "
                  f"features {r['features_mb']:7.1f} MB", flush=True)  # fmt: skip
    for fusion in args.fusions.split(","):
        base = next(r for r in rows if r["fusion"] == fusion and r["mode"] == "row_by_row")
        for r in rows:
            if r["fusion"] == fusion:
                r["speedup"] = round(base["seconds_per_epoch"] / r["seconds_per_epoch"], 2)
    report = {
        "benchmark": "encode_once",
        "command": f"nice -n 19 python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"train_pictures": pictures, "train_rows": len(df), "valid_rows": len(valid_df),
                     "image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
                     "questions_per_picture": round(len(df) / pictures, 2)},
        "reduced": {"pictures": {"used": pictures, "full": 9800}},
        "entries": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "note": "modes run one after another in one process on a shared machine; compare within one run only",
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
