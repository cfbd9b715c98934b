"""Pretrained encoders of a video's frames (`encoders.video.frames`): an image encoder on every frame, frozen through
the feature cache (a second fit neither decodes nor encodes) or fine-tuned; VideoMAE and TimeSformer on the whole
clip (tiny random configs built here), their frame count and size checked against the preprocessing; and the
training-time clip augmentation (jitter stays in the clip, one picture transform per clip)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from video_clips import write_clip

from polymodal.data.schema import Modality

FAST = dict(
    preprocess={"image_size": 16, "sample_rate": 8000, "n_mels": 16, "n_mfcc": 8, "video_frames": 4},
    embed_dim=16, hidden=16, batch_size=16, max_epochs=1, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    """A tiny random ViT (16 x 16 pixels) saved as a Hugging Face folder, with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)  # fmt: skip
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def videomae(tmp_path_factory) -> str:
    from transformers import VideoMAEConfig, VideoMAEModel

    folder = tmp_path_factory.mktemp("videomae")
    torch.manual_seed(0)
    cfg = VideoMAEConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)  # fmt: skip
    VideoMAEModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def timesformer(tmp_path_factory) -> str:
    from transformers import TimesformerConfig, TimesformerModel

    folder = tmp_path_factory.mktemp("timesformer")
    torch.manual_seed(0)
    cfg = TimesformerConfig(image_size=16, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64)  # fmt: skip
    TimesformerModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """label = brightness of the clip's frames; an empty cell, a silent clip and other kinds beside."""
    folder = tmp_path_factory.mktemp("vp")
    (folder / "v").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        a = int(rng.integers(2))
        write_clip(folder / f"v/{i}.mp4", n=6, fps=6, sound=i % 7 != 3, sr=8000, level=30 if a else 200)
        rows.append({"clip": None if i == 5 else f"v/{i}.mp4", "x": float(rng.normal()), "y": "yes" if a else "no"})
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder


def fit(table, tmp_path, frames: str, **extra):
    from polymodal import MultimodalPredictor

    opts = FAST | extra
    p = MultimodalPredictor(label="y", fusion=opts.pop("fusion", "early"), cache_dir=tmp_path / "cache", **opts,
                            **{"encoders.video.frames": frames})  # fmt: skip
    return p.fit(table / "train.csv")


def features(p, table):
    df = pd.read_csv(table / "train.csv")
    media, frozen, problems = p.engine.pipeline.decode(df, table)
    assert not problems
    return p.engine.pipeline.features(df, media, frozen)


# ---- an image encoder on every frame -------------------------------------------------------------------------------
def test_frozen_image_encoder_per_frame_through_the_cache(vit, table, tmp_path, monkeypatch, pinned_torch):
    import polymodal.data.validate as validate
    import polymodal.data.video as video
    from polymodal import MultimodalPredictor
    from polymodal.encoders.video import VideoEncoder
    from polymodal.evaluation.report import model_report

    p = fit(table, tmp_path, vit, ignore=["clip:sound"])
    assert p.engine.preprocessor.config.pretrained["clip:frames"]["mode"] == "frozen"
    enc = p.engine.net.encoders[p.engine.net.keys["clip:frames"]]
    assert isinstance(enc, VideoEncoder) and enc.stage == "frozen" and enc.frames == 4
    stats = p.metrics_["feature_cache"]["clip:frames"]
    assert stats["misses"] == 23 and stats["encode_seconds"] > 0  # 23 clips, one empty cell
    feats = features(p, table)
    assert feats.inputs["clip:frames"].shape == (24, 4, 32)  # 4 frames of the ViT's 32-d pooled output each
    assert not feats.present[5, 0] and feats.present[:5, 0].all()

    calls, real = [], video.decode_video
    for module in (video, validate):  # the second fit decodes no video: its file bytes hash to cached vectors
        monkeypatch.setattr(module, "decode_video", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = fit(table, tmp_path, vit, ignore=["clip:sound"])
    stats = again.metrics_["feature_cache"]["clip:frames"]
    assert stats["misses"] == 0 and stats["hits"] == 23 and stats["encode_seconds"] == 0 and not calls
    before = again.predict_proba(table / "train.csv")
    again.save(tmp_path / "m")
    loaded = MultimodalPredictor.load(tmp_path / "m", cache_dir=tmp_path / "cache")
    pd.testing.assert_frame_equal(before, loaded.predict_proba(table / "train.csv"))
    # the report shows the frames the cache stood for, decoded again for the page (row 5: no clip)
    html = model_report(loaded.engine, table / "train.csv", noise_levels=1, permutations=1)
    assert html.count('alt="frames"') == 5 and html.count("<audio") == 4  # row 3: silent


def test_fine_tuned_image_encoder_per_frame_with_the_sound(vit, table, tmp_path, pinned_torch):
    from polymodal import MultimodalPredictor

    p = fit(
        table, tmp_path, vit, freeze=False, fusion="token_transformer", **{"encoders.video.temporal": "transformer"}
    )
    assert p.engine.preprocessor.config.pretrained["clip:frames"]["mode"] == "finetune"
    enc = p.engine.net.encoders[p.engine.net.keys["clip:frames"]]
    assert enc.stage == "finetune" and list(p.schema.inputs) == ["clip:frames", "clip:sound", "tabular:numeric"]
    x = torch.randint(0, 256, (2, 4, 3, 16, 16), dtype=torch.uint8)
    tokens = enc.eval().forward_tokens(x)
    assert tokens.tokens.shape == (2, 4, 16) and tokens.mask.all()
    before = p.predict_proba(table / "train.csv")
    p.save(tmp_path / "m")
    assert (tmp_path / "m" / "encoders" / p.engine.net.keys["clip:frames"] / "config.json").exists()
    loaded = MultimodalPredictor.load(tmp_path / "m")
    pd.testing.assert_frame_equal(before, loaded.predict_proba(table / "train.csv"))


def test_frames_need_an_image_encoder(table, tmp_path):
    from polymodal.errors import UserError

    with pytest.raises(UserError, match="'minilm' is not an image encoder"):
        fit(table, tmp_path, "minilm")


# ---- video models on the whole clip ----------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "steps"), [("videomae", 2), ("timesformer", 4)])
def test_video_models_give_pooled_and_token_outputs(model, steps, videomae, timesformer, one_torch_thread):
    from polymodal.encoders import build_encoder
    from polymodal.encoders.pretrained import resolve
    from polymodal.encoders.video_pretrained import VideoModel, build_frames, frames_kind

    ref = resolve(videomae if model == "videomae" else timesformer)
    assert frames_kind(ref) == model
    clip = build_frames(ref).eval()
    assert isinstance(clip, VideoModel) and clip.steps == steps
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 4, 3, 16, 16), dtype=torch.uint8)
    assert clip(x.float() / 255).shape == (3, steps, 32)
    spec = {"frames": steps, "pretrained": ref.to_dict(), "pixel": {"size": 16, "mean": [0.5] * 3, "std": [0.5] * 3},
            "temporal": "gru"}  # fmt: skip
    enc = build_encoder(Modality.VIDEO, spec, 16, tokens=True).eval()
    tokens = enc.forward_tokens(x)
    assert enc(x).shape == (3, 16) and tokens.tokens.shape == (3, steps, 16)
    torch.testing.assert_close(tokens.pooled, enc(x))
    # the backbone sees the clip: another clip, another embedding
    assert not torch.allclose(enc(x), enc(x.flip(0)), atol=1e-5)


