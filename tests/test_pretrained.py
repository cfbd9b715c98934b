"""Pretrained encoders, offline: tiny Hugging Face models built from a config in the test, and the packaged
MiniLM and EfficientNet-Lite0 defaults; the feature cache; frozen vs fine-tuned."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import synth
import torch

from polymodal import MultimodalPredictor
from polymodal.config import ConfigError
from polymodal.data.schema import Modality
from polymodal.encoders.pretrained import EncoderNotFound, build, resolve

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *synth.CATS, *synth.DOGS, *synth.FILLER]
QUICK = synth.FAST | {"max_epochs": 8, "patience": 4}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)  # fmt: skip
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    folder = tmp_path_factory.mktemp("tiny_w2v")
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2,
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)  # fmt: skip
    Wav2Vec2Model(cfg).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(folder)
    return folder


def test_each_tiny_hf_encoder_loads_by_path_and_embeds(tiny_bert, tiny_vit, tiny_wav2vec2):
    text = build(resolve(str(tiny_bert)), Modality.TEXT)
    assert text(torch.tensor([[2, 5, 9, 3, 0, 0]])).shape == (1, 32)
    image = build(resolve(str(tiny_vit)), Modality.IMAGE)
    assert image(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    assert image(torch.randn(2, 3, 16, 16), tokens=True).shape == (2, 5, 32)  # CLS + 4 patches
    audio = build(resolve(str(tiny_wav2vec2)), Modality.AUDIO)
    assert audio(torch.randn(2, 2000)).shape == (2, 32)


def test_packaged_minilm_and_efficientnet_embed():
    ref = resolve("minilm")
    text = build(ref, Modality.TEXT).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ref.path)
    ids = torch.tensor(tok(["a dog runs", "a puppy is running", "stock prices fell"], padding=True)["input_ids"])
    with torch.no_grad():
        e = torch.nn.functional.normalize(text(ids), dim=-1)
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2]  # real pretrained semantics, not random weights
    image = build(resolve("efficientnet-lite0"), Modality.IMAGE).eval()
    with torch.no_grad():
        assert image(torch.randn(1, 3, 224, 224)).shape == (1, 1280)


def test_unknown_hub_model_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotFound, match=r"'nobody/no-such-model'.*local-dir.*folder path"):
        resolve("nobody/no-such-model")


def frozen(tiny_bert, tmp_path, **kw):
    return MultimodalPredictor(label="y", fusion="early", ignore=["clip", "price", "shade", "score"],
                               text_encoder=str(tiny_bert), cache_dir=tmp_path / "cache", **(QUICK | kw))  # fmt: skip


def test_frozen_cache_hit_invalidation_and_corruption(tiny_bert, synth_split, tmp_path):
    train, test = synth_split
    p = frozen(tiny_bert, tmp_path).fit(train)
    n = len(pd.read_csv(train))
    assert p.metrics_["feature_cache"]["caption"]["misses"] == pd.read_csv(train)["caption"].nunique()
    assert p.config()["encoders"]["caption"]["kind"] == "frozen"
    # Second fit: every text comes from the cache.
    q = frozen(tiny_bert, tmp_path).fit(train)
    stats = q.metrics_["feature_cache"]["caption"]
    assert stats["misses"] == 0 and stats["hits"] == n
    # Predicting those rows with the saved and reloaded model reuses the embeddings fit computed.
    loaded = MultimodalPredictor.load(q.save(tmp_path / "m"), cache_dir=tmp_path / "cache")
    loaded.predict(train)
    assert loaded.engine.pipeline.extractor("caption").stats == {"hits": n, "misses": 0, "encode_seconds": 0.0}
    # A changed text is recomputed alone.
    df = pd.read_csv(train)
    df.loc[0, "caption"] = "a brand new caption about a dog"
    changed = train.parent / "changed.csv"
    df.to_csv(changed, index=False)
    assert frozen(tiny_bert, tmp_path).fit(changed).metrics_["feature_cache"]["caption"]["misses"] == 1
    # A corrupted shard is deleted and recomputed, not a crash.
    shards = list((tmp_path / "cache").rglob("shard-*.safetensors"))
    for s in shards:
        s.write_bytes(b"not a safetensors file")
    r = frozen(tiny_bert, tmp_path).fit(train)
    assert r.metrics_["feature_cache"]["caption"]["misses"] > 0
    assert r.evaluate(test)["accuracy"] > 0.4


def test_frozen_does_not_change_encoder_weights_and_round_trips(tiny_bert, synth_split, tmp_path):
    from safetensors.torch import load_file

    train, test = synth_split
    p = frozen(tiny_bert, tmp_path, max_epochs=2).fit(train)
    before = load_file(str(tiny_bert / "model.safetensors"))
    folder = p.save(tmp_path / "m")
    assert not any(k.startswith("encoders.") and "backbone" in k for k in load_file(str(folder / "model.safetensors")))
    q = MultimodalPredictor.load(folder)
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-6)
    after = load_file(str(tiny_bert / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finetune_changes_encoder_weights_and_saves_them(tiny_vit, synth_split, tmp_path):
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="early", ignore=["caption", "clip", "price", "shade", "score"],
                            image_encoder=str(tiny_vit), freeze=False, **(QUICK | {"max_epochs": 2}))  # fmt: skip
    from transformers import ViTModel

    original = ViTModel.from_pretrained(tiny_vit).state_dict()
    p.fit(train)
    tuned = p.engine.net.encoders[p.engine.net.keys["image"]].backbone.model.state_dict()
    assert any(not torch.equal(original[k], tuned[k]) for k in original)
    folder = p.save(tmp_path / "ft")
    assert (folder / "encoders" / p.engine.net.keys["image"] / "config.json").exists()
    q = MultimodalPredictor.load(folder)
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-5)


def test_finetune_top_layers_only(tiny_bert, synth_split):
    train, _ = synth_split
    p = MultimodalPredictor(label="y", fusion="late", ignore=["image", "clip", "price", "shade", "score"],
                            text_encoder=str(tiny_bert), freeze=False, finetune_layers=1,
                            **(QUICK | {"max_epochs": 1}))  # fmt: skip
    p.fit(train)
    bb = p.engine.net.encoders[p.engine.net.keys["caption"]].backbone.model
    trainable = {n for n, t in bb.named_parameters() if t.requires_grad}
    assert any(n.startswith("encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("encoder.layer.0.", "embeddings.")) for n in trainable)


def test_lora_trains_adapters_only(tiny_bert, synth_split, tmp_path):
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="early", ignore=["image", "clip", "price", "shade", "score"],
                            text_encoder=str(tiny_bert), freeze=False, lora=True,
                            **(QUICK | {"max_epochs": 1}))  # fmt: skip
    p.fit(train)
    bb = p.engine.net.encoders[p.engine.net.keys["caption"]].backbone.model
    trainable = [n for n, t in bb.named_parameters() if t.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    q = MultimodalPredictor.load(p.save(tmp_path / "lora"))
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-5)


def test_pretrained_audio_frozen(tiny_wav2vec2, synth_split, tmp_path):
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="attention", ignore=["price", "shade", "score"],
                            audio_encoder=str(tiny_wav2vec2), cache_dir=tmp_path / "c", **QUICK)  # fmt: skip
    p.fit(train)
    assert p.config()["encoders"]["clip"]["kind"] == "frozen"
    assert p.evaluate(test)["accuracy"] > 0.8  # image + text still solve it; audio rides along


def test_load_says_which_encoder_is_missing(tiny_bert, synth_split, tmp_path):
    import shutil

    train, _ = synth_split
    moved = tmp_path / "bert_copy"
    shutil.copytree(tiny_bert, moved)
    p = frozen(moved, tmp_path, max_epochs=1).fit(train)
    folder = p.save(tmp_path / "m")
    shutil.rmtree(moved)
    with pytest.raises(EncoderNotFound, match=r"column 'caption' needs the frozen encoder .*bert_copy"):
        MultimodalPredictor.load(folder)


def test_frozen_image_column_trains_with_default_augmentation(tiny_vit, synth_split, tmp_path):
    """Augmentation applies to pixels only: a frozen image column (embeddings) must not reach it."""
    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="early", ignore=["clip", "price", "shade", "score"],
                            image_encoder=str(tiny_vit), cache_dir=tmp_path / "c", **QUICK)  # fmt: skip
    assert p.train_config.augment
    p.fit(train)
    assert p.config()["encoders"]["image"]["kind"] == "frozen"
    assert p.evaluate(test)["accuracy"] > 0.4


def test_compare_measures_noise_on_frozen_inputs_once_for_every_seed(tiny_vit, synth_split, tmp_path):
    """Noise on a frozen image column: the files are decoded, noised and embedded again through the cache, on a
    fixed sample of test rows; the noisy embeddings are computed once and shared by the seeds and entries."""
    from polymodal.studies.compare import compare

    train, test = synth_split
    board = compare(train, "y", tmp_path / "cmp", test=test, fusions=["early"], seeds=2, noise_levels=2,
                    noise_rows=50, permutations=1, report=False, ignore=["clip", "price", "shade", "score"],
                    image_encoder=str(tiny_vit), cache_dir=tmp_path / "c", **QUICK)  # fmt: skip
    for r in board["results"]:
        rob = r["robustness"]
        if "image" in r["inputs"]:
            scores = rob["noise"]["image"]["scores"]
            assert len(scores) == 3 and all(0 <= x <= 1 for x in scores) and rob["noise_rows"] == 50
            assert rob["noise"]["image"]["relative_robustness"] is not None
    images = pd.concat([pd.read_csv(train), pd.read_csv(test)])["image"].nunique()
    # Every distinct picture once, plus 2 levels x 50 noisy copies: not once per seed or per entry.
    assert board["feature_cache"]["image"]["misses"] == images + 2 * 50


def test_cli_compare_with_a_frozen_text_encoder(tiny_bert, synth_split, tmp_path):
    import json

    from typer.testing import CliRunner

    from polymodal.cli import app

    train, test = synth_split
    out = tmp_path / "cmp"
    args = ["compare", str(train), "--label", "y", "-o", str(out), "--test", str(test), "--fusions", "early",
            "--seeds", "1", "--noise-levels", "1", "--noise-rows", "30", "--max-epochs", "2", "--image-size", "16",
            "--text-encoder", str(tiny_bert), "--cache-dir", str(tmp_path / "c"), "--accelerator", "cpu",
            *[a for c in ("clip", "price", "shade", "score") for a in ("--ignore", c)]]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["feature_cache"]["caption"]["misses"] > 0  # the frozen encoder ran, through the given cache
    fused = next(x for x in board["results"] if x["entry"] == "early")
    assert fused["robustness"]["noise"]["caption"]["scores"] is not None and fused["robustness"]["noise_rows"] == 30
    assert (out / "report.html").exists() and list((tmp_path / "c").rglob("shard-*.safetensors"))


def test_image_fit_pad_reaches_scratch_and_frozen_image_inputs(tiny_vit, synth_split, tmp_path):
    """A letterboxing model keeps letterboxing after save/load, and its frozen features live in their own cache."""
    import json

    train, test = synth_split
    preprocess = dict(synth.FAST["preprocess"], image_fit="pad")
    opts = dict(QUICK, max_epochs=1, preprocess=preprocess)
    scratch = MultimodalPredictor(label="y", fusion="early", ignore=["clip", "price", "shade", "score"], **opts)
    scratch.fit(train)
    loaded = MultimodalPredictor.load(scratch.save(tmp_path / "m"))
    assert loaded.engine.preprocessor.config.image_fit == "pad"
    np.testing.assert_allclose(loaded.predict_proba(test).to_numpy(), scratch.predict_proba(test).to_numpy(), atol=1e-6)
    frozen_p = MultimodalPredictor(label="y", fusion="early", ignore=["clip", "price", "shade", "score"],
                                   image_encoder=str(tiny_vit), cache_dir=tmp_path / "c", **opts)  # fmt: skip
    frozen_p.fit(train)
    assert frozen_p.engine.preprocessor.state["image"]["fit"] == "pad"
    namespaces = [json.loads(p.read_text()) for p in (tmp_path / "c").rglob("namespace.json")]
    assert [n["settings"].get("fit") for n in namespaces] == ["pad"]


def test_frozen_runtime_onnx_int8_from_the_config_tree(tiny_bert, synth_split, tmp_path):
    train, test = synth_split
    p = frozen(tiny_bert, tmp_path, max_epochs=2, **{"encoders.frozen_runtime": "onnx-int8"}).fit(train)
    assert p.engine.preprocessor.config.pretrained["caption"]["runtime"] == "onnx-int8"
    namespaces = [json.loads(f.read_text()) for f in (tmp_path / "cache").glob("*/namespace.json")]
    assert [n.get("runtime") for n in namespaces] == ["onnx-int8"]  # int8 embeddings: a cache of their own
    q = MultimodalPredictor.load(p.save(tmp_path / "m"), cache_dir=tmp_path / "cache")
    assert q.engine.pipeline.extractor("caption").runtime == "onnx-int8"
    np.testing.assert_allclose(q.predict_proba(test).to_numpy(), p.predict_proba(test).to_numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="frozen_runtime"):
        frozen(tiny_bert, tmp_path, **{"encoders.frozen_runtime": "tensorrt"})


def test_streamed_fit_runs_the_frozen_feature_pass_once(tiny_bert, synth_split, tmp_path):
    train, test = synth_split
    p = frozen(tiny_bert, tmp_path, max_epochs=2, streaming="on", chunk_rows=64).fit(train)
    n_texts = pd.read_csv(train)["caption"].nunique()
    stats = p.metrics_["feature_cache"]["caption"]
    assert stats["misses"] == n_texts  # the fitting pass embedded every text once; training read the cache
    assert p.engine.preprocessor.state["caption"]["dim"] == 32
    streamed = p.evaluate(test)
    p.config_.data.streaming = "off"
    assert p.evaluate(test)["accuracy"] == pytest.approx(streamed["accuracy"])


def test_frozen_encoders_export_inside_the_onnx_graph(tiny_bert, tiny_vit, synth_split, tmp_path):
    """Frozen pretrained text and image encoders are part of the exported graph: it matches PyTorch, and runs with
    the encoders' own folders and the feature cache gone (the tokenizer is saved beside the graph)."""
    import shutil

    from polymodal.optimize.export import export_model

    train, test = synth_split
    bert, vit = shutil.copytree(tiny_bert, tmp_path / "bert"), shutil.copytree(tiny_vit, tmp_path / "vit")
    settings = QUICK | {"max_epochs": 2}
    p = MultimodalPredictor(label="y", fusion="gmu", ignore=["price", "score"], text_encoder=str(bert),
                            image_encoder=str(vit), cache_dir=tmp_path / "cache", **settings)  # fmt: skip
    p.fit(train).save(tmp_path / "m")
    graph = export_model(tmp_path / "m", tmp_path / "m.onnx")
    hidden = test.parent / "no_captions.csv"  # beside the test table: its relative file paths still resolve
    pd.read_csv(test).assign(caption=None).to_csv(hidden, index=False)
    torch_p = MultimodalPredictor.load(tmp_path / "m").predict_proba(test).to_numpy()
    torch_no_text = MultimodalPredictor.load(tmp_path / "m").predict_proba(hidden).to_numpy()
    for folder in (bert, vit, tmp_path / "cache"):
        shutil.rmtree(folder)
    q = MultimodalPredictor.load(graph, runtime="onnx")
    assert q.engine.pipeline.frozen_inputs == []  # nothing embedded outside the graph
    onnx_p = q.predict_proba(test).to_numpy()
    assert onnx_p.shape == torch_p.shape and np.abs(onnx_p - torch_p).max() <= 1e-4
    # A missing text is hidden by the mask, as in PyTorch, and changes the answer.
    no_text = q.predict_proba(hidden).to_numpy()
    assert np.abs(no_text - torch_no_text).max() <= 1e-4 and np.abs(no_text - torch_p).max() > 1e-3
    assert (tmp_path / "m.tools").is_dir() and not (tmp_path / "cache").exists()


