"""Tables read in chunks (issue 16): the same preprocessing, predictions and metrics as in memory, with flat
memory; bad rows named by their row in the whole table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth

from polymodal import MultimodalPredictor
from polymodal.data.schema import infer_schema
from polymodal.data.stream import Fingerprint, fingerprint, iter_chunks, split_mask, wants_streaming
from polymodal.data.validate import BadRowsError
from polymodal.errors import UserError
from polymodal.preprocess import Preprocessor

SETTINGS = synth.FAST | {"max_epochs": 4, "patience": 4}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, Path]:
    """Train and test CSVs holding every kind of input, with empty cells in each input column."""
    folder = tmp_path_factory.mktemp("stream")
    train, test = synth.make_table(folder, 260, seed=5), synth.make_table(folder, 90, seed=6)
    for df in (train, test):
        for i, col in enumerate(["caption", "image", "clip", "price", "shade"]):
            df.loc[[3 + i, 40 + i], col] = None
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


def test_chunks_keep_table_positions_in_every_format(table, tmp_path):
    df = pd.read_csv(table[0])
    df.to_parquet(tmp_path / "t.parquet", row_group_size=70)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for source in (table[0], tmp_path / "t.parquet", tmp_path / "t.jsonl", df):
        chunks = list(iter_chunks(source, 64))
        assert [len(c) for c in chunks[:4]] == [64, 64, 64, 64]
        whole = pd.concat(chunks)
        assert whole.index.tolist() == list(range(len(df)))
        assert whole["caption"].fillna("").tolist() == df["caption"].fillna("").tolist()
    # The validation split and the fingerprint do not depend on how the table is chunked.
    rows = np.arange(len(df))
    assert np.array_equal(split_mask(rows, 0.2, 3), np.concatenate([split_mask(rows[i : i + 7], 0.2, 3)
                                                                    for i in range(0, len(df), 7)]))  # fmt: skip
    assert 0.1 < split_mask(np.arange(10_000), 0.2, 3).mean() < 0.3
    assert not split_mask(np.zeros(1, dtype=np.int64), 0.01, 0)[0]  # row 0 is not a validation row by construction
    f = Fingerprint()
    for c in iter_chunks(df, 50):
        f.update(c)
    assert f.hexdigest() == fingerprint(df)


def test_preprocessing_fitted_in_chunks_equals_fitted_whole(table):
    from polymodal.data.validate import load_media
    from polymodal.preprocess import PreprocessConfig

    df = pd.read_csv(table[0])
    schema = infer_schema(df, "y", ignore=["score"])
    cfg = PreprocessConfig(image_size=16, sample_rate=8000, n_mels=32, n_mfcc=13)
    media, _ = load_media(df, schema, table[0].parent, cfg.image_size, cfg.sample_rate)
    whole = Preprocessor(schema, cfg).fit(df, media).state
    fitting = Preprocessor(schema, cfg).start_fit()
    for lo in range(0, len(df), 37):
        part = df.iloc[lo : lo + 37]
        fitting.update(part, {k: v[lo : lo + 37] for k, v in media.items()})
    chunked = fitting.finish().state
    assert chunked.keys() == whole.keys()
    for key in whole:
        for field, value in whole[key].items():
            if isinstance(value, list) and value and isinstance(value[0], float):
                assert np.allclose(chunked[key][field], value, rtol=1e-9), (key, field)
            else:
                assert chunked[key][field] == value, (key, field)


def test_transform_reads_columns_as_arrays_like_the_table(table):
    """The server hands the preprocessor one array per column instead of a DataFrame (no pandas per request):
    the features, raw (the ONNX graph's inputs) or not, equal the table's, empty cells and a number that is not
    one included."""
    from polymodal.data.validate import load_media
    from polymodal.preprocess import PreprocessConfig

    df = pd.read_csv(table[1])
    schema = infer_schema(pd.read_csv(table[0]), "y", ignore=["score"])
    df = df[list(schema.columns)]
    cfg = PreprocessConfig(image_size=16, sample_rate=8000, n_mels=32, n_mfcc=13)
    media, _ = load_media(df, schema, table[1].parent, cfg.image_size, cfg.sample_rate)
    pre = Preprocessor(schema, cfg).fit(df, media)
    columns = {c: df[c].to_numpy(dtype=np.float64 if df[c].dtype.kind == "f" else object) for c in df.columns}
    odd = df.assign(price=df["price"].astype(object))
    odd.loc[7, "price"] = "n/a"  # not a number: read as an empty cell either way
    odd_columns = dict(columns, price=odd["price"].to_numpy(dtype=object))
    for raw in (False, True):
        for frame, arrays in ((df, columns), (odd, odd_columns)):
            want, got = pre.transform(frame, media, raw=raw), pre.transform(arrays, media, raw=raw)
            assert got.input_names == want.input_names and np.array_equal(got.present, want.present)
            for name in want.input_names:
                a, b = want.inputs[name], got.inputs[name]
                assert a.dtype == b.dtype and a.shape == b.shape, name
                assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f") if a.dtype != object else list(a) == list(b)


def test_auto_switch_streams_only_what_would_not_fit(table):
    assert wants_streaming("auto", table[0], row_bytes=10**6, memory=10**8)  # 260 rows x 1 MB > 25 MB
    assert not wants_streaming("auto", table[0], row_bytes=10**3, memory=10**8)
    assert not wants_streaming("auto", pd.read_csv(table[0]), row_bytes=10**9, memory=1)  # already in memory
    assert wants_streaming("on", table[0], 0) and not wants_streaming("off", table[0], 0)
    with pytest.raises(UserError, match="data.streaming"):
        wants_streaming("sometimes", table[0], 0)


def test_streamed_fit_and_every_verb_agree_with_memory(table, tmp_path):
    train, test = table
    p = MultimodalPredictor(label="y", ignore=["score"], streaming="on", chunk_rows=50, **SETTINGS).fit(train)
    m = p.metrics_
    assert m["streaming"] is True and m["train_rows"] + m["valid_rows"] == 260
    assert 0.05 < m["valid_rows"] / 260 < 0.2  # the hashed 10 % split
    assert m["valid"]["accuracy"] >= 0.5  # it learned (chance: 0.25)
    folder = p.save(tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["config"]["data"]["streaming"] == "on"

    q = MultimodalPredictor.load(folder)
    streamed = q.evaluate(test)
    q.config_.data.streaming = "off"
    in_memory = q.evaluate(test)
    assert streamed["streaming"] and "streaming" not in in_memory
    assert streamed["data"] == in_memory["data"]
    for key in ("accuracy", "f1_macro", "log_loss"):
        assert streamed[key] == pytest.approx(in_memory[key], abs=1e-6)

    q.predict_file(test, tmp_path / "mem.csv")
    q.config_.data.streaming = "on"
    assert q.predict_file(test, tmp_path / "stream.csv") == 90
    a, b = pd.read_csv(tmp_path / "stream.csv"), pd.read_csv(tmp_path / "mem.csv")
    assert a["prediction"].tolist() == b["prediction"].tolist()
    probas = [c for c in a.columns if c.startswith("proba_")]
    assert len(probas) == 4 and np.allclose(a[probas], b[probas], atol=1e-6)
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]

    # The CLI: predict and evaluate with --streaming on.
    cli = [sys.executable, "-m", "polymodal"]
    out = subprocess.run([*cli, "predict", str(folder), str(test), "-o", str(tmp_path / "cli.csv"), "--streaming",
                          "on"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert pd.read_csv(tmp_path / "cli.csv")["prediction"].tolist() == b["prediction"].tolist()
    out = subprocess.run([*cli, "evaluate", str(folder), str(test), "--streaming", "on", "-o",
                          str(tmp_path / "e.json")], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == pytest.approx(streamed["accuracy"])


def test_streamed_bad_rows_are_named_by_table_row(table, tmp_path, monkeypatch):
    import polymodal.preprocess

    # Files past the decoded sample are checked (exist, not empty) before training too.
    monkeypatch.setattr(polymodal.preprocess, "MEDIA_SAMPLE", 100)
    df = pd.read_csv(table[0])
    df["image"] = [str(table[0].parent / v) if isinstance(v, str) else v for v in df["image"]]
    df["clip"] = [str(table[0].parent / v) if isinstance(v, str) else v for v in df["clip"]]
    df.loc[137, "image"] = str(tmp_path / "gone.png")
    (tmp_path / "empty.wav").write_bytes(b"")
    df.loc[233, "clip"] = str(tmp_path / "empty.wav")
    df.to_csv(tmp_path / "bad.csv", index=False)
    settings = SETTINGS | {"max_epochs": 1}
    with pytest.raises(BadRowsError, match=r"row 137, column 'image'.*gone\.png"):
        MultimodalPredictor(label="y", ignore=["score"], streaming="on", chunk_rows=50, **settings).fit(
            tmp_path / "bad.csv"
        )
    p = MultimodalPredictor(label="y", ignore=["score"], streaming="on", chunk_rows=50, on_bad_rows="skip",
                            **settings).fit(tmp_path / "bad.csv")  # fmt: skip
    assert p.metrics_["dropped_rows"] == 2
    assert p.metrics_["train_rows"] + p.metrics_["valid_rows"] == 258  # both left out of either split
    folder = p.save(tmp_path / "m")
    dropped = pd.read_csv(folder / "dropped_rows.csv")
    assert dropped["row"].tolist() == [137, 233] and dropped["column"].tolist() == ["image", "clip"]
    assert "file is empty" in dropped["reason"][1]


def test_feature_cache_reads_shards_on_demand(tmp_path):
    from polymodal.encoders.cache import FeatureCache

    cache = FeatureCache(tmp_path, {"encoder": "x"})
    cache.put({"a": np.ones(4), "b": np.zeros(4)})
    cache.put({"c": np.full(4, 2.0)})
    fresh = FeatureCache(tmp_path, {"encoder": "x"})
    got = fresh.get(["c", "a", "missing"])
    assert sorted(got) == ["a", "c"] and got["c"][0] == 2.0
    # What it keeps in memory is where each key lives, not the embeddings.
    assert all(isinstance(v, Path) for v in fresh._index.values())


def test_streamed_fit_with_a_validation_table(table, tmp_path):
    from polymodal.data.schema import SchemaError

    train, test = table
    settings = SETTINGS | {"max_epochs": 1}
    p = MultimodalPredictor(label="y", ignore=["score"], streaming="on", chunk_rows=64, **settings).fit(train, test)
    assert p.metrics_["train_rows"] == 260 and p.metrics_["valid_rows"] == 90
    pd.read_csv(test).drop(columns=["shade"]).to_csv(tmp_path / "v.csv", index=False)
    with pytest.raises(SchemaError, match="shade"):
        MultimodalPredictor(label="y", ignore=["score"], streaming="on", **settings).fit(train, tmp_path / "v.csv")


def _tabular(path: Path, n: int) -> Path:
    """A table without files: text, a number and a category (fast to stream)."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"note": [f"item {i} {'cat' if i % 2 else 'dog'}" for i in range(n)],
                  "price": rng.normal(size=n), "shade": rng.choice(["a", "b"], n),
                  "y": [i % 2 for i in range(n)]}).to_csv(path, index=False)  # fmt: skip
    return path


