"""Training end to end on the generated task where the label needs the image and the text together."""

import numpy as np
import pandas as pd
import pytest
import synth

from polymodal import MultimodalPredictor
from polymodal.model.artifact import CONFIG, METRICS, PREPROCESS, WEIGHTS


@pytest.mark.parametrize("fusion", ["early", "late", "attention"])
def test_every_fusion_needs_and_uses_both_modalities(fitted, synth_split, fusion):
    _, test = synth_split
    m = fitted[fusion].evaluate(test)
    # Either modality alone can reach at most 50 % (chance is 25 %); the fused model must beat that clearly.
    assert m["accuracy"] > 0.85, m
    assert m["f1_macro"] > 0.85 and m["auroc"] > 0.9
    assert np.array(m["confusion_matrix"]).sum() == m["n"] == len(pd.read_csv(test))


def test_a_unimodal_model_cannot_solve_it(synth_split):
    train, test = synth_split
    p = MultimodalPredictor(
        label="y", fusion="early", ignore=["caption", "clip", "price", "shade", "score"], **synth.FAST
    )
    acc = p.fit(train).evaluate(test)["accuracy"]
    assert 0.3 < acc < 0.65, acc


def test_save_load_round_trip_gives_identical_predictions(fitted, synth_split, tmp_path):
    _, test = synth_split
    p = fitted["attention"]
    before = p.predict_proba(test)
    folder = p.save(tmp_path / "m1")
    assert sorted(x.name for x in folder.iterdir()) == sorted([CONFIG, METRICS, PREPROCESS, WEIGHTS])
    assert not any(x.name.startswith(".") for x in tmp_path.iterdir()), "temporary folder left behind"
    q = MultimodalPredictor.load(folder)
    after = q.predict_proba(test)
    np.testing.assert_array_equal(before.to_numpy(), after.to_numpy())
    assert list(q.predict(test)) == list(p.predict(test))
    assert q.info()["parameters"] == p.info()["parameters"]
    # Saving again over the same folder replaces it whole.
    q.save(folder)
    np.testing.assert_array_equal(MultimodalPredictor.load(folder).predict_proba(test).to_numpy(), after.to_numpy())


@pytest.mark.parametrize("fusion", ["early", "late", "attention"])
def test_missing_modality_at_inference_equals_telling_the_model_it_is_absent(fitted, synth_split, fusion):
    _, test = synth_split
    p = fitted[fusion]
    df = pd.read_csv(test).head(20)
    holed = df.copy()
    holed.loc[:9, "caption"] = np.nan
    base = test.parent
    eng = p.engine
    f_full, _ = eng.features(df, base)
    hide = np.ones_like(f_full.present)
    hide[:10, f_full.input_names.index("caption")] = False
    told = eng.outputs(f_full, present=hide)
    f_holed, _ = eng.features(holed, base)
    np.testing.assert_allclose(eng.outputs(f_holed), told, atol=1e-6)
    # And it does change the prediction input: the rows with text are untouched.
    np.testing.assert_allclose(told[10:], eng.outputs(f_full)[10:], atol=1e-6)
    # A column left out of the table entirely is absent for every row, not an error.
    out = p.predict_proba(df.drop(columns=["caption"]).assign(image=[str(base / x) for x in df["image"]]))
    assert out.shape == (20, 4) and np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_regression(synth_split):
    train, test = synth_split
    p = MultimodalPredictor(label="score", fusion="early", ignore=["clip", "price", "shade", "y"], **synth.FAST)
    m = p.fit(train).evaluate(test)
    assert p.engine.task.problem_type.value == "regression"
    assert m["r2"] > 0.8 and m["rmse"] < 0.7, m
    pred = p.predict(test)
    assert pred.dtype.kind == "f" and len(pred) == len(pd.read_csv(test))
    with pytest.raises(ValueError, match="predict_proba is for classification"):
        p.predict_proba(test)


def test_all_modalities_with_modality_dropout(synth_split, monkeypatch):
    """Text, image, audio, numeric and categorical inputs together, trained with modality dropout and the audio
    features' spectral warp (which really runs on the training batches)."""
    from polymodal.preprocess.augment import SpectralWarp

    calls = []
    original = SpectralWarp.__call__
    monkeypatch.setattr(SpectralWarp, "__call__", lambda self, x: calls.append(len(x)) or original(self, x))
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="attention", ignore=["score"], modality_dropout=0.2, audio_warp=0.2,
                            **synth.FAST)  # fmt: skip
    p.fit(train)
    assert calls and p.config_.train.audio_warp == 0.2
    assert list(p.engine.schema.inputs) == ["image", "caption", "clip", "tabular:numeric", "tabular:categorical"]
    assert p.evaluate(test)["accuracy"] > 0.8
    proba = p.predict_proba(test)
    assert list(proba.columns) == ["0", "1", "2", "3"]


def test_validation_table_and_history(synth_split):
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="late", ignore=["clip", "price", "shade", "score"], **synth.FAST)
    p.fit(train, valid=test)
    assert p.metrics_["valid_rows"] == len(pd.read_csv(test))
    hist = p.metrics_["history"]
    assert len(hist) == p.metrics_["epochs"] and {"train_loss", "val_loss", "val_accuracy"} <= set(hist[0])
    best = max(range(len(hist)), key=lambda i: (hist[i]["val_accuracy"], -hist[i]["val_loss"]))
    assert hist[best]["epoch"] == p.metrics_["best_epoch"]
    # The restored weights are the best epoch's: validation accuracy after fit equals the best one recorded.
    assert p.metrics_["valid"]["accuracy"] == pytest.approx(hist[best]["val_accuracy"], abs=1e-6)


def test_unfitted_predictor_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        MultimodalPredictor(label="y").predict(pd.DataFrame({"a": [1]}))


def test_the_same_seed_gives_the_same_model(synth_split):
    """The seed fixes the initial weights too, not only the training loop: two fits predict identically."""
    train, test = synth_split
    kw = dict(synth.FAST, max_epochs=2, ignore=["clip", "price", "shade", "score"])
    a, b = (MultimodalPredictor(label="y", fusion="early", seed=3, **kw).fit(train) for _ in range(2))
    np.testing.assert_array_equal(a.predict_proba(test).to_numpy(), b.predict_proba(test).to_numpy())
    c = MultimodalPredictor(label="y", fusion="early", seed=4, **kw).fit(train)
    assert not np.array_equal(a.predict_proba(test).to_numpy(), c.predict_proba(test).to_numpy())
