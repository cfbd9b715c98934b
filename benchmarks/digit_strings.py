"""Digit-strings benchmark: text as an output. A spoken digit string (2-5 FSDD recordings of one speaker, 10 dB
SNR) and the same digits handwritten (noisy, occluded) -> the transcript as words ("three one four").

Builds the table with ../shared/bench/make_digit_strings.py (FSDD's split: 4,000 train / 400 test), then fits a
text model (problem type text, transformer decoder over the encoders' tokens, greedy decoding) on audio alone,
image alone and both fused, each in its own process (and `late`: the audio and image models saved with
`--save-dir` decoded together as a product of experts), and scores WER, CER and string accuracy (exact match) on
the test split. Peer in the same run: PocketSphinx 5 (its bundled US English acoustic model) with a JSGF grammar
of the ten digit words, the audio resampled to 16 kHz.

    python benchmarks/digit_strings.py [--shared ../shared] [--max-epochs 30]
        [--entries pocketsphinx,audio,image,fused,late] [--save-dir DIR]
        [--fusion attention] [--modality-dropout P] [--spec-augment FREQ,TIME] [--refit] [--stop-after N]
        [--checkpoint-dir DIR] [--time-limit SECONDS]

Prints a table and writes benchmarks/results/digit_strings.json. Benchmark-only settings (issue 24's search for
what closes the fused gap; the library defaults are untouched): `--modality-dropout` hides each input of a
training row with that probability (train.modality_dropout), so the decoder must also read the handwriting;
`--spec-augment` adds SpecAugment masks to the audio (train.audio_freq_masks, audio_time_masks); `--refit`
trains again on train + validation rows (train.refit). `--stop-after N` ends training after N epochs (a probe:
with a constant learning rate it is the first N epochs of the full run) and `--checkpoint-dir` keeps each
epoch's state there, so the full run with the same settings resumes from the probe instead of starting over.
A multi-input entry is also scored with each input hidden (its cells left empty: an absent modality), which
shows how much of the fused model's accuracy each input carries. Attribution: Free Spoken Digit Dataset, Zohar
Jackson et al. (CC BY-SA 4.0); scikit-learn's copy of the UCI handwritten digits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {
    "audio": {"ignore": ["image", "speaker"], "fusion": "attention"},
    "image": {"ignore": ["audio", "speaker"], "fusion": "attention"},
    "fused": {"ignore": ["speaker"], "fusion": "attention"},
}
GRAMMAR = (
    "#JSGF V1.0;\ngrammar digits;\npublic <digits> = <digit>+;\n"
    "<digit> = zero | one | two | three | four | five | six | seven | eight | nine;\n"
)


def build_table(shared: Path, data: Path) -> Path:
    if not (data / "test.csv").exists():
        script = shared / "bench" / "make_digit_strings.py"
        fsdd = shared / "data" / "fsdd" / "recordings"
        subprocess.run([sys.executable, str(script), "--fsdd", str(fsdd), "--out", str(data)], check=True)
    return data


def epoch_watch(stop_after: int | None):
    """A Lightning callback that prints each epoch's validation WER to stderr (so a long run can be followed) and,
    with `stop_after`, ends training after that many epochs (a probe of the full run's first epochs)."""
    import lightning.pytorch as pl

    class EpochWatch(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            m = trainer.callback_metrics
            print(f"epoch {trainer.current_epoch} val_wer {float(m.get('val_wer', float('nan'))):.4f} "
                  f"train_loss {float(m.get('train_loss', float('nan'))):.4f} {time.strftime('%H:%M:%S')}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if stop_after and trainer.current_epoch + 1 >= stop_after:
                trainer.should_stop = True

    return EpochWatch()


def hidden_scores(p, data: Path, inputs: list[str]) -> dict[str, float]:
    """Test WER with each input hidden in turn (its column emptied: a missing modality for every row)."""
    import pandas as pd

    out = {}
    for name in inputs:
        test = pd.read_csv(data / "test.csv")
        test[name] = ""
        path = data / f"test_without_{name}.csv"  # beside test.csv, so the other media paths still resolve
        test.to_csv(path, index=False)
        m = p.evaluate(path)
        out[f"wer_without_{name}"] = m["wer"]
        out[f"string_accuracy_without_{name}"] = m["exact_match"]
    return out


def run_entry(name: str, data: Path, max_epochs: int, seed: int, a: argparse.Namespace) -> dict:
    """Fit and evaluate one entry in this process."""
    import pandas as pd

    from polymodal import MultimodalPredictor

    spec = ENTRIES[name]
    freq, time_masks = (int(v) for v in a.spec_augment.split(",")) if a.spec_augment else (0, 0)
    extra = {}
    if a.checkpoint_dir:
        extra["checkpoint_dir"] = str(Path(a.checkpoint_dir) / name)
    if a.time_limit:  # a deadline on a shared machine: the best epoch so far is kept and scored
        extra["time_limit"] = a.time_limit
    p = MultimodalPredictor(
        label="transcript",
        problem_type="text",
        fusion=a.fusion or spec["fusion"],
        ignore=spec["ignore"],
        preprocess={"image_size": 64, "sample_rate": 8000},
        decoder={"dim": 128, "layers": 2, "heads": 4, "max_length": 8, "metric": "wer", "label_smoothing": 0.1},
        max_epochs=max_epochs,
        patience=8,
        seed=seed,
        batch_size=32,
        progress=False,
        modality_dropout=a.modality_dropout,
        audio_freq_masks=freq,
        audio_time_masks=time_masks,
        refit=a.refit,
        **extra,
    )
    start = time.perf_counter()
    p.fit(data / "train.csv", callbacks=[epoch_watch(a.stop_after)])
    fit_s = time.perf_counter() - start
    if a.save_dir:  # kept for the late entry, which decodes with the audio and image models together
        p.save(Path(a.save_dir) / name)
    start = time.perf_counter()
    m = p.evaluate(data / "test.csv")
    eval_s = time.perf_counter() - start
    test = pd.read_csv(data / "test.csv")
    inputs = list(p.engine.schema.inputs)
    history = [round(float(r["val_wer"]), 4) for r in p.metrics_.get("history", []) if "val_wer" in r]
    return {
        "entry": name,
        "inputs": inputs,
        "wer": m["wer"],
        "cer": m["cer"],
        "string_accuracy": m["exact_match"],
        "valid_wer": p.metrics_["valid"]["wer"],
        "train_seconds": round(fit_s, 1),
        "ms_per_utterance": round(1000 * eval_s / len(test), 2),
        "epochs": p.metrics_["epochs"],
        "best_epoch": p.metrics_["best_epoch"],
        "stopped_by": p.metrics_.get("stopped_by"),
        "parameters": p.info()["parameters"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test_rows": m["n"],
        "valid_wer_by_epoch": history,
        "resumed_from_epoch": p.metrics_.get("resumed_from_epoch", 0),
        **(hidden_scores(p, data, inputs) if len(inputs) > 1 else {}),
    }


def run_late(data: Path, save_dir: Path) -> dict:
    """The audio and image models (saved by their entries in --save-dir) decoded together: a product of experts,
    each step's log-probabilities averaged (polymodal.studies.ensemble.EnsembleModel, ensemble-average)."""
    import numpy as np
    import pandas as pd

    from polymodal import MultimodalPredictor
    from polymodal.studies.ensemble import EnsembleModel
    from polymodal.tasks.text_metrics import cer, exact_match, wer

    members = {}
    for name in ("audio", "image"):
        if not (save_dir / name).exists():
            raise SystemExit(
                f"the late entry needs the {name} model in {save_dir / name}: run --entries audio,image,late "
                "--save-dir DIR (or those entries with the same --save-dir before)"
            )
        members[name] = MultimodalPredictor.load(save_dir / name).engine
    ens = EnsembleModel(members, "average")
    test = pd.read_csv(data / "test.csv")
    refs = test["transcript"].tolist()
    start = time.perf_counter()
    features, _ = ens.features(test, data)
    hyps = list(ens.task.decode(ens.outputs(features, batch_size=64)))
    seconds = time.perf_counter() - start
    out = {"entry": "late", "inputs": list(members), "wer": wer(refs, hyps), "cer": cer(refs, hyps),
           "string_accuracy": exact_match(refs, hyps), "ms_per_utterance": round(1000 * seconds / len(test), 2),
           "test_rows": len(test), "members": {n: str(save_dir / n) for n in members}}  # fmt: skip
    for j, name in enumerate(members):  # each member hidden in turn: the other decodes alone
        keep = np.ones((len(test), len(members)), dtype=bool)
        keep[:, j] = False
        alone = list(ens.task.decode(ens.outputs(features, batch_size=64, present=keep)))
        out[f"wer_without_{name}"] = wer(refs, alone)
    return out


def run_pocketsphinx(data: Path) -> dict:
    """PocketSphinx with the digit grammar on the test audio (16 kHz: at 8 kHz its bundled model refuses)."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    from pocketsphinx import Decoder
    from scipy.signal import resample_poly

    from polymodal.tasks.text_metrics import cer, exact_match, wer

    decoder = Decoder(samprate=16000, lm=None)
    decoder.add_jsgf_string("digits", GRAMMAR)
    decoder.activate_search("digits")
    test = pd.read_csv(data / "test.csv")
    hyps = []
    start = time.perf_counter()
    for a in test["audio"]:
        wave, sr = sf.read(data / a, dtype="float32")
        pcm = (np.clip(resample_poly(wave, 16000 // sr, 1), -1, 1) * 32767).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        hyps.append(hyp.hypstr if hyp else "")
    seconds = time.perf_counter() - start
    refs = test["transcript"].tolist()
    return {
        "entry": "pocketsphinx",
        "inputs": ["audio"],
        "wer": wer(refs, hyps),
        "cer": cer(refs, hyps),
        "string_accuracy": exact_match(refs, hyps),
        "ms_per_utterance": round(1000 * seconds / len(test), 2),
        "test_rows": len(test),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "polymodal_digit_strings")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "digit_strings.json")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--entries", default="pocketsphinx,audio,image,fused")
    ap.add_argument("--fusion", help="fusion of every entry (default: attention)")
    ap.add_argument("--modality-dropout", type=float, default=0.0)
    ap.add_argument("--spec-augment", help="FREQ,TIME: SpecAugment masks per clip (e.g. 2,2)")
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--stop-after", type=int, help="end training after this many epochs (a probe)")
    ap.add_argument("--checkpoint-dir", help="a folder for each entry's per-epoch state (resumable)")
    ap.add_argument("--time-limit", type=float, help="seconds of training per entry (train.time_limit)")
    ap.add_argument("--save-dir", help="a folder where each trained entry's model is saved (the late entry reads them)")
    ap.add_argument("--note", help="a sentence stored in the JSON")
    ap.add_argument("--entry", help=argparse.SUPPRESS)  # one entry, in a child process
    a = ap.parse_args()
    if a.entry:
        print(json.dumps(run_entry(a.entry, a.data, a.max_epochs, a.seed, a)))
        return
    flags = {"fusion": a.fusion or "attention", "modality_dropout": a.modality_dropout, "spec_augment": a.spec_augment,
             "refit": a.refit, "stop_after": a.stop_after, "time_limit": a.time_limit}  # fmt: skip
    data = build_table(a.shared, a.data)
    results: list[dict] = []
    entries = a.entries.split(",")

    def write(complete: bool) -> None:
        """The record so far: written after every entry, so a long run stopped early keeps what it measured."""
        record = {
            "benchmark": "digit_strings",
            "complete": complete,
            "goals": {"fused_wer": 0.02, "audio_wer": 0.05},
            "settings": {"max_epochs": a.max_epochs, "seed": a.seed, "decoder": "transformer, greedy",
                         "entries": entries, **flags,
                         "table": "make_digit_strings.py defaults (10 dB SNR, image noise 0.25, occlusion 0.3)"},
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
            "command": "python " + " ".join(sys.argv),
            "results": results,
        }  # fmt: skip
        if a.note:
            record["note"] = a.note
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(record, indent=2) + "\n")

    for name in entries:
        if name == "pocketsphinx":
            results.append(run_pocketsphinx(data))
        elif name == "late":
            if not a.save_dir:
                raise SystemExit("the late entry decodes the saved audio and image models together: pass --save-dir")
            results.append(run_late(data, Path(a.save_dir)))
        else:
            cmd = [sys.executable, __file__, "--entry", name, "--data", str(data), "--max-epochs", str(a.max_epochs),
                   "--seed", str(a.seed), "--modality-dropout", str(a.modality_dropout)]  # fmt: skip
            for flag, value in (("--fusion", a.fusion), ("--spec-augment", a.spec_augment),
                                ("--stop-after", a.stop_after), ("--checkpoint-dir", a.checkpoint_dir),
                                ("--time-limit", a.time_limit), ("--save-dir", a.save_dir)):  # fmt: skip
                if value:
                    cmd += [flag, str(value)]
            cmd += ["--refit"] if a.refit else []
            done = subprocess.run(
                cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}
            )
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[-1]
        hidden = "  ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith("wer_without_"))
        print(f"{r['entry']:<14} WER {r['wer']:.4f}  CER {r['cer']:.4f}  string accuracy {r['string_accuracy']:.3f}  "
              f"{hidden}", flush=True)  # fmt: skip
        write(complete=len(results) == len(entries))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