def test_streaming_bad_settings_and_tables_say_what_to_do(tmp_path):
    from polymodal.studies.compare import compare

    table = _tabular(tmp_path / "t.csv", 40)
    with pytest.raises(UserError, match="data.chunk_rows must be at least 1, not 0"):
        list(iter_chunks(table, 0))
    with pytest.raises(UserError, match=r"streamed compare measures robustness on a sample.*--noise-rows N"):
        compare(table, "y", tmp_path / "cmp", streaming="on", noise_rows=None)
    tiny = _tabular(tmp_path / "tiny.csv", 3)
    with pytest.raises(UserError, match=r"left \d training and 0 validation rows.*data.valid_fraction"):
        MultimodalPredictor(label="y", streaming="on", valid_fraction=0.01, **SETTINGS).fit(tiny)
    pd.DataFrame(columns=["note", "price", "shade", "y"]).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(UserError, match=r"empty\.csv has no rows"):
        MultimodalPredictor(label="y", streaming="on", **SETTINGS).fit(tmp_path / "empty.csv")


def test_streamed_compare_scores_every_test_row_and_resumes(table, tmp_path):
    """compare on a streamed table: every entry (unimodal, fusion, stacked ensemble) a streamed fit on the table
    with every kind of input and empty cells, scored on all test rows; robustness on the stated sample."""
    from polymodal.studies.compare import compare

    train, test = table
    args = dict(test=test, fusions="early,ensemble-stack", seeds=1, noise_levels=2, noise_rows=40, ignore=["score"],
                streaming="on", chunk_rows=50) | SETTINGS  # fmt: skip
    board = compare(train, "y", tmp_path / "cmp", **args)
    assert board["streaming"] is True and board["entries_run"] == 7
    rows = {r["entry"]: r for r in board["leaderboard"]}
    assert set(rows) == {"image only", "caption only", "clip only", "tabular:numeric only",
                         "tabular:categorical only", "early", "ensemble-stack"}  # fmt: skip
    assert rows["early"]["accuracy_mean"] >= 0.6  # needs image and text together; one alone reaches 0.5 at most
    assert rows["ensemble-stack"]["accuracy_mean"] > board["majority_class"]["score"]
    test_print = fingerprint(pd.read_csv(test))
    for r in board["results"]:
        assert r["streaming"] and r["metrics"]["data"] == test_print  # every test row, in every entry
        assert r["robustness"]["sample_rows"] == 40 and r["robustness"]["noise_rows"] == 40
        assert np.load(tmp_path / "cmp" / "models" / r["entry"].replace(":", "_").replace(" ", "_") / "seed0" /
                       "test_outputs.npy").shape == (90, 4)  # fmt: skip
    assert (tmp_path / "cmp" / "report.html").exists()
    assert MultimodalPredictor.load(tmp_path / "cmp" / "models" / "early" / "seed0").evaluate(test)["accuracy"] == (
        pytest.approx(rows["early"]["accuracy_mean"]))  # fmt: skip
    # The same compare from the CLI (its --streaming flag and a config file): every entry is found finished.
    settings = {k: v for k, v in args.items() if k not in ("test", "fusions", "seeds", "noise_levels", "noise_rows")}
    MultimodalPredictor(label="y", **settings).config_.to_yaml(tmp_path / "cfg.yaml")
    out = subprocess.run([sys.executable, "-m", "polymodal", "compare", str(train), "-o", str(tmp_path / "cmp"),
                          "--config", str(tmp_path / "cfg.yaml"), "--test", str(test), "--fusions",
                          "early,ensemble-stack", "--seeds", "1", "--noise-levels", "2", "--noise-rows", "40",
                          "--streaming", "on"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert again["entries_run"] == 0 and again["entries_skipped"] == 7

    # A broken file among the test rows is named (row and column) before any entry trains.
    bad = pd.read_csv(test)
    bad.loc[7, "image"] = "img/missing.png"
    bad.to_csv(test.parent / "bad_test.csv", index=False)
    with pytest.raises(BadRowsError, match=r"row 7, column 'image'.*missing\.png"):
        compare(train, "y", tmp_path / "cmp_bad", **(args | {"test": test.parent / "bad_test.csv"}))
    assert not (tmp_path / "cmp_bad" / "models").exists()


def test_streamed_compare_holds_out_the_same_test_rows_without_a_test_table(tmp_path):
    from polymodal.data.stream import TableSplit, head
    from polymodal.studies.compare import compare
    from polymodal.studies.runs import TEST_SPLIT_SEED

    table = _tabular(tmp_path / "t.csv", 400)
    board = compare(table, "y", tmp_path / "cmp", fusions="early", seeds=[0, 1], noise_levels=1, noise_rows=30,
                    streaming="on", chunk_rows=64, test_fraction=0.2, **SETTINGS)  # fmt: skip
    held = head(TableSplit(table, 0.2, TEST_SPLIT_SEED, held_out=True), 400)
    rest = head(TableSplit(table, 0.2, TEST_SPLIT_SEED, held_out=False), 400)
    assert len(held) + len(rest) == 400 and not set(held.index) & set(rest.index)
    for r in board["results"]:  # both seeds: the same held-out rows, none of them trained on
        assert r["metrics"]["data"] == fingerprint(held)
        m = MultimodalPredictor.load(tmp_path / "cmp" / "models" / r["entry"].replace(" ", "_").replace(":", "_") /
                                     f"seed{r['seed']}").metrics_  # fmt: skip
        assert m["train_rows"] + m["valid_rows"] == len(rest)


def test_bad_rows_error_raised_again_from_a_loader_worker_keeps_its_message():
    # A DataLoader re-raises a worker's exception as its type built from the message text alone.
    err = BadRowsError("1 bad row(s) in t.csv: row 7, column 'image': file not found: a.png")
    assert isinstance(err, UserError) and "row 7, column 'image'" in str(err) and err.problems == []