def test_finetuned_encoder_exports_inside_the_onnx_graph(tiny_bert, synth_split, tmp_path):
    """A fine-tuned text encoder is traced into the graph with the network: ONNX matches PyTorch."""
    from polymodal.optimize.export import export_model

    train, test = synth_split
    p = MultimodalPredictor(label="y", fusion="early", ignore=["image", "clip", "price", "score"], freeze=False,
                            text_encoder=str(tiny_bert), **(QUICK | {"max_epochs": 1}))  # fmt: skip
    p.fit(train).save(tmp_path / "m")
    graph = export_model(tmp_path / "m", tmp_path / "m.onnx")
    torch_p = MultimodalPredictor.load(tmp_path / "m").predict_proba(test).to_numpy()
    onnx_p = MultimodalPredictor.load(graph, runtime="onnx").predict_proba(test).to_numpy()
    assert onnx_p.shape == torch_p.shape and np.abs(onnx_p - torch_p).max() <= 1e-4


def test_frozen_token_outputs_are_cached_for_token_fusions(tiny_bert, tiny_vit, synth_split, tmp_path):
    """A token-level fusion over frozen encoders reads their cached token outputs (fp16, the real tokens of each
    text, an image's patch grid), not one pooled token; padding never changes the answer; save/load and the ONNX
    export keep it; the int8 runtime, which pools, is refused for it."""
    from safetensors import safe_open

    from polymodal.optimize.export import export_model

    train, test = synth_split
    settings = QUICK | {"max_epochs": 2}
    p = MultimodalPredictor(label="y", fusion="token_transformer", ignore=["clip", "price", "shade", "score"],
                            text_encoder=str(tiny_bert), image_encoder=str(tiny_vit), cache_dir=tmp_path / "cache",
                            **settings).fit(train)  # fmt: skip
    pretrained = p.engine.preprocessor.config.pretrained
    assert pretrained["caption"]["tokens"] and pretrained["image"]["tokens"]
    lengths, dtypes = set(), set()
    for shard in (tmp_path / "cache").rglob("shard-*.safetensors"):
        with safe_open(str(shard), "np") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                lengths.add(t.shape[0])
                dtypes.add(str(t.dtype))
    # fp16; a caption's real tokens (CLS, its 5 words, SEP), an image's CLS token and 2 x 2 patches
    assert dtypes == {"float16"} and lengths == {7, 5}

    df = pd.read_csv(test).head(6)
    feats, _ = p.engine.features(df, test.parent)
    assert feats.inputs["caption"].dtype == np.float16 and feats.inputs["caption"].ndim == 3
    net = p.engine.net
    text = net.encoders[net.keys["caption"]].forward_tokens(torch.from_numpy(feats.inputs["caption"]))
    image = net.encoders[net.keys["image"]].forward_tokens(torch.from_numpy(feats.inputs["image"]))
    assert image.grid == (2, 2) and image.tokens.shape[1] == 4  # the patch grid, CLS dropped
    assert (text.mask.sum(1) > 2).all()  # several real word tokens per text, not one pooled token
    # Extra zero padding (more text positions) leaves every output unchanged.
    padded = np.concatenate([feats.inputs["caption"], np.zeros_like(feats.inputs["caption"][:, :7])], axis=1)
    wider = type(feats)(dict(feats.inputs, caption=padded), feats.present, feats.input_names)
    assert np.abs(p.engine.outputs(wider) - p.engine.outputs(feats)).max() <= 1e-6

    p.save(tmp_path / "m")
    q = MultimodalPredictor.load(tmp_path / "m")
    torch_p = q.predict_proba(test).to_numpy()
    assert np.abs(torch_p - p.predict_proba(test).to_numpy()).max() <= 1e-6
    graph = export_model(tmp_path / "m", tmp_path / "m.onnx")
    onnx_p = MultimodalPredictor.load(graph, runtime="onnx").predict_proba(test).to_numpy()
    assert np.abs(onnx_p - torch_p).max() <= 1e-3  # the graph rounds its tokens through fp16 as the cache does

    with pytest.raises(ConfigError, match=r"frozen_runtime=onnx-int8 gives pooled embeddings only.*frozen_tokens"):
        MultimodalPredictor(label="y", fusion="relation", ignore=["clip", "price", "shade", "score", "image"],
                            text_encoder=str(tiny_bert), **settings,
                            **{"encoders.frozen_runtime": "onnx-int8"}).fit(train)  # fmt: skip
