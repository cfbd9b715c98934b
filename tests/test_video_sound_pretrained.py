"""A pretrained audio encoder on a video's sound track ("COL:sound", an audio input): `speech-embedding`, frozen
through the feature cache, the track decoded from the video file at the encoder's own rate; a clip without sound is
absent in that row, not a problem. The label is the tone of the sound track, so the frames cannot tell it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from video_clips import write_clip

from polymodal import MultimodalPredictor
from polymodal.encoders import speech

pytestmark = [
    pytest.mark.usefixtures("pinned_torch"),
    pytest.mark.skipif(speech.models_dir() is None, reason="the speech extra is missing (make test installs it)"),
]
FAST = dict(
    preprocess={"image_size": 16, "sample_rate": 8000, "n_mels": 16, "n_mfcc": 8, "video_frames": 3},
    embed_dim=16, hidden=16, batch_size=16, lr=3e-3, progress=False, seed=0,
)  # fmt: skip
SILENT, EMPTY = (3, 10), 5


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vsp")
    (folder / "v").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(32):
        high = bool(i % 2)
        write_clip(folder / f"v/{i}.mp4", n=6, fps=6, sound=i not in SILENT, sr=8000, tone=1200.0 if high else 300.0)
        rows.append({"clip": None if i == EMPTY else f"v/{i}.mp4", "x": float(rng.normal()),
                     "y": "high" if high else "low"})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder


def fit(table, tmp_path, **extra) -> MultimodalPredictor:
    p = MultimodalPredictor(label="y", audio_encoder="speech-embedding", cache_dir=tmp_path / "cache", **FAST,
                            **extra)  # fmt: skip
    return p.fit(table / "train.csv")


def test_frozen_speech_encoder_reads_the_sound_track_through_the_cache(table, tmp_path):
    p = fit(table, tmp_path, max_epochs=25, patience=25)
    spec = p.engine.preprocessor.config.pretrained["clip:sound"]
    assert spec["mode"] == "frozen" and spec["track"] and spec["ref"]["kind"] == "speech-embedding"
    assert "clip:frames" not in p.engine.preprocessor.config.pretrained  # the frames stay scratch
    st = p.engine.preprocessor.state["clip:sound"]
    assert st["sample_rate"] == speech.SAMPLE_RATE and st["n_samples"] >= speech.MIN_SAMPLES  # not the 8 kHz
    stats = p.metrics_["feature_cache"]["clip:sound"]
    assert stats["misses"] == 31 and stats["encode_seconds"] > 0  # 32 cells, one empty
    df = pd.read_csv(table / "train.csv")
    media, frozen, problems = p.engine.pipeline.decode(df, table)
    assert not problems  # a clip without sound is no problem: its row lacks the sound track
    feats = p.engine.pipeline.features(df, media, frozen)
    j = feats.input_names.index("clip:sound")
    assert feats.inputs["clip:sound"].shape == (32, speech.DIM)
    assert [i for i in range(32) if not feats.present[i, j]] == sorted([*SILENT, EMPTY])
    # The tone is in the speech encoder's features: the model learns it (the frames are alike in both classes).
    assert (p.predict(table / "train.csv") == df["y"]).mean() >= 0.85

    again = fit(table, tmp_path, max_epochs=1)  # the same files and encoder: every track from the cache
    stats = again.metrics_["feature_cache"]["clip:sound"]  # (the clips without sound too: known to have none)
    assert stats["misses"] == 0 and stats["hits"] == 31 and stats["encode_seconds"] == 0
    before = again.predict_proba(table / "train.csv")
    again.save(tmp_path / "m")
    loaded = MultimodalPredictor.load(tmp_path / "m", cache_dir=tmp_path / "other_cache")  # encoded afresh
    pd.testing.assert_frame_equal(before, loaded.predict_proba(table / "train.csv"), atol=1e-5)


def test_sound_track_encoder_by_input_name_and_left_out(table, tmp_path):
    """`encoders.columns["COL:sound"]` picks the track's encoder alone; `--ignore COL:sound` drops it."""
    p = MultimodalPredictor(label="y", encoders={"clip:sound": "speech-embedding"}, max_epochs=1, **FAST)
    p.fit(table / "train.csv")
    assert set(p.engine.preprocessor.config.pretrained) == {"clip:sound"}
    q = MultimodalPredictor(label="y", audio_encoder="speech-embedding", ignore=["clip:sound"], max_epochs=1, **FAST)
    q.fit(table / "train.csv")
    assert q.engine.preprocessor.config.pretrained == {} and "clip:sound" not in q.engine.schema.inputs


