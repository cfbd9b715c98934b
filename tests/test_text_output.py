"""Text as an output (problem type text): inference of the type, target vocabulary, bad targets, fit / evaluate /
predict / save / load with every input kind, absent inputs, and ONNX Runtime strings equal to PyTorch's."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from synth import FAST, make_table

from polymodal.data.schema import ProblemType, infer_problem_type
from polymodal.data.validate import BadRowsError
from polymodal.tasks import Task
from polymodal.tasks.text import EOS, UNK, TextTask, Vocabulary


def with_text_label(df: pd.DataFrame) -> pd.DataFrame:
    """A caption from the image's colour (its label's high bit) and the animal in the text (its low bit)."""
    out = df.copy()
    animal = np.where(out["y"] % 2 == 1, "dog", "cat")
    colour = np.where(out["y"] // 2 == 1, "blue", "red")
    out["caption_out"] = [f"a {c} {a}" for c, a in zip(colour, animal, strict=True)]
    return out.drop(columns=["y", "score"])


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_out")
    train = with_text_label(make_table(folder, 240, seed=1))
    test = with_text_label(make_table(folder, 60, seed=2))
    for df in (train, test):  # absolute paths: the DataFrames work from anywhere
        for col in ("image", "clip"):
            df[col] = [str(folder / v) for v in df[col]]
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder, train, test


SETTINGS = dict(FAST, problem_type="text", max_epochs=30, patience=30,
                decoder={"dim": 32, "layers": 1, "heads": 2, "max_length": 6})  # fmt: skip


@pytest.fixture(scope="module")
def fitted(tables, pinned_torch):
    from polymodal.predictor import MultimodalPredictor

    folder, _, _ = tables
    p = MultimodalPredictor(label="caption_out", **SETTINGS)
    return p.fit(folder / "train.csv")


def test_problem_type_inferred_for_free_text_only():
    rng = np.random.default_rng(0)
    words = ["red", "blue", "cat", "dog", "sits", "on", "a", "mat", "big", "small"]
    captions = pd.Series([" ".join(rng.choice(words, size=5)) for _ in range(100)])
    assert infer_problem_type(captions) is ProblemType.TEXT
    assert infer_problem_type(pd.Series(["red cat sits", "blue dog runs", "a big mat"] * 30)) is ProblemType.MULTICLASS
    assert infer_problem_type(pd.Series([f"{w}|x" for w in captions])) is ProblemType.MULTILABEL
    assert infer_problem_type(captions.head(10)) is not ProblemType.TEXT  # too few rows to call it free text


def test_vocabulary_words_chars_unknown_and_truncation(caplog):
    v = Vocabulary.fit(pd.Series(["Three one four", "one one five"]), "word")
    assert v.tokens[4] == "one"  # most frequent first, after the four specials
    assert v.decode(v.encode("ONE five")) == "one five"
    assert v.encode("one seven") == [v.index["one"], UNK]  # unknown word: <unk>, never an error
    c = Vocabulary.fit(pd.Series(["ab  ba"]), "char")
    assert c.decode(c.encode("ab ba")) == "ab ba"
    task = TextTask(v, {"name": "transformer", "max_length": 2, "label_smoothing": 0.0, "metric": "wer",
                        "metric_lowercase": True, "metric_punctuation": False})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        enc = task.encode_targets(pd.Series(["three one four", "one", "one one five"]))
    assert "2 of 3 target(s) are longer than decoder.max_length = 2" in caplog.text
    assert enc.shape == (3, 3) and enc[0].tolist() == [v.index["three"], v.index["one"], EOS]
    assert Task.from_dict(task.to_dict()).vocabulary.tokens == v.tokens


def test_empty_targets_are_named_or_skipped(tables):
    from polymodal.predictor import MultimodalPredictor

    _, train, _ = tables
    bad = train.head(80).copy()
    bad.loc[3, "caption_out"] = None
    bad.loc[7, "caption_out"] = "   "
    settings = dict(SETTINGS, max_epochs=1)
    with pytest.raises(BadRowsError) as err:
        MultimodalPredictor(label="caption_out", **settings).fit(bad)
    assert "row 3" in str(err.value) and "row 7" in str(err.value) and "target text is empty" in str(err.value)
    p = MultimodalPredictor(label="caption_out", on_bad_rows="skip", **settings).fit(bad)
    assert p.metrics_["dropped_rows"] == 2


def test_fit_evaluate_predict_save_load(fitted, tables, tmp_path):
    from polymodal.predictor import MultimodalPredictor

    folder, _, test = tables
    m = fitted.evaluate(folder / "test.csv")
    assert {"wer", "cer", "bleu", "chrf", "cider", "rouge_l", "exact_match"} <= set(m)
    # Colour from the image and animal from the text: a model that reads both gets most captions whole.
    assert m["exact_match"] >= 0.6 and m["wer"] <= 0.2, m
    pred = fitted.predict(folder / "test.csv")
    assert pred.map(lambda s: isinstance(s, str)).all() and pred.str.startswith("a ").mean() > 0.9
    fitted.save(tmp_path / "m")
    back = MultimodalPredictor.load(tmp_path / "m")
    assert back.predict(folder / "test.csv").tolist() == pred.tolist()
    n = back.predict_file(folder / "test.csv", tmp_path / "p.csv")
    out = pd.read_csv(tmp_path / "p.csv")
    assert n == len(test) and out["prediction"].tolist() == pred.tolist() and "score" in out


def test_beam_nbest_and_absent_inputs(fitted, tables):
    folder, _, test = tables
    nb = fitted.predict_text(folder / "test.csv", beam_size=3, n_best=2)
    assert {"prediction", "score", "text_1", "score_1", "text_2", "score_2"} <= set(nb.columns)
    assert (nb["score_1"] >= nb["score_2"]).all() and (nb["prediction"] == nb["text_1"]).all()
    no_image = test.head(10).assign(image=None)
    got = fitted.predict(no_image)  # the image absent: masked, never read; still text
    assert len(got) == 10 and got.map(lambda s: isinstance(s, str)).all()
    # evaluation targets with words the vocabulary never saw: scored on their text, no error
    odd = test.head(10).assign(caption_out="a green hamster")
    assert fitted.evaluate(odd)["exact_match"] == 0.0


def test_onnx_strings_equal_pytorch(fitted, tables, tmp_path):
    from polymodal.optimize.export import export_onnx
    from polymodal.predictor import MultimodalPredictor

    folder, _, _ = tables
    fitted.save(tmp_path / "m")
    graph = export_onnx(tmp_path / "m", tmp_path / "m.onnx")
    assert (tmp_path / "m.decoder.onnx").is_file()
    onnx = MultimodalPredictor.load(graph, runtime="onnx")
    torch_p = MultimodalPredictor.load(tmp_path / "m")
    assert onnx.predict(folder / "test.csv").tolist() == torch_p.predict(folder / "test.csv").tolist()
    a = onnx.predict_text(folder / "test.csv", beam_size=3, n_best=2)
    b = torch_p.predict_text(folder / "test.csv", beam_size=3, n_best=2)
    assert a["text_2"].tolist() == b["text_2"].tolist()
    np.testing.assert_allclose(a["score_2"], b["score_2"], atol=1e-4)