def test_video_model_frozen_and_fine_tuned_in_a_fit(videomae, table, tmp_path, pinned_torch):
    frozen = fit(table, tmp_path, videomae, fusion="attention")
    st = frozen.engine.preprocessor.state["clip:frames"]
    assert frozen.engine.preprocessor.config.pretrained["clip:frames"]["video"] == "videomae" and st["steps"] == 2
    assert st["mean"] == [0.485, 0.456, 0.406]  # no processor file: VideoMAE's ImageNet statistics
    feats = features(frozen, table)
    assert feats.inputs["clip:frames"].shape == (24, 2, 32)
    tuned = fit(table, tmp_path, videomae, freeze=False, fusion="late")
    assert len(tuned.predict(table / "train.csv")) == 24


def test_video_model_frame_count_and_size_are_checked(videomae, table, tmp_path):
    from polymodal.config import ConfigError

    with pytest.raises(ConfigError, match=r"reads clips of 4 frames of 16 x 16 pixels, but preprocess.video_frames "
                                          r"is 8 .* set preprocess.video_frames=4"):  # fmt: skip
        fit(table, tmp_path, videomae, preprocess=FAST["preprocess"] | {"video_frames": 8})


# ---- augmentation --------------------------------------------------------------------------------------------------
def test_jitter_stays_within_the_clip_and_one_transform_per_clip(monkeypatch, one_torch_thread):
    import polymodal.preprocess.augment as augment
    from polymodal.preprocess.video import ClipAugment

    torch.manual_seed(0)
    b, t = 32, 8
    # frame i of clip c: a picture holding (c, i), so each output frame says where it came from
    x = torch.zeros(b, t, 3, 8, 8)
    x[:, :, 0] = (torch.arange(b)[:, None, None, None] / b).float()
    x[:, :, 1] = (torch.arange(t)[None, :, None, None] / t).float()
    monkeypatch.setattr(augment, "augment_images", lambda v, **_: v)  # jitter alone
    out = ClipAugment(jitter=0.5)(x)
    clip, frame = (out[:, :, 0, 4, 4] * b).round().long(), (out[:, :, 1, 4, 4] * t).round().long()
    assert (clip == torch.arange(b)[:, None]).all()  # never a frame of another clip
    assert (frame >= 0).all() and (frame < t).all() and ((frame - torch.arange(t)).abs() <= 1).all()
    assert (frame.diff(dim=1) >= 0).all() and (frame != torch.arange(t)).any()  # order kept, some moved
    monkeypatch.undo()
    still = torch.rand(b, 1, 3, 16, 16).expand(b, t, 3, 16, 16).contiguous()  # every frame of a clip alike
    out = ClipAugment(jitter=0.0)(still)
    assert not torch.allclose(out, still, atol=1e-3)  # augmented ...
    torch.testing.assert_close(out, out[:, :1].expand_as(out))  # ... with one shift and brightness per clip
