"""`polymodal compare` on NLVR v1 (Suhr et al., ACL 2017): is the sentence true of the picture? (image + text)

The training split's labels are not public, so this trains on `dev` and tests on `hidden`. Every example has six
images (permutations of its three boxes, same label): each is one row, and all six stay on the same side of
every split; validation is the dev examples of `directory` 0 (a fold of the dataset's own), fixed across seeds.
The 400x100 images are resized to square `--image-size` pictures. Majority class: about 55 %.

    python benchmarks/compare_nlvr.py [--shared ../shared] [--seeds 3] [--fusions all] [--max-epochs 40]

Writes benchmarks/results/compare_nlvr.json and its robustness PNG; the compare folder goes to --runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from compare_av_digits import arguments, run_benchmark


def nlvr_tables(nlvr: Path, out: Path) -> tuple[Path, Path, Path]:
    """(train, valid, test) CSVs with absolute image paths: one row per image, label 'true' / 'false'."""
    out.mkdir(parents=True, exist_ok=True)
    frames = {}
    for split in ("dev", "hidden"):
        images = {p.name: p for p in (nlvr / split / "images").glob("*/*.png")}
        rows = []
        for line in (nlvr / split / f"{split}.json").read_text().splitlines():
            ex = json.loads(line)
            for k in range(6):
                path = images.get(f"{split}-{ex['identifier']}-{k}.png")
                if path is not None:
                    rows.append({"image": str(path.resolve()), "sentence": ex["sentence"], "label": ex["label"],
                                 "example": ex["identifier"], "fold": ex.get("directory", "")})  # fmt: skip
        frames[split] = pd.DataFrame(rows)
    dev = frames["dev"]
    is_valid = dev["fold"].astype(str) == "0"
    paths = out / "train.csv", out / "valid.csv", out / "test.csv"
    for df, path in zip((dev[~is_valid], dev[is_valid], frames["hidden"]), paths, strict=True):
        df.to_csv(path, index=False)
    return paths


def majority_class_accuracy(test: Path) -> float:
    """The accuracy of always answering the test rows' most frequent label: the bar to clear."""
    return round(float(pd.read_csv(test)["label"].value_counts(normalize=True).max()), 4)


def main() -> None:
    ap = arguments("polymodal_compare_nlvr", "compare_nlvr.json", __doc__)
    ap.add_argument("--nlvr", type=Path, help="default: SHARED/data/nlvr")
    ap.add_argument("--tables", type=Path, default=Path("/tmp/polymodal_nlvr_tables"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--image-fit", choices=["squash", "pad"], default="squash", help="pad: keep the 4:1 aspect")
    ap.add_argument("--preset", choices=["scratch", "pretrained"], default="scratch",
                    help="pretrained: frozen MiniLM + EfficientNet-Lite0 through the feature cache")  # fmt: skip
    ap.add_argument("--cache-dir", type=Path, help="feature cache (use an empty one to time the encoder pass)")
    ap.add_argument("--frozen-runtime", choices=["torch", "onnx-int8"], default="torch",
                    help="pretrained: run the frozen encoders in PyTorch fp32 or ONNX Runtime int8")  # fmt: skip
    a = ap.parse_args()
    train, valid, test = nlvr_tables(a.nlvr or a.shared / "data" / "nlvr", a.tables)
    extra = {}
    if a.preset == "pretrained":
        extra = {"preset": a.preset, "cache_dir": str(a.cache_dir), "encoders.frozen_runtime": a.frozen_runtime}
    notes = {"majority_class_accuracy": majority_class_accuracy(test), "image_size": a.image_size}
    run_benchmark(
        "compare_nlvr" if a.preset == "scratch" else "compare_nlvr_pretrained", a, train, test, "label",
        valid=valid, notes=notes, full={"image_size": 64}, ignore=["example", "fold"],
        modalities={"sentence": "text", "image": "image"},
        preprocess={"image_size": a.image_size, "image_fit": a.image_fit}, **extra,
    )  # fmt: skip


if __name__ == "__main__":
    main()
