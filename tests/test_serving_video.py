"""`polymodal serve` with a video column: clips sent as base64 JSON or uploaded in a form, decoded in the server's
pool (frames and sound track in one pass), answered as `predict` answers the same rows; a corrupt, an over-long
and a silent clip; the page's file input takes videos."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pandas as pd
import pytest
from test_video import FAST, write_table
from video_clips import write_clip

from polymodal import MultimodalPredictor
from polymodal.serving.app import create_app
from polymodal.serving.config import ServeConfig
from polymodal.serving.service import ModelService

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

MAX_SECONDS = 2.0  # the model's preprocess.video_max_seconds: a longer upload is refused


@pytest.fixture(scope="module")
def served(tmp_path_factory, pinned_torch):
    folder = tmp_path_factory.mktemp("serve_video")
    write_table(folder, 40, 1).to_csv(folder / "train.csv", index=False)
    write_table(folder, 14, 2).to_csv(folder / "test.csv", index=False)
    fast = {**FAST, "preprocess": {**FAST["preprocess"], "video_max_seconds": MAX_SECONDS}}
    model = MultimodalPredictor(label="y", fusion="attention", **fast).fit(folder / "train.csv").save(folder / "m")
    service = ModelService(model)
    with TestClient(create_app(ServeConfig(model=str(model), warmup=False), service)) as client:
        yield client, service, model, folder


def instance(row: pd.Series, base) -> dict:
    out = {"note": None if pd.isna(row["note"]) else row["note"], "x": float(row["x"]), "kind": row["kind"],
           "photo": base64.b64encode((base / row["photo"]).read_bytes()).decode()}  # fmt: skip
    if not pd.isna(row["clip"]):
        out["clip"] = base64.b64encode((base / row["clip"]).read_bytes()).decode()
    return out


def test_video_json_answers_equal_predict(served):
    client, service, model, folder = served
    assert service.fast and service.videos == {"clip"}  # decoded in the pool, not through file paths
    df = pd.read_csv(folder / "test.csv")
    r = client.post("/v1/predict", json={"instances": [instance(row, folder) for _, row in df.iterrows()]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = MultimodalPredictor.load(model).predict_proba(folder / "test.csv")
    got = np.array([[p["probabilities"][c] for c in expected.columns] for p in preds])
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-5)
    for i, p in enumerate(preds):  # an empty cell: both parts absent; a silent clip: the sound track absent
        frames, sound = "clip:frames" in p["inputs_used"], "clip:sound" in p["inputs_used"]
        assert frames == (not pd.isna(df["clip"][i]))
        assert sound == (frames and i % 9 != 4), (i, p["inputs_used"])
    assert any(i % 9 == 4 and not pd.isna(df["clip"][i]) for i in range(len(df)))  # the table has a silent clip


def test_video_form_upload_equals_json(served):
    client, _, _, folder = served
    row = pd.read_csv(folder / "test.csv").iloc[0]
    files = {"clip": ("c.mp4", (folder / row["clip"]).read_bytes(), "video/mp4"),
             "photo": ("p.png", (folder / row["photo"]).read_bytes(), "image/png")}  # fmt: skip
    form = {"note": "" if pd.isna(row["note"]) else row["note"], "x": str(row["x"]), "kind": row["kind"]}
    r = client.post("/v1/predict/form", data=form, files=files)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    (q,) = client.post("/v1/predict", json={"instances": [instance(row, folder)]}).json()["predictions"]
    assert p["prediction"] == q["prediction"] and "clip:frames" in p["inputs_used"]
    np.testing.assert_allclose(list(p["probabilities"].values()), list(q["probabilities"].values()), atol=1e-6)


def test_bad_videos_are_named_and_the_rest_answered(served, tmp_path):
    client, _, _, folder = served
    row = pd.read_csv(folder / "test.csv").iloc[0]
    long_clip = write_clip(tmp_path / "long.mp4", n=18, fps=6)  # 3 s, above the model's 2 s
    bad = [b"\x00\x00\x00\x18ftypmp42 not really a video", long_clip.read_bytes()]
    for data, words in zip(bad, (("video",), ("too long", "limit 2 s")), strict=True):
        inst = {**instance(row, folder), "clip": base64.b64encode(data).decode()}
        r = client.post("/v1/predict", json={"instances": [instance(row, folder), inst]})
        assert r.status_code == 422, r.text
        (d,) = r.json()["details"]
        assert (d["instance"], d["field"]) == (1, "clip") and all(w in d["message"].lower() for w in words), d
    # The server goes on answering.
    assert client.post("/v1/predict", json={"instances": [instance(row, folder)]}).status_code == 200


def test_page_takes_a_video_file(served):
    client = served[0]
    page = client.get("/").text
    assert 'data-column="clip"' in page and 'accept="video/*"' in page
    described = {i["name"]: i for i in client.get("/v1/model").json()["inputs"]}
    assert described["clip"]["modality"] == "video" and "upload" in described["clip"]["type"]
