"""Each distinct media file encoded once (issue 29 part 1).

A question-answering table repeats each picture on many rows. Its decoded pictures are kept once per file
(`Features.index`), training batches group a picture's rows (`train.group_batches`), and the network runs the
image encoder on the distinct pictures of a batch and gathers the result to the rows. Checked here: the outputs
equal the row-by-row path, the encoder sees distinct pictures only, memory holds one array per picture, the
usual verbs work on such a table (empty cells included), and the grouped sampler uses every row once an epoch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from polymodal import MultimodalPredictor
from polymodal.preprocess.features import Features
from polymodal.training.sampler import GroupedBatches, grouping_on

pytestmark = pytest.mark.usefixtures("pinned_torch")

QUESTIONS = [
    ("is the red thing left of the blue thing", lambda r, b: r[0] < b[0]),
    ("is the blue thing left of the red thing", lambda r, b: b[0] < r[0]),
    ("is the red thing above the blue thing", lambda r, b: r[1] < b[1]),
    ("is the blue thing above the red thing", lambda r, b: b[1] < r[1]),
]
FAST = dict(preprocess={"image_size": 16}, embed_dim=16, hidden=16, batch_size=32, max_epochs=2, progress=False,
            augment=False, seed=0)  # fmt: skip


def qa_table(folder, n_pictures: int, per_picture: int, seed: int, empty: bool = True) -> pd.DataFrame:
    """`n_pictures` pictures of a red and a blue square, each asked `per_picture` questions (rows grouped by
    picture, as a VQA table is); with `empty`, a few rows have no picture and a few no question."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_pictures):
        while True:
            red, blue = rng.integers(1, 12, size=(2, 2))
            if abs(int(red[0]) - int(blue[0])) >= 3 and abs(int(red[1]) - int(blue[1])) >= 3:
                break
        pix = np.full((16, 16, 3), 255, np.uint8)
        pix[red[1] : red[1] + 3, red[0] : red[0] + 3] = (255, 0, 0)
        pix[blue[1] : blue[1] + 3, blue[0] : blue[0] + 3] = (0, 0, 255)
        Image.fromarray(pix).save(folder / "img" / f"{seed}_{p}.png")
        for _ in range(per_picture):
            q, answer = QUESTIONS[rng.integers(len(QUESTIONS))]
            rows.append({"image": f"img/{seed}_{p}.png", "question": q, "answer": "yes" if answer(red, blue) else "no"})
    df = pd.DataFrame(rows)
    if empty:
        df.loc[[3, 25, 41], "image"] = ""
        df.loc[[7, 60], "question"] = None
    return df


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    train, test = qa_table(folder, 10, 20, seed=1), qa_table(folder, 6, 15, seed=2)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


@pytest.fixture(scope="module")
def fitted(tables):
    """One predictor per fusion: pooled (early) and token-level (relation), trained with grouped batches."""
    train, _ = tables
    return {f: MultimodalPredictor(label="answer", fusion=f, **FAST).fit(train) for f in ("early", "relation")}


@pytest.mark.parametrize("fusion", ["early", "relation"])
def test_encode_once_equals_row_by_row(fitted, tables, fusion):
    """The same weights on the same rows: distinct pictures encoded once and gathered to the rows vs every row
    encoded on its own (the index expanded) give the same outputs, in the table's row order."""
    _, test = tables
    engine = fitted[fusion].engine
    df = pd.read_csv(test)
    features, _ = engine.features(df, test.parent)
    assert "image" in features.index and len(features.stored["image"]) <= 7  # 6 pictures (+ the empty cell)
    once = engine.outputs(features, batch_size=16)
    rows = engine.outputs(features.expand(), batch_size=16)
    assert not features.expand().index
    np.testing.assert_allclose(once, rows, atol=1e-5, rtol=1e-5)
    # The row order is the table's: shuffled rows give the same rows' outputs, shuffled.
    perm = np.random.default_rng(0).permutation(len(df))
    shuffled = engine.outputs(engine.features(df.iloc[perm].reset_index(drop=True), test.parent)[0], batch_size=16)
    np.testing.assert_allclose(shuffled, once[perm], atol=1e-5, rtol=1e-5)
    # And predict (the public path) agrees with the row-by-row outputs.
    proba = fitted[fusion].predict_proba(test).to_numpy()
    np.testing.assert_allclose(proba, rows, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["early", "relation"])
def test_the_image_encoder_sees_distinct_pictures_only(fitted, tables, fusion):
    """An epoch of training: the image encoder's rows (forward hook) are the distinct pictures of each batch,
    summed, far fewer than the rows."""
    from polymodal.config import TrainConfig
    from polymodal.training import train as run_training
    from polymodal.training.data import MemoryRows

    train_csv, _ = tables
    p = fitted[fusion]
    engine, net = p.engine, p.engine.net
    df = pd.read_csv(train_csv)
    features, _ = engine.features(df, train_csv.parent)
    targets = engine.task.encode_targets(df["answer"])
    encoder = net.encoders[net.keys["image"]]
    seen: dict[str, list[int]] = {"encoder": [], "distinct": [], "rows": []}

    def count_net(module, args, kwargs):
        if module.training:
            index = (kwargs.get("index") or {}).get("image")
            seen["rows"].append(int(args[1].shape[0]))
            seen["distinct"].append(int(index.max()) + 1 if index is not None else int(args[1].shape[0]))

    def count_encoder(module, args):
        if module.training:
            seen["encoder"].append(int(args[0].shape[0]))

    hooks = [net.register_forward_pre_hook(count_net, with_kwargs=True)]
    if net.tokens:  # a token fusion calls the encoder's forward_tokens: counted by a wrapper of it
        real = encoder.forward_tokens
        encoder.forward_tokens = lambda x: count_encoder(encoder, (x,)) or real(x)
    else:
        hooks += [encoder.register_forward_pre_hook(count_encoder)]
    cfg = TrainConfig(max_epochs=1, batch_size=32, progress=False, augment=False, group_batches="on")
    try:
        valid = MemoryRows(features.take(np.arange(20)), targets[:20])
        run_training(net, engine.task, p.schema.inputs, MemoryRows(features, targets), valid, cfg)
    finally:
        for h in hooks:
            h.remove()
        encoder.__dict__.pop("forward_tokens", None)
        net.eval()
    assert sum(seen["rows"]) == len(df)  # every row trained once
    assert seen["encoder"] == seen["distinct"]  # the encoder ran once per distinct picture of each batch
    # Grouped batches of 32 rows hold 2-3 pictures (and maybe the empty cell's blank): at most 4 of 32 rows.
    assert sum(seen["encoder"]) <= len(df) // 8, seen["encoder"]


