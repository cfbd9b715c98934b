"""Video columns: one-pass decoding (frames at the right times, the sound track as long as the clip), validation
of broken files with their messages, the temporal encoders, the augmentation, and every verb on a table with a
video column next to every other input kind, empty cells included."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from video_clips import SIZE, write_clip, write_codecless, write_sound_only

from polymodal.data.schema import Modality, infer_schema
from polymodal.data.validate import BadRowsError
from polymodal.data.video import MediaError, decode_video, sample_times


def frame_index(frame: np.ndarray) -> int:
    """Which frame this is: where its white bar is (video_clips.frame_picture draws frame i's at column i)."""
    return int(np.argmax(frame.astype(float).mean(axis=(0, 1))))


# ---- decoding ----------------------------------------------------------------------------------------------------
def test_frames_sampled_uniformly_at_the_centres(tmp_path):
    path = write_clip(tmp_path / "a.mp4", n=16, fps=8)  # 2 s, frame i at i / 8 s
    clip = decode_video(path, n_frames=4, size=SIZE, sample_rate=16000)
    assert clip.frames.shape == (4, 3, SIZE, SIZE) and clip.frames.dtype == np.uint8
    np.testing.assert_allclose(sample_times(2.0, 4), [0.25, 0.75, 1.25, 1.75])
    assert [frame_index(f) for f in clip.frames] == [2, 6, 10, 14]  # the frames shown at those times
    np.testing.assert_allclose(clip.times, [0.25, 0.75, 1.25, 1.75])


def test_frames_sampled_at_a_rate_and_short_clips_repeat_the_last(tmp_path):
    path = write_clip(tmp_path / "a.mp4", n=8, fps=4)  # 2 s
    clip = decode_video(path, n_frames=6, size=SIZE, sample_rate=16000, fps=2.0)  # 0, .5, ..., 2.5 s
    assert [frame_index(f) for f in clip.frames] == [0, 2, 4, 6, 7, 7]


def test_sound_track_is_as_long_as_the_clip(tmp_path):
    for n, fps in ((8, 4), (9, 6)):  # 2 s and 1.5 s; AAC pads its last frame to 1024 samples
        clip = decode_video(write_clip(tmp_path / f"{n}.mp4", n=n, fps=fps), 4, SIZE, sample_rate=8000)
        assert clip.seconds == pytest.approx(n / fps)
        assert len(clip.sound) == round(n / fps * 8000)
        # the sine is there (resampled from 16 kHz): not silence, not clipped
        assert 0.1 < np.abs(clip.sound[100:-100]).max() < 0.5


def test_silent_video_has_no_sound(tmp_path):
    clip = decode_video(write_clip(tmp_path / "s.mp4", sound=False), 4, SIZE, 16000)
    assert clip.sound is None and clip.frames.shape[0] == 4


def test_pad_fit_letterboxes(tmp_path):
    clip = decode_video(write_clip(tmp_path / "a.mp4"), 2, 32, 16000, fit="pad")
    assert clip.frames.shape == (2, 3, 32, 32)


def test_broken_videos_are_named(tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    write_sound_only(tmp_path / "voice.mkv")
    write_codecless(tmp_path / "odd.mkv")
    write_clip(tmp_path / "long.mp4", n=8, fps=4)
    cases = {
        "corrupt.mp4": ({}, "unreadable or corrupt video"),
        "voice.mkv": ({}, "no video stream"),
        "odd.mkv": ({}, "unsupported video codec"),
        "long.mp4": ({"max_seconds": 1.0}, "video too long: 2.0 s, limit 1 s"),
        "missing.mp4": ({}, "file not found"),
    }
    for name, (limits, message) in cases.items():
        with pytest.raises(MediaError, match=message) as e:
            decode_video(tmp_path / name, 4, SIZE, 16000, **limits)
        assert name in str(e.value)
    with pytest.raises(MediaError, match="video too large: about 8 frames of 16 x 16 = 2048 pixels, limit 1000"):
        decode_video(tmp_path / "long.mp4", 4, SIZE, 16000, max_pixels=1000)


def test_validation_names_row_column_and_path(tmp_path):
    from polymodal import MultimodalPredictor

    write_clip(tmp_path / "ok.mp4")
    write_sound_only(tmp_path / "voice.mkv")
    write_codecless(tmp_path / "odd.mkv")
    df = pd.DataFrame({"clip": ["ok.mp4", "voice.mkv", "ok.mp4", "odd.mkv"] * 3, "y": ["a", "b"] * 6})
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(BadRowsError) as e:
        MultimodalPredictor(label="y", max_epochs=1, progress=False).fit(tmp_path / "t.csv")
    text = str(e.value)
    assert "row 1, column 'clip': no video stream" in text and "voice.mkv" in text
    assert "row 3, column 'clip': unsupported video codec" in text and "odd.mkv" in text


def test_schema_infers_video_and_its_two_inputs(tmp_path):
    df = pd.DataFrame({"v": ["a.mp4", "b.webm", "c.MKV", None], "y": [0, 1, 0, 1]})
    schema = infer_schema(df, "y")
    assert schema.columns == {"v": Modality.VIDEO}
    assert schema.inputs == {"v:frames": Modality.VIDEO, "v:sound": Modality.AUDIO}
    only = infer_schema(df, "y", ignore=["v:sound"])  # one part of a video left out
    assert only.inputs == {"v:frames": Modality.VIDEO}
    forced = infer_schema(pd.DataFrame({"v": ["x.bin"], "y": [0]}), "y", {"v": Modality.VIDEO})
    assert forced.columns["v"] is Modality.VIDEO


# ---- encoders and augmentation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("temporal", ["mean", "gru", "transformer"])
def test_temporal_models(temporal, one_torch_thread):
    from polymodal.encoders import build_encoder

    torch.manual_seed(0)
    spec = {"channels": 3, "size": 16, "frames": 5, "mean": [0.5] * 3, "std": [0.25] * 3, "temporal": temporal}
    enc = build_encoder(Modality.VIDEO, spec, 16, tokens=True).eval()
    x = torch.randint(0, 256, (3, 5, 3, 16, 16), dtype=torch.uint8)
    tokens = enc.forward_tokens(x)
    assert enc(x).shape == (3, 16) and tokens.tokens.shape == (3, 5, 16) and tokens.mask.all()
    torch.testing.assert_close(tokens.pooled, enc(x))
    torch.testing.assert_close(enc(x.float() / 255.0), enc(x))  # augmented floats in [0, 1] read like uint8
    reversed_ = enc(x.flip(1))
    if temporal == "mean":  # order-blind
        torch.testing.assert_close(reversed_, enc(x))
    else:
        assert not torch.allclose(reversed_, enc(x), atol=1e-4)


def test_clip_augmentation_keeps_order_and_treats_a_clip_alike(one_torch_thread):
    from polymodal.preprocess.video import ClipAugment

    torch.manual_seed(0)
    t = 8
    x = torch.zeros(64, t, 3, 16, 16)
    x[:, :, 0] = (torch.arange(t, dtype=torch.float32) / t)[None, :, None, None]  # channel 0 = frame index / t
    out = ClipAugment(jitter=0.5)(x)
    order = (out[:, :, 0, 8, 8] * t).round()
    assert (order.diff(dim=1) >= -1).all()  # brightness changes a clip alike, so the order survives
    assert (out[:, :, 1] == out[:, :1, 1]).all()  # the other channels: one shift and brightness per clip
    plain = ClipAugment(jitter=0.0)(x)
    assert not torch.equal(out, plain)


# ---- every verb --------------------------------------------------------------------------------------------------
def write_table(folder, n: int, seed: int) -> pd.DataFrame:
    """label = brightness of the clip's frames (dark/bright) XOR the pitch of its sound (low/high): neither part
    alone is above chance. Other kinds beside it, and empty cells and silent clips."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "v").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2)), int(rng.integers(2))
        silent = i % 9 == 4
        name = f"v/{seed}_{i}.mp4"
        write_clip(folder / name, n=6, fps=6, sound=not silent, sr=8000, level=30 if a else 200,
                   tone=300.0 if b else 1200.0)  # fmt: skip
        Image.new("RGB", (8, 8), (int(rng.integers(256)),) * 3).save(folder / "v" / f"{seed}_{i}.png")
        rows.append({
            "clip": None if i % 11 == 5 else name, "photo": f"v/{seed}_{i}.png",
            "note": " ".join(rng.choice(["a", "b", "c", "d"], 3)) if i % 7 else None,
            "x": float(rng.normal()), "kind": str(rng.choice(["p", "q"])),
            "y": "yes" if a ^ b else "no",
        })  # fmt: skip
    return pd.DataFrame(rows)


FAST = dict(
    preprocess={"image_size": 16, "sample_rate": 8000, "n_mels": 16, "n_mfcc": 8, "video_frames": 4},
    embed_dim=16, hidden=16, batch_size=16, max_epochs=2, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video")
    write_table(folder, 48, 1).to_csv(folder / "train.csv", index=False)
    write_table(folder, 16, 2).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def fitted(table, pinned_torch):
    from polymodal import MultimodalPredictor

    return MultimodalPredictor(label="y", fusion="attention", **FAST).fit(table / "train.csv")


def test_fit_predict_evaluate_save_load(fitted, table, tmp_path):
    from polymodal import MultimodalPredictor

    assert fitted.schema.columns["clip"] is Modality.VIDEO
    assert list(fitted.schema.inputs)[:2] == ["clip:frames", "clip:sound"]
    df = pd.read_csv(table / "test.csv")
    feats = fitted.engine.pipeline
    media, frozen, problems = feats.decode(df, table)
    assert not problems
    f = feats.features(df, media, frozen)
    j_frames, j_sound = f.input_names.index("clip:frames"), f.input_names.index("clip:sound")
    empty = df["clip"].isna().to_numpy()
    silent = np.array([i % 9 == 4 for i in range(len(df))])
    assert (f.present[:, j_frames] == ~empty).all()
    assert (f.present[:, j_sound] == (~empty & ~silent)).all()  # a silent clip: sound absent, frames present
    assert f.inputs["clip:frames"].shape == (16, 4, 3, 16, 16) and f.inputs["clip:frames"].dtype == np.uint8
    metrics = fitted.evaluate(table / "test.csv")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    before = fitted.predict_proba(table / "test.csv")
    fitted.save(tmp_path / "m")
    loaded = MultimodalPredictor.load(tmp_path / "m")
    pd.testing.assert_frame_equal(before, loaded.predict_proba(table / "test.csv"))
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["config"]["encoders"]["video"]["temporal"] == "gru"


@pytest.mark.parametrize("fusion", ["token_transformer", "late"])
def test_other_fusions_take_frames_and_sound(fusion, table, pinned_torch):
    from polymodal import MultimodalPredictor

    opts = FAST | {"max_epochs": 1}
    p = MultimodalPredictor(label="y", fusion=fusion, ignore=["photo", "note"], **opts,
                            **{"encoders.video.temporal": "transformer"})  # fmt: skip
    p.fit(table / "train.csv")
    assert len(p.predict(table / "test.csv")) == 16


def test_video_learns_what_needs_frames_and_sound(tmp_path, pinned_torch):
    """brightness XOR pitch: the fused model learns it (each part alone cannot)."""
    from polymodal import MultimodalPredictor

    write_table(tmp_path, 96, 3).to_csv(tmp_path / "t.csv", index=False)
    p = MultimodalPredictor(label="y", fusion="early", ignore=["photo", "note", "x", "kind"],
                            **FAST | {"max_epochs": 30, "patience": 30, "lr": 3e-3})  # fmt: skip
    p.fit(tmp_path / "t.csv")
    assert p.evaluate(tmp_path / "t.csv")["accuracy"] >= 0.8


def test_compare_entries_and_report(table, tmp_path, pinned_torch):
    import polymodal
    from polymodal.data.io import read_table
    from polymodal.evaluation.report import model_report
    from polymodal.predictor import MultimodalPredictor

    summary = polymodal.compare(table / "train.csv", "y", tmp_path / "cmp", test=table / "test.csv",
                                fusions="early", seeds=1, noise_levels=1, permutations=1, report=False,
                                ignore=["photo", "note", "x", "kind"], **FAST | {"max_epochs": 1})  # fmt: skip
    names = [r["entry"] for r in summary["results"]]
    assert names == ["clip:frames only", "clip:sound only", "early", "early order-blind"]
    blind = MultimodalPredictor.load(tmp_path / "cmp" / "models" / "early_order-blind" / "seed0")
    assert blind.config_.encoders.video.temporal == "mean"
    frames_only = MultimodalPredictor.load(tmp_path / "cmp" / "models" / "clip_frames_only" / "seed0")
    assert list(frames_only.schema.inputs) == ["clip:frames"]
    html = model_report(blind.engine, table / "test.csv", noise_levels=1, permutations=1)
    assert html.count('alt="frames"') == 5 and "no sound track" in html  # row 5: no clip
    assert read_table(table / "test.csv")[0].shape[0] == 16


def test_export_takes_frame_and_sound_tensors(fitted, table, tmp_path):
    from polymodal.optimize.export import export_onnx

    fitted.save(tmp_path / "m")
    export_onnx(tmp_path / "m", tmp_path / "m.onnx")
    import onnx

    names = [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input]
    assert any(n.endswith("clip_frames") for n in names) and any(n.endswith("clip_sound") for n in names)
    from polymodal import MultimodalPredictor

    onnx_model = MultimodalPredictor.load(tmp_path / "m.onnx", runtime="onnx")
    np.testing.assert_allclose(onnx_model.predict_proba(table / "test.csv").to_numpy(),
                               fitted.predict_proba(table / "test.csv").to_numpy(), atol=2e-4)  # fmt: skip


def test_streamed_fit(table, pinned_torch):
    from polymodal import MultimodalPredictor

    p = MultimodalPredictor(label="y", fusion="early", streaming="on", chunk_rows=16, num_workers=0,
                            ignore=["photo"], **FAST | {"max_epochs": 1})  # fmt: skip
    p.fit(table / "train.csv")
    assert p.schema.columns["clip"] is Modality.VIDEO
    assert len(p.predict(table / "test.csv")) == 16


def test_anonymize_blurs_frames_and_changes_the_voice(table, tmp_path):
    from polymodal.privacy.table import PrivacySettings, anonymize_table

    settings = PrivacySettings(modalities={"clip": "video"}, faces="blur", voice="mcadams", ner_model=None)
    out, report = anonymize_table(table / "test.csv", tmp_path / "anon", settings)
    assert report["columns"]["clip"]["modality"] == "video" and report["columns"]["clip"]["voice"] == "mcadams"
    df = pd.read_csv(out)
    src = pd.read_csv(table / "test.csv")
    i = int(np.flatnonzero(src["clip"].notna() & (np.arange(len(src)) % 9 != 4))[0])
    new, old = tmp_path / "anon" / df["clip"].iloc[i], table / src["clip"].iloc[i]
    assert new.exists() and new != old
    a, b = decode_video(old, 4, SIZE, 8000), decode_video(new, 4, SIZE, 8000)
    assert a.frames.shape == b.frames.shape and b.sound is not None
    assert len(b.sound) == pytest.approx(len(a.sound), abs=8000 * 0.15)
    assert not np.allclose(a.sound[: len(b.sound)], b.sound[: len(a.sound)], atol=1e-3)  # the voice changed
    assert df["clip"].isna().sum() == src["clip"].isna().sum()