def test_export_runs_the_track_encoder_inside_the_graph(table, tmp_path):
    """The exported graph takes the decoded sound track (at the encoder's rate) and holds the frozen encoder."""
    from polymodal.optimize.export import export_model

    p = fit(table, tmp_path, max_epochs=2)
    graph = export_model(p.save(tmp_path / "m"), tmp_path / "m.onnx")
    onnx = MultimodalPredictor.load(graph, runtime="onnx")
    assert onnx.engine.preprocessor.config.pretrained["clip:sound"]["in_graph"]  # no feature cache at inference
    assert onnx.engine.pipeline.frozen_inputs == []
    torch_p = p.predict_proba(table / "train.csv").to_numpy()
    onnx_p = onnx.predict_proba(table / "train.csv").to_numpy()
    assert onnx_p.shape == (32, 2) and np.abs(onnx_p - torch_p).max() <= 1e-4


def test_served_clips_answer_as_predict(table, tmp_path):
    """`polymodal serve` decodes an uploaded clip's sound track for the frozen encoder as predict does."""
    import base64
    import warnings

    from polymodal.serving.app import create_app
    from polymodal.serving.config import ServeConfig
    from polymodal.serving.service import ModelService

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    model = fit(table, tmp_path, max_epochs=2).save(tmp_path / "m")
    df = pd.read_csv(table / "train.csv").iloc[:12]
    instances = [{"x": float(r["x"]), **({} if pd.isna(r["clip"]) else
                  {"clip": base64.b64encode((table / r["clip"]).read_bytes()).decode()})}
                 for _, r in df.iterrows()]  # fmt: skip
    service = ModelService(model)
    with TestClient(create_app(ServeConfig(model=str(model), warmup=False), service)) as client:
        r = client.post("/v1/predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = MultimodalPredictor.load(model).predict_proba(df.assign(clip=[None if pd.isna(c) else str(table / c)
                                                                             for c in df["clip"]]))  # fmt: skip
    got = np.array([[p["probabilities"][c] for c in expected.columns] for p in preds])
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-5)
    sound = ["clip:sound" in p["inputs_used"] for p in preds]
    assert sound == [i not in (*SILENT, EMPTY) for i in range(12)]


def test_fine_tuned_track_encoder_fits_and_round_trips(table, tmp_path):
    p = fit(table, tmp_path, max_epochs=1, **{"encoders.freeze": False, "encoders.finetune_layers": 1})
    assert p.engine.preprocessor.config.pretrained["clip:sound"]["mode"] == "finetune"
    assert "clip:sound" not in p.metrics_.get("feature_cache", {})  # decoded with the frames, encoded in the net
    loaded = MultimodalPredictor.load(p.save(tmp_path / "m"))
    pd.testing.assert_frame_equal(p.predict_proba(table / "train.csv"), loaded.predict_proba(table / "train.csv"))


def test_a_text_decoder_reading_tokens_gets_the_frozen_tokens(table, tmp_path):
    """`decoder.memory: tokens` reads each input's tokens: a frozen encoder then caches its tokens (one per 80 ms
    window of the track), as for a token-level fusion; with `pooled` memory, its pooled embedding."""
    df = pd.read_csv(table / "train.csv").assign(words=lambda d: d["y"] + " tone").drop(columns="y")
    df["clip"] = [None if pd.isna(c) else str(table / c) for c in df["clip"]]
    df.to_csv(tmp_path / "words.csv", index=False)
    common = dict(label="words", problem_type="text", audio_encoder="speech-embedding", max_epochs=1, **FAST)
    for memory, tokens in (("tokens", True), ("pooled", False)):
        p = MultimodalPredictor(**common, decoder={"memory": memory, "dim": 16, "layers": 1, "heads": 2})
        p.fit(tmp_path / "words.csv")
        assert bool(p.engine.preprocessor.config.pretrained["clip:sound"].get("tokens")) is tokens, memory


def test_an_encoder_for_an_unknown_input_is_named_with_the_choices(table):
    from polymodal.data.schema import SchemaError

    p = MultimodalPredictor(label="y", encoders={"clip:voice": "speech-embedding"}, max_epochs=1, **FAST)
    with pytest.raises(SchemaError, match=r"encoders given for \['clip:voice'\].*video sound tracks.*'clip:sound'"):
        p.fit(table / "train.csv")