def test_features_hold_one_array_per_picture(tables, tmp_path, monkeypatch):
    """10 pictures on 200 rows: 10 pixel arrays, each file decoded once; the per-row view still reads 200."""
    import polymodal.data.validate as validate

    qa_table(tmp_path, 10, 20, seed=3, empty=False).to_csv(tmp_path / "t.csv", index=False)
    p = MultimodalPredictor(label="answer", fusion="early", **(FAST | {"max_epochs": 1})).fit(tables[0])
    calls = []
    real = validate.decode_image
    monkeypatch.setattr(validate, "decode_image", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    features, _ = p.engine.features(pd.read_csv(tmp_path / "t.csv"), tmp_path)
    assert len(calls) == 10
    assert features.stored["image"].shape == (10, 3, 16, 16)
    assert features.inputs["image"].shape == (200, 3, 16, 16)
    assert features.index["image"].shape == (200,) and features.present[:, 0].all()
    assert "question" not in features.index  # text is per row
    sub = features.take(np.arange(20, 60))
    assert sub.stored["image"] is features.stored["image"] and len(sub) == 40
    np.testing.assert_array_equal(sub.inputs["image"], features.inputs["image"][20:60])


def test_fit_evaluate_predict_save_load(fitted, tables, tmp_path):
    """The verbs on a table of repeated pictures with empty cells; a saved and loaded model predicts the same."""
    train, test = tables
    p = fitted["relation"]
    metrics = p.evaluate(test)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["dropped_rows"] == 0
    pred = p.predict(test)
    assert len(pred) == len(pd.read_csv(test)) and set(pred) <= {"yes", "no"}
    folder = p.save(tmp_path / "m")
    q = MultimodalPredictor.load(folder)
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-6)
    assert q.evaluate(test)["accuracy"] == metrics["accuracy"]


def test_onnx_export_reads_rows(fitted, tables, tmp_path):
    """The exported graph takes every input per row (the index expanded before it): it answers as PyTorch."""
    from polymodal.optimize.export import export_model

    _, test = tables
    folder = fitted["early"].save(tmp_path / "m")
    graph = export_model(folder, tmp_path / "m.onnx")
    onnx_p = MultimodalPredictor.load(graph, runtime="onnx").predict_proba(test).to_numpy()
    np.testing.assert_allclose(onnx_p, fitted["early"].predict_proba(test).to_numpy(), atol=1e-4)


def test_grouped_sampler_uses_every_row_once_and_keeps_groups_together():
    groups = np.repeat(np.arange(13), 7)  # 13 pictures x 7 questions, rows in table order
    groups = np.random.default_rng(0).permutation(groups)  # and scattered over the table
    generator = torch.Generator().manual_seed(0)
    sampler = GroupedBatches(groups, batch_size=16, generator=generator)
    orders = []
    for _ in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(len(groups)))  # every row exactly once
        # rows of one picture are consecutive: the group changes 12 times over the epoch
        assert int((groups[rows][1:] != groups[rows][:-1]).sum()) == 12
        # so each batch of 16 holds at most 4 pictures (a group straddles at most the two ends)
        assert max(len(np.unique(groups[b])) for b in batches) <= 4
        orders.append(rows)
    assert not np.array_equal(*orders)  # a new order each epoch
    # a last batch of one row joins the one before (no BatchNorm batch of 1)
    one_left = GroupedBatches(np.arange(17), batch_size=8, generator=generator)
    assert [len(b) for b in one_left] == [8, 9] and len(one_left) == 2
    # distributed: the same batches on every process, each its share, none shared
    shares = [list(GroupedBatches(groups, 16, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(GroupedBatches(groups, 16, seed=1, rank=0, world=2))
    assert not set(np.concatenate(shares[0]).tolist()) & set(np.concatenate(shares[1]).tolist())


def test_grouping_setting():
    index = np.repeat(np.arange(5), 4)
    repeated = Features({"image": np.zeros((5, 3, 2, 2))}, np.ones((20, 1), bool), ["image"], {"image": index})
    assert grouping_on("auto", repeated) and not grouping_on("off", repeated)
    assert repeated.mean_repeats() == 4.0
    per_row = Features({"image": np.zeros((20, 3, 2, 2))}, np.ones((20, 1), bool), ["image"])
    assert not grouping_on("auto", per_row) and not grouping_on("on", per_row)
    with pytest.raises(ValueError):
        grouping_on("sometimes", repeated)
