"""AV-digit-order's sound branch alone: the video's sound track -> the three spoken digits, as text.

How well the sound track can be read decides how far the fused `same / permuted / different` label can go
(docs/benchmarks/video.md). The branch here: the sound track through an audio encoder (`--sound-encoders`, each
scored in the same run: `speech-embedding`, frozen through the feature cache, one token per 80 ms window; its peer
`scratch`, the log-mel + MFCC CNN), a text decoder reading those tokens (`decoder.memory: tokens`), the frames
left out. Target: the captions' `spoken` column; test: the dataset's 300 test videos.

    nice -n 5 python benchmarks/av_video_sound.py [--data DIR] [--sound-encoders speech-embedding,scratch]
        [--decoder gru] [--max-epochs 30]

Data: ../shared/bench/make_av_video.py (as benchmarks/av_video.py builds it). Prints the figures and writes
benchmarks/results/av_video_sound.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import pandas as pd
from av_video import PREPROCESS, ROOT, build


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "av_video")
    ap.add_argument("--sound-encoders", default="speech-embedding,scratch", help="each one scored, in this run")
    ap.add_argument("--decoder", default="gru", choices=("gru", "transformer"))
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "av_video_sound.json")
    a = ap.parse_args()
    import torch

    from polymodal.model.artifact import write_json

    torch.set_num_threads(1)
    data = build(a.data)
    for split in ("train", "test"):
        captions = pd.read_csv(data / f"captions_{split}.csv")
        captions[["video", "spoken"]].to_csv(data / f"spoken_{split}.csv", index=False)
    entries = {}
    for encoder in a.sound_encoders.split(","):  # the speech encoder and its peer, the scratch CNN, in one run
        entries[encoder] = branch(data, encoder, a)
        print(encoder, {k: v for k, v in entries[encoder].items() if k != "history"}, flush=True)
        report = {
            "benchmark": "av_video_sound", "data": str(data), "decoder": a.decoder, "entries": entries,
            "torch_threads": 1, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        }  # fmt: skip
        write_json(a.out, report)  # after each entry: a run cut short keeps what finished


def branch(data: Path, encoder: str, a: argparse.Namespace) -> dict:
    from polymodal import MultimodalPredictor

    start = time.perf_counter()
    p = MultimodalPredictor(
        label="spoken", problem_type="text", modalities={"video": "video"}, ignore=["video:frames"],
        audio_encoder=encoder, preprocess=PREPROCESS, embed_dim=64, hidden=64, batch_size=32, lr=2e-3,
        max_epochs=a.max_epochs, patience=a.patience, progress=False, seed=0,
        decoder={"name": a.decoder, "memory": "tokens", "dim": 64, "layers": 1},
    )  # fmt: skip
    p.fit(data / "spoken_train.csv")
    fit_seconds = time.perf_counter() - start
    test = p.evaluate(data / "spoken_test.csv")
    truth = pd.read_csv(data / "spoken_test.csv")["spoken"].str.split()
    pred = pd.Series(p.predict(data / "spoken_test.csv")).str.split()
    positions = [sum(len(t) == 3 and len(q) > i and q[i] == t[i] for t, q in zip(truth, pred, strict=True))
                 / len(truth) for i in range(3)]  # fmt: skip
    return {"test": {k: test.get(k) for k in ("wer", "cer", "exact_match")},
            "per_position_accuracy": [round(x, 4) for x in positions], "epochs": p.metrics_.get("epochs"),
            "fit_seconds": round(fit_seconds, 1), "feature_cache": p.metrics_.get("feature_cache"),
            "history": p.metrics_.get("history")}  # fmt: skip


if __name__ == "__main__":
    main()
