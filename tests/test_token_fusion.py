"""Token-level fusion (relation network, FiLM, cross-modal transformer) and per-group scores.

The learning test uses tests/blobs.py: "is the red thing left of the blue thing?" needs where the blobs are
and which words ask, together; pooled early fusion usually stays near chance on it in its budget (SCHEDULES).
Every test here runs on one torch thread from fixed seeds (`pinned`), whatever ran before it.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from blobs import make_blobs

from polymodal import MultimodalPredictor
from polymodal.data.schema import Modality
from polymodal.encoders import Tokens
from polymodal.fusion import FUSIONS, TokenFusion
from polymodal.model.network import MultimodalNet
from polymodal.tasks import Task

TOKEN_FUSIONS = ["relation", "film", "token_transformer"]
SEED = 0
FAST = dict(
    preprocess={"image_size": 16}, embed_dim=32, hidden=32, batch_size=32, lr=3e-3, progress=False, augment=False
)
# The predictor's seed: torch's for the initial weights, Lightning's seed_everything for training (compare sets
# its own, so it is not in FAST).
SEEDED = FAST | {"seed": SEED}


# One torch thread, fixed seeds and torch's default settings here, whatever ran before (tests/test_rl.py leaves
# torch on one thread; the machine may be busy). One thread is also the fast choice on a loaded 2-core machine:
# the `fitted` fixture took 13 min on 2 threads there in one measurement, 50 s on one.
pytestmark = pytest.mark.usefixtures("pinned_torch")


def _seed(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    train, test = make_blobs(folder, 400, seed=1), make_blobs(folder, 200, seed=2)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv"


# Epochs, learning rate and other settings per fusion. Without the image augmentation (random shifts and
# brightness) the token fusions often memorize the 360 training images before they find the relation (training
# loss falls, validation stays at chance): over seeds 0-7 on one thread, the transformer (50 epochs) reached 0.8
# for 2 of 6 seeds (0.455-0.52 for the rest; 0.475 in a full-suite run), the relation network (25 epochs) for 1
# of 6, FiLM for 5 of 6. Shifts keep left and right, so only the relation fits them: with them the transformer
# reached 1.0 for all of seeds 0-7, FiLM 0.91-1.0 for 0-5, the relation network (50 epochs) 1.0 for 7 of 0-7.
# Early fusion is the baseline, on the plain schedule: pooled features usually miss the relation in 12 epochs,
# not always (seeds 5 and 6 learn it), so its bound holds for the pinned seed, not for any seed.
SCHEDULES = {
    "early": (12, 3e-3, {}),
    "film": (12, 1e-3, {"augment": True}),
    "relation": (50, 1e-3, {"augment": True}),
    "token_transformer": (50, 1e-3, {"augment": True}),
}


@pytest.fixture(scope="module")
def fitted(blobs, pinned_torch):
    """Early fusion and every token fusion on the blobs, with `kind` as the group column (never an input)."""
    train, _ = blobs
    out = {}
    for fusion, (epochs, lr, extra) in SCHEDULES.items():
        _seed()
        out[fusion] = MultimodalPredictor(
            label="answer", fusion=fusion, max_epochs=epochs, patience=epochs, data={"group_by": "kind"},
            **(SEEDED | {"lr": lr} | extra),
        ).fit(train)  # fmt: skip
    return out


# ---- learning --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", TOKEN_FUSIONS)
def test_token_fusion_learns_what_needs_position_and_words(fitted, blobs, fusion):
    _, test = blobs
    token = fitted[fusion].evaluate(test)["accuracy"]
    early = fitted["early"].evaluate(test)["accuracy"]
    assert early < 0.65, f"pooled early fusion should stay near chance here, got {early}"
    assert token > 0.8, f"{fusion} should learn the relation, got {token}"
    assert token > early + 0.15


def test_the_group_column_is_not_an_input_and_is_scored(fitted, blobs):
    _, test = blobs
    p = fitted["film"]
    assert set(p.schema.inputs) == {"image", "question"} and "kind" in p.schema.ignored
    m = p.evaluate(test)
    df = pd.read_csv(test)
    assert m["group_by"] == "kind" and set(m["groups"]) == set(df["kind"])
    pred = p.predict(test)
    for g, gm in m["groups"].items():
        rows = df["kind"] == g
        assert gm["n"] == rows.sum()
        assert gm["accuracy"] == pytest.approx((pred[rows] == df.loc[rows, "answer"]).mean())
    with pytest.raises(ValueError, match="no column 'nope'"):
        p.evaluate(test, group_by="nope")


# ---- masks -----------------------------------------------------------------------------------------------------
def _net(fusion: str) -> MultimodalNet:
    torch.manual_seed(0)
    task = Task.fit(__import__("polymodal.data.schema", fromlist=["ProblemType"]).ProblemType.BINARY, pd.Series([0, 1]))
    inputs = {"image": Modality.IMAGE, "question": Modality.TEXT, "n": Modality.NUMERIC}
    specs = {"image": {"channels": 3, "size": 32}, "question": {"vocab_size": 30, "max_len": 8}, "n": {"n_features": 2}}
    return MultimodalNet(inputs, specs, task, fusion, embed_dim=16, hidden=16).eval()


def _batch(b: int = 6, words: int = 8, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (b, words), generator=g)
    lengths = torch.randint(1, words + 1, (b,), generator=g)
    ids[torch.arange(words)[None] >= lengths[:, None]] = 0  # right padding
    inputs = {"image": torch.rand(b, 3, 32, 32, generator=g), "question": ids, "n": torch.randn(b, 2, generator=g)}
    return inputs, torch.ones(b, 3, dtype=torch.bool)


@pytest.mark.parametrize("fusion", TOKEN_FUSIONS)
def test_padding_tokens_never_change_the_output(fusion):
    net = _net(fusion)
    inputs, present = _batch()
    longer = dict(inputs, question=torch.cat([inputs["question"], torch.zeros(6, 5, dtype=torch.long)], dim=1))
    with torch.no_grad():
        a, b = net(inputs, present), net(longer, present)
        # At the fusion: padding tokens appended with arbitrary content and mask False.
        tokens = {net.keys[n]: net.encoders[net.keys[n]].forward_tokens(inputs[n]) for n in net.input_names}
        k = net.keys["question"]
        t = tokens[k]
        junk = torch.randn(6, 4, t.tokens.shape[2]) * 100
        padded = dict(tokens)
        padded[k] = Tokens(torch.cat([t.tokens, junk], 1), torch.cat([t.mask, torch.zeros(6, 4, dtype=torch.bool)], 1),
                           t.pooled)  # fmt: skip
        c, d = net.fusion(tokens, present), net.fusion(padded, present)
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()
    assert torch.allclose(c, d, atol=1e-6, rtol=0), (c - d).abs().max()


@pytest.mark.parametrize("fusion", TOKEN_FUSIONS)
@pytest.mark.parametrize("absent", ["image", "question"])
def test_an_absent_inputs_tokens_are_ignored(fusion, absent):
    net = _net(fusion)
    inputs, present = _batch()
    present[:, net.input_names.index(absent)] = False
    other = dict(inputs)
    other[absent] = torch.rand_like(inputs[absent].float()).to(inputs[absent].dtype) if absent == "image" else (
        torch.randint(1, 30, inputs[absent].shape))  # fmt: skip
    with torch.no_grad():
        a, b = net(inputs, present), net(other, present)
        present_all = torch.ones_like(present)
        c, d = net(inputs, present_all), net(other, present_all)
    assert torch.equal(a, b)
    assert not torch.allclose(c, d)  # the same change is read when the input is present


def test_token_fusions_are_registered_behind_one_contract():
    for name in TOKEN_FUSIONS:
        assert issubclass(FUSIONS[name], TokenFusion) and FUSIONS[name].consumes_tokens
    assert not FUSIONS["early"].consumes_tokens
    net = _net("relation")
    out = net.encoders[net.keys["image"]].forward_tokens(torch.rand(2, 3, 32, 32))
    assert out.grid == (4, 4) and out.coords.shape == (16, 2) and out.tokens.shape == (2, 16, 16)
    assert out.coords[0].tolist() == [-1.0, -1.0] and out.coords[3].tolist() == [1.0, -1.0]  # row-major (x, y)


# ---- the rest of the toolkit -----------------------------------------------------------------------------------
def test_save_load_and_modality_dropout(blobs, tmp_path):
    train, test = blobs
    p = MultimodalPredictor(
        label="answer", fusion="token_transformer", max_epochs=2, modality_dropout=0.3, ignore=["kind"], **SEEDED
    ).fit(train)
    q = MultimodalPredictor.load(p.save(tmp_path / "m"))
    assert q.fusion == "token_transformer" and q.engine.net.tokens
    np.testing.assert_array_equal(p.predict_proba(test).to_numpy(), q.predict_proba(test).to_numpy())


def test_compare_and_report_with_a_token_fusion_and_groups(blobs, tmp_path):
    from polymodal.evaluation.report import model_report
    from polymodal.studies import compare as cmp

    train, test = blobs
    board = cmp.compare(
        train, "answer", tmp_path / "cmp", test=test, fusions=["film"], seeds=1, noise_levels=0, permutations=1,
        max_epochs=2, data={"group_by": "kind"}, **FAST,
    )  # fmt: skip
    rows = {r["entry"]: r for r in board["leaderboard"]}
    assert set(rows) == {"image only", "question only", "film"}
    assert {"group:red first", "group:blue first"} <= set(rows["film"])
    assert (tmp_path / "cmp" / "report.html").exists()
    p = MultimodalPredictor.load(tmp_path / "cmp" / "models" / "film" / "seed0")
    html = model_report(p.engine, test, name="film", noise_levels=1, permutations=1, noise_rows=20, group_by="kind")
    assert "per group" in html and "red first" in html


def test_serve_a_token_fusion(fitted, blobs):
    from polymodal.serving import ServeConfig, create_app
    from polymodal.serving.service import ModelService

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    _, test = blobs
    folder = fitted["film"].save(test.parent / "film_model")
    df = pd.read_csv(test).head(5)
    app = create_app(ServeConfig(model=str(folder)), ModelService(folder))
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            __import__("time").sleep(0.05)
        b64 = lambda path: __import__("base64").b64encode((test.parent / path).read_bytes()).decode()  # noqa: E731
        r = client.post("/v1/predict", json={"instances": [
            {"image": b64(row.image), "question": row.question} for row in df.itertuples()
        ]})  # fmt: skip
        assert r.status_code == 200, r.text
        got = [p["prediction"] for p in r.json()["predictions"]]
        assert got == list(fitted["film"].predict(df.assign(image=[str(test.parent / i) for i in df["image"]])))
        # A question with no image is answered (the image is absent, not an error).
        r = client.post("/v1/predict", json={"instances": [{"question": "is the red thing left of the blue thing"}]})
        assert r.status_code == 200, r.text
