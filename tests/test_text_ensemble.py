"""Late fusion of generated text: unimodal text models decoded together as a product of experts
(`EnsembleModel` with a text label, `polymodal.model.text_net.generate_together`).

The table's label is "a {colour} {animal}": the image's tint tells the colour, the caption's words the animal, so
each unimodal model can get one of the two words right and only the two together get both."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synth import make_table

from polymodal import MultimodalPredictor
from polymodal.errors import UserError
from polymodal.studies.ensemble import EnsembleModel

pytestmark = pytest.mark.usefixtures("pinned_torch")
TINY = {"dim": 32, "layers": 1, "heads": 2, "max_length": 5, "metric": "exact_match"}
OTHERS = ["image", "caption", "clip", "price", "shade"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_ensemble")
    df = make_table(folder, 200, seed=5)
    df["words"] = [f"a {'blue' if y // 2 else 'red'} {'dog' if y % 2 else 'cat'}" for y in df["y"]]
    df = df.drop(columns=["y", "score"])
    df.loc[[1, 7], "caption"] = None  # a row without the caption: its image member decodes alone
    df.iloc[:160].to_csv(folder / "train.csv", index=False)
    df.iloc[160:].to_csv(folder / "test.csv", index=False)
    return folder


def _member(table, keep: str, **decoder) -> MultimodalPredictor:
    p = MultimodalPredictor(
        label="words", problem_type="text", ignore=[c for c in OTHERS if c != keep], fusion="early",
        decoder={**TINY, **decoder}, preprocess={"image_size": 16}, embed_dim=32, max_epochs=25, patience=25,
        batch_size=32, lr=3e-3, seed=0, progress=False,
    )  # fmt: skip
    return p.fit(table / "train.csv")


@pytest.fixture(scope="module")
def members(table):
    return {"image": _member(table, "image"), "caption": _member(table, "caption")}


def _decode(model, features, present=None) -> list[str]:
    return list(model.task.decode(model.outputs(features, present=present)))


def test_product_of_experts_reads_both_inputs(members, table):
    ens = EnsembleModel({n: p.engine for n, p in members.items()}, "average")
    test = pd.read_csv(table / "test.csv")
    features, _ = ens.features(test, table)
    truth = test["words"].tolist()
    together = _decode(ens, features)
    alone = {n: _decode(p.engine, p.engine.features(test, table)[0]) for n, p in members.items()}

    def right(pred: list[str]) -> float:
        return float(np.mean([a == b for a, b in zip(pred, truth, strict=True)]))

    # Each member knows one word of the two; decoded together they know both.
    assert max(right(a) for a in alone.values()) < 0.8, {n: right(a) for n, a in alone.items()}
    assert right(together) >= 0.9 > max(right(a) for a in alone.values())
    # A member whose input is hidden is left out of the row: the other one decodes exactly as it does alone.
    only_image = np.array([[True, False]] * len(test))
    assert _decode(ens, features, only_image) == alone["image"]
    # And what a row lacks is left out the same way (rows 1 and 7 of the table have no caption; not in the test
    # split, so hide a test row's caption cell instead).
    gap = test.copy()
    gap.loc[0, "caption"] = None
    f_gap, _ = ens.features(gap, table)
    assert (
        _decode(ens, f_gap)[0] == _decode(members["image"].engine, members["image"].engine.features(gap, table)[0])[0]
    )


def test_text_ensemble_folder_round_trip(members, table, tmp_path):
    folders = {n: p.save(tmp_path / n) for n, p in members.items()}
    ens = EnsembleModel({n: p.engine for n, p in members.items()}, "average")
    saved = ens.save(tmp_path / "ens", folders)
    test = pd.read_csv(table / "test.csv")
    again = EnsembleModel.load(saved)
    assert _decode(again, again.features(test, table)[0]) == _decode(ens, ens.features(test, table)[0])


def test_text_ensemble_refusals(members, table, tmp_path):
    from polymodal.optimize.export import export_model

    engines = {n: p.engine for n, p in members.items()}
    graph = export_model(members["caption"].save(tmp_path / "caption"), tmp_path / "caption.onnx")
    exported = MultimodalPredictor.load(graph, runtime="onnx")
    with pytest.raises(UserError, match="not an exported graph"):  # its decoder steps run in ONNX Runtime
        EnsembleModel({"image": engines["image"], "caption": exported.engine}, "average")
    with pytest.raises(UserError, match="product of experts"):
        EnsembleModel(engines, "stack")
    chars = _member(table, "caption", tokens="char", max_length=16)
    with pytest.raises(UserError, match="different target vocabularies"):
        EnsembleModel({"image": engines["image"], "caption": chars.engine}, "average")
    ctc = _member(table, "clip", name="ctc")
    with pytest.raises(UserError, match="CTC head"):
        EnsembleModel({"image": engines["image"], "clip": ctc.engine}, "average")
