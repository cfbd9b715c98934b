"""AV-digit-order: video classification that needs the frames, the sound track and their order in time.

Data: ../shared/bench/make_av_video.py (3,000 train / 300 test MP4 videos, 64 x 64 H.264 frames + AAC speech at
10 dB SNR; label same / permuted / different, balanced: chance 1/3, an order-blind model about 2/3 at best).

One `compare` run over the video column, entries:
- frames only ("video:frames only"), sound only ("video:sound only"): each should sit near chance;
- the temporal fusions (the frames through the scratch CNN + a GRU over time, the sound track through the audio
  CNN + GRU), one per --fusions name;
- "<first fusion> order-blind": the same with the frames averaged over time (encoders.video.temporal = mean).

Also measured: decoding throughput (videos/s through a DataLoader with 0, 1 and 2 worker processes, one PyAV
pass per file: the kept frames and the sound track) and the share of a streamed epoch that decoding would take
(decoding one pass over the training videos in the training process vs the fused entry's time per epoch).

    nice -n 10 python benchmarks/av_video.py [--data DIR] [--fusions early,attention] [--max-epochs 40]
        [--time-limit SECONDS] [--train-rows N] [--pretrain-branches [--freeze-branches] [--pretrain-epochs N]
        [--order-epochs N] [--pretrain-lr LR] [--readout [--readout-steps N]]]

--pretrain-branches (stated in the JSON as pretrain_branches): before the compare, each branch is fitted on the
digits the dataset's captions name (frames: the shown digits, sound: the spoken ones; `pretrain`), and every
compare entry's encoders start from those fits (encoders.init_from; --freeze-branches: encoders.init_freeze).
Without it the compare learns from the 3-way label alone. --readout: each compare entry reads each branch through
its fitted text model instead (encoders.readout: the word distributions of the three decoded steps; the sound
branch is fitted too when --sound-encoder names a frozen encoder, reading its tokens).

Prints a table and writes benchmarks/results/av_video.json. Attribution: Free Spoken Digit Dataset (CC BY-SA 4.0),
scikit-learn's digits (UCI, CC BY 4.0).
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

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PREPROCESS = {"image_size": 32, "video_frames": 9, "sample_rate": 16000, "n_mels": 40, "n_mfcc": 20}


def build(data: Path) -> Path:
    if not (data / "test.csv").exists():
        subprocess.run([sys.executable, str(SHARED / "bench" / "make_av_video.py"), "--out", str(data)], check=True)
    return data


class Videos:
    """A map-style dataset of video paths -> decoded clips (what a streamed fit's loader workers do per row)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from polymodal.data.video import decode_video

        c = decode_video(self.paths[i], PREPROCESS["video_frames"], PREPROCESS["image_size"],
                         PREPROCESS["sample_rate"])  # fmt: skip
        return c.frames, (c.sound if c.sound is not None else np.zeros(0, np.float32))


DECODER = {"decoder.name": "gru", "decoder.layers": 1, "decoder.dim": 64, "decoder.memory": "pooled"}
BRANCHES = {"frames": ("shown", "video:sound"), "sound": ("spoken", "video:frames")}  # branch: (caption, left out)


def pretrain(data: Path, train: pd.DataFrame, folder: Path, epochs: int, order_epochs: int, patience: int,
             lr: float, branches: tuple[str, ...] = ("frames", "sound"), stages: tuple[str, ...] = ("set", "order"),
             memory: str = "pooled", sound_encoder: str | None = None, reuse: bool = False,
             frames_affine: tuple[float, float] = (0.0, 0.0), sound_finetune: bool = False) -> dict:  # fmt: skip
    """--pretrain-branches: each branch learns the digits its captions name, in two fits (a curriculum):
    1. "set": which digits it shows / speaks, as a multilabel target (frames averaged over time: every frame is
       supervised alike, so the per-frame CNN learns digits fast);
    2. "order": the three digits in order, as a text target (a GRU decoder reads the branch's pooled embedding, so
       that embedding must hold them in order), its encoder started from fit 1 (encoders.init_from).
    The compare's encoders then start from the last fit. `branches`: the branches to fit (a branch read by a frozen
    pretrained encoder has nothing to learn); `stages`: which of the two fits; `memory`: what the order fit's
    decoder reads of the branch (pooled: one embedding, which must hold the digits in order; tokens: the frames or
    windows one by one, what a token-level fusion reads next). `sound_encoder`: the sound branch reads the track
    through that pretrained encoder, frozen: only its "order" fit, reading the encoder's tokens. `reuse`: a fit whose
    folder exists is loaded, not fitted again (for trying fusions on the same branches; stated in the JSON).
    `frames_affine`: (degrees, zoom) of the frames' order fit's augmentation (train.image_rotate, image_scale; with
    the shifts, brightness and temporal jitter of train.augment), (0, 0): that fit is not augmented.
    `sound_finetune`: the sound branch fine-tunes `sound_encoder` (encoders.freeze false, every layer) instead of
    reading its frozen tokens. A variant's folder name says so (`frames_order_augmented`, `sound_order_finetuned`)."""
    from polymodal import MultimodalPredictor

    captions = {s: pd.read_csv(data / f"captions_{s}.csv").set_index("video") for s in ("train", "test")}
    out: dict = {}
    for branch, (caption, left_out) in BRANCHES.items():
        if branch not in branches:
            continue
        name = "video:sound" if branch == "sound" else "video:frames"
        for split, rows in (("train", train), ("test", pd.read_csv(data / "test.csv"))):
            words = captions[split].loc[rows["video"], caption]
            table = rows[["video"]].assign(caption=words.to_numpy(), digits=words.str.replace(" ", " | ").to_numpy())
            table.to_csv(data / f"pretrain_{branch}_{split}.csv", index=False)
        # No augmentation by default: the set fit only starts the frames' CNN. The frames' order fit over-fits the
        # digits' handwriting without it (test clips all right 0.94, training clips 0.99): --frames-rotate/-scale
        common = dict(preprocess=PREPROCESS, embed_dim=64, hidden=64, batch_size=32, lr=lr, patience=patience,
                      progress=False, modalities={"video": "video"}, augment=False)  # fmt: skip
        fits = {
            "set": dict(label="digits", problem_type="multilabel", ignore=[left_out, "caption"], max_epochs=epochs,
                        **{"encoders.video.temporal": "mean"}),
            "order": dict(label="caption", problem_type="text", ignore=[left_out, "digits"], max_epochs=order_epochs,
                          **DECODER | {"decoder.memory": memory},
                          **({"encoders.init_from": {name: str(folder / f"{branch}_set")}} if "set" in stages else {})),
        }  # fmt: skip
        if branch == "sound" and sound_encoder:
            common |= {"audio_encoder": sound_encoder, "lr": 2e-3}  # benchmarks/av_video_sound.py's settings
            fits = {"order": fits["order"] | DECODER | {"decoder.memory": "tokens"}}
            fits["order"].pop("encoders.init_from", None)
        suffix = ""
        if branch == "frames" and any(frames_affine):
            rotate, scale = frames_affine
            fits["order"] |= {"augment": True, "image_rotate": rotate, "image_scale": scale}
            suffix = "_augmented"
        if branch == "sound" and sound_encoder and sound_finetune:
            # Its frozen tokens over-fit (0.99 a digit on training clips, 0.96 on test). Fine-tuned, an epoch takes
            # about 2 min here and the best epoch came early: 16 epochs at most, patience 5.
            fits["order"] |= {"freeze": False, "max_epochs": 16, "patience": 5}
            suffix = "_finetuned"
        out[branch] = {}
        for stage, settings in [(k, v) for k, v in fits.items() if k in stages]:
            start = time.perf_counter()
            where = folder / f"{branch}_{stage}{suffix if stage == 'order' else ''}"
            reused = reuse and (where / "config.json").is_file()
            if reused:
                p = MultimodalPredictor.load(where)
            else:
                p = MultimodalPredictor(**common | settings)
                p.fit(data / f"pretrain_{branch}_train.csv")
                p.save(where)
            test = p.evaluate(data / f"pretrain_{branch}_test.csv")
            keep = ("wer", "exact_match") if stage == "order" else ("accuracy", "f1_micro")
            out[branch][stage] = {
                "target": f"captions' {caption} digits" + (" in order" if stage == "order" else " (a set)"),
                "folder": str(where), "test": {k: test.get(k) for k in keep},
                "epochs": p.metrics_.get("epochs"), "seconds": round(time.perf_counter() - start, 1),
                "history": p.metrics_.get("history"), "reused": reused,
            }  # fmt: skip
            print(branch, stage, {k: v for k, v in out[branch][stage].items() if k != "history"}, flush=True)
    return out


def throughput(paths: list[Path], workers: int) -> float:
    """Videos decoded per second through a DataLoader with `workers` worker processes (batches of 16)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(Videos(paths), batch_size=16, num_workers=workers, collate_fn=lambda b: len(b))
    start = time.perf_counter()
    n = sum(loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "av_video")
    ap.add_argument("--fusions", default="early,attention")
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds for the whole compare")
    ap.add_argument("--train-rows", type=int, default=None, help="only the first N training videos")
    ap.add_argument("--throughput-videos", type=int, default=192)
    ap.add_argument(
        "--pretrain-branches",
        action="store_true",
        help="pre-train the frames and sound branches on the captions' digits, then start from them",
    )
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--order-epochs", type=int, default=15)
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--freeze-branches", action="store_true", help="with --pretrain-branches: encoders.init_freeze")
    ap.add_argument("--pretrain-stages", default="set,order", help="of set,order (with --pretrain-branches)")
    ap.add_argument(
        "--order-memory",
        default="pooled",
        choices=("pooled", "tokens"),
        help="what the order fit's decoder reads of the branch",
    )
    ap.add_argument(
        "--sound-encoder",
        default=None,
        help="a pretrained audio encoder for the sound track (speech-embedding), frozen: not pre-trained",
    )
    ap.add_argument(
        "--readout",
        action="store_true",
        help="with --pretrain-branches: each branch read through its fitted text model (encoders.readout)",
    )
    ap.add_argument("--readout-steps", type=int, default=3, help="decoded steps per branch (the caption's words)")
    ap.add_argument("--reuse-branches", action="store_true", help="load branch fits whose folders exist")
    ap.add_argument("--frames-rotate", type=float, default=0.0, help="degrees: the frames' order fit augmented")
    ap.add_argument("--frames-scale", type=float, default=0.0, help="zoom +-: the frames' order fit augmented")
    ap.add_argument("--sound-finetune", action="store_true", help="the sound branch fine-tunes --sound-encoder")
    ap.add_argument("--lr", type=float, default=2e-3, help="the compare's learning rate")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "av_video.json")
    a = ap.parse_args()
    import torch

    import polymodal

    data = build(a.data)
    train = pd.read_csv(data / "train.csv")
    if a.train_rows:
        train = train.iloc[: a.train_rows]
    train_csv = data / "train_used.csv"
    train.to_csv(train_csv, index=False)
    report: dict = {
        "benchmark": "av_video", "data": str(data), "train_rows": len(train),
        "test_rows": len(pd.read_csv(data / "test.csv")), "preprocess": PREPROCESS, "fusions": a.fusions,
        "max_epochs": a.max_epochs, "time_limit": a.time_limit, "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "load_at_start": os.getloadavg()[0],
    }  # fmt: skip

    paths = [data / p for p in train["video"].iloc[: a.throughput_videos]]
    report["decode_videos_per_s"] = {str(w): round(throughput(paths, w), 2) for w in (0, 1, 2)}
    print("decoding, videos/s by loader workers:", report["decode_videos_per_s"], flush=True)

    out = ROOT / "benchmarks" / "runs" / "av_video"
    settings: dict = {}
    report["pretrain_branches"], report["freeze_branches"] = a.pretrain_branches, a.freeze_branches
    report["sound_encoder"] = a.sound_encoder
    if a.sound_encoder:
        settings["audio_encoder"] = a.sound_encoder
    if a.pretrain_branches:
        start = time.perf_counter()
        # A frozen pretrained sound encoder has nothing to learn, unless its text model is to be read out.
        branches = ("frames",) if a.sound_encoder and not a.readout else ("frames", "sound")
        stages = tuple(a.pretrain_stages.split(","))
        report["pretrained"] = pretrain(data, train, out.with_name("av_video_branches"), a.pretrain_epochs,
                                        a.order_epochs, a.patience, a.pretrain_lr, branches, stages,
                                        a.order_memory, a.sound_encoder, a.reuse_branches,
                                        (a.frames_rotate, a.frames_scale), a.sound_finetune)  # fmt: skip
        report |= {"pretrain_epochs": a.pretrain_epochs, "order_epochs": a.order_epochs, "pretrain_lr": a.pretrain_lr,
                   "pretrain_stages": list(stages), "order_memory": a.order_memory,
                   "frames_order_augment": {"rotate": a.frames_rotate, "scale": a.frames_scale},
                   "sound_finetune": a.sound_finetune}  # fmt: skip
        report["pretrain_seconds"] = round(time.perf_counter() - start, 1)
        last = {b: report["pretrained"][b][list(report["pretrained"][b])[-1]]["folder"] for b in branches}
        if a.readout:
            report |= {"readout": True, "readout_steps": a.readout_steps}
            settings |= {"encoders.readout": {f"video:{b}": f for b, f in last.items()},
                         "encoders.readout_steps": a.readout_steps}  # fmt: skip
        else:
            init = {f"video:{b}": f for b, f in last.items()}
            settings |= {"encoders.init_from": init, "encoders.init_freeze": a.freeze_branches}
    start = time.perf_counter()
    board = polymodal.compare(
        train_csv, "label", out, test=data / "test.csv", fusions=a.fusions, seeds=1, noise_levels=0,
        permutations=1, report=False, time_limit=a.time_limit, ignore=["speaker"], preprocess=PREPROCESS,
        max_epochs=a.max_epochs, patience=a.patience, embed_dim=64, hidden=64, batch_size=32, lr=a.lr,
        progress=False, **settings,
    )  # fmt: skip
    report["compare_seconds"] = round(time.perf_counter() - start, 1)
    if a.pretrain_branches and a.readout:  # the same readouts under fixed rules: what a fusion could reach
        from av_video_bayes import reference

        start = time.perf_counter()
        report["readout_reference"] = reference(data, Path(last["frames"]), Path(last["sound"]))
        report["readout_reference_seconds"] = round(time.perf_counter() - start, 1)
    rows = []
    for r in board["results"]:
        epochs = r.get("epochs") or 0
        rows.append({"entry": r["entry"], "test_accuracy": r["metrics"]["accuracy"],
                     "test_macro_f1": r["metrics"].get("f1_macro"), "epochs": epochs,
                     "train_seconds": r["train_seconds"],
                     "seconds_per_epoch": round(r["train_seconds"] / epochs, 2) if epochs else None,
                     "parameters": r.get("parameters")})  # fmt: skip
    report["entries"] = rows
    fused = next((r for r in rows if r["entry"] == a.fusions.split(",")[0]), None)
    decode_pass = len(train) / report["decode_videos_per_s"]["0"]
    report["decode_seconds_per_pass"] = round(decode_pass, 1)
    if fused and fused["seconds_per_epoch"]:
        # A streamed epoch decodes every training video again; in memory (this run) decoding happens once.
        report["decode_share_of_streamed_epoch"] = round(decode_pass / (decode_pass + fused["seconds_per_epoch"]), 3)
    report["load_at_end"] = os.getloadavg()[0]
    from polymodal.model.artifact import write_json

    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, report)
    print(pd.DataFrame(rows).to_string(index=False))
    print(json.dumps({k: v for k, v in report.items() if k != "entries"}, indent=1))


if __name__ == "__main__":
    main()
