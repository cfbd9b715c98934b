"""`encoders.readout`: a video's frames and its sound track each read through a fitted text model of that input
(frozen), so a label that only says whether the two agree is learnt from their word distributions. The saved model
needs the text models' folders no more; export, compare and the mistakes are covered."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_video import FAST
from video_clips import write_clip

from polymodal.errors import UserError

WORDS = ("one", "two")
BRANCH = FAST | {"problem_type": "text", "decoder.name": "gru", "decoder.dim": 16, "decoder.max_length": 3,
                 "max_epochs": 12, "lr": 1e-2, "patience": 20}  # fmt: skip


def write_table(folder, n: int, seed: int) -> pd.DataFrame:
    """The frames are dark or bright ("one" / "two"), the sound low or high ("one" / "two"); y: do they say the same
    word? Neither input alone is above chance. A row without a clip, silent clips."""
    rng = np.random.default_rng(seed)
    (folder / "v").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a, b = int(rng.integers(2)), int(rng.integers(2))
        silent = i % 13 == 6
        name = f"v/{seed}_{i}.mp4"
        write_clip(folder / name, n=6, fps=6, sound=not silent, sr=8000, level=30 if a else 200,
                   tone=300.0 if b else 1200.0)  # fmt: skip
        rows.append({"clip": None if i % 17 == 9 else name, "shown": WORDS[a], "spoken": None if silent else WORDS[b],
                     "y": "same" if a == b else "other"})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def branches(tmp_path_factory, pinned_torch):
    from polymodal import MultimodalPredictor

    folder = tmp_path_factory.mktemp("readout")
    write_table(folder, 64, 1).to_csv(folder / "train.csv", index=False)
    write_table(folder, 24, 2).to_csv(folder / "test.csv", index=False)
    fits = {"clip:frames": ("shown", ["clip:sound", "spoken", "y"]),
            "clip:sound": ("spoken", ["clip:frames", "shown", "y"])}  # fmt: skip
    for name, (caption, ignore) in fits.items():
        p = MultimodalPredictor(label=caption, ignore=ignore, on_bad_rows="skip", **BRANCH).fit(folder / "train.csv")
        assert p.evaluate(folder / "test.csv")["exact_match"] >= 0.9, (name, p.metrics_)
        p.save(folder / caption)
    return folder


def readout_settings(folder, **more):
    return {"encoders.readout": {"clip:frames": str(folder / "shown"), "clip:sound": str(folder / "spoken")},
            "encoders.readout_steps": 2, **more}  # fmt: skip


@pytest.fixture(scope="module")
def fused(branches):
    from polymodal import MultimodalPredictor

    opts = FAST | {"max_epochs": 40, "lr": 3e-3, "patience": 40, "ignore": ["shown", "spoken"]}
    return MultimodalPredictor(label="y", fusion="early", **opts, **readout_settings(branches)).fit(
        branches / "train.csv"
    )


def test_the_agreement_is_learnt_and_the_saved_model_stands_alone(branches, fused, tmp_path):
    from polymodal import MultimodalPredictor
    from polymodal.optimize.export import export_onnx

    assert fused.evaluate(branches / "test.csv")["accuracy"] >= 0.85, fused.metrics_
    # Each readout input is prepared as its text model's fit prepared it (sound length, statistics), not refitted.
    for name, caption in (("clip:frames", "shown"), ("clip:sound", "spoken")):
        folder_state = json.loads((branches / caption / "preprocess.json").read_text())["state"][name]
        assert fused.engine.preprocessor.state[name] == folder_state
    net = fused.engine.net
    for name in ("clip:frames", "clip:sound"):
        readout = net.encoders[net.keys[name]]
        assert type(readout).__name__ == "Readout" and not any(q.requires_grad for q in readout.parameters())

    # Saved, then the text models' folders are moved away: the model carries them.
    fused.save(tmp_path / "m")
    want = fused.predict_proba(branches / "test.csv").to_numpy()
    away = tmp_path / "away"
    away.mkdir()
    for caption in ("shown", "spoken"):
        shutil.move(branches / caption, away / caption)
    try:
        loaded = MultimodalPredictor.load(tmp_path / "m")
        np.testing.assert_allclose(loaded.predict_proba(branches / "test.csv").to_numpy(), want, atol=1e-6)
        export_onnx(tmp_path / "m", tmp_path / "m.onnx")
        graph = MultimodalPredictor.load(tmp_path / "m.onnx", runtime="onnx")
        np.testing.assert_allclose(graph.predict_proba(branches / "test.csv").to_numpy(), want, atol=2e-4)
    finally:
        for caption in ("shown", "spoken"):
            shutil.move(away / caption, branches / caption)


def test_tokens_are_word_distributions_by_step(branches, fused):
    """One token per step, the step's probabilities over the shared words in the step's own block; the two text
    models' vocabularies are aligned by word; after <eos> a step is padding; order-blind: one block."""
    from polymodal.model.folder import build_readout

    config = json.loads((branches / "shown" / "config.json").read_text())
    net = fused.engine.net
    specs = fused.input_specs_
    words = specs["clip:frames"]["readout"]["words"]
    assert words == specs["clip:sound"]["readout"]["words"] and words[4:] == sorted(WORDS)
    assert specs["clip:frames"]["readout"]["config"] == config["config"]
    readout = net.encoders[net.keys["clip:frames"]]
    assert readout.dim == 2 * len(words)

    df = pd.read_csv(branches / "test.csv").dropna(subset=["clip"]).reset_index(drop=True)
    pipeline = fused.engine.pipeline
    media, frozen, _ = pipeline.decode(df, branches)
    x = torch.from_numpy(pipeline.features(df, media, frozen).inputs["clip:frames"])
    p_steps, real = readout.distributions(x)
    assert torch.allclose(p_steps.sum(-1), torch.ones_like(p_steps[..., 0]), atol=1e-5)
    said = [words[i] for i in p_steps[:, 0].argmax(-1).tolist()]
    assert np.mean(np.array(said) == df["shown"].to_numpy()) >= 0.9  # the first step says the shown word
    first = p_steps[:, 0].clone()
    first[:, [0, 1, 3]] = -1  # what greedy decoding never picks: <pad>, <bos>, <unk>
    # A step is real up to the one that says <eos> (id 2); after it, padding.
    assert real[:, 0].all() and torch.equal(real[:, 1], first.argmax(-1) != 2)
    assert (p_steps[:, 1].argmax(-1) == 2).float().mean() >= 0.9  # one word, then <eos>
    t = readout.forward_tokens(x)
    block = t.tokens.reshape(len(df), 2, 2, len(words))
    assert torch.equal(block[:, 0, 1], torch.zeros_like(block[:, 0, 1]))  # step 0 only in block 0
    kept = p_steps * real[..., None]
    assert torch.allclose(t.pooled.reshape(len(df), 2, -1), kept)  # the steps side by side

    order_blind = build_readout(specs["clip:frames"]["readout"], temporal="mean")
    order_blind.net.load_state_dict(readout.net.state_dict())
    assert order_blind.dim == len(words)
    assert torch.allclose(order_blind.forward_tokens(x).pooled, kept.sum(1))  # the bag of words


def test_compare_entries_keep_their_own_readouts(branches, tmp_path, monkeypatch):
    import polymodal
    from polymodal.model.readout import Readout

    decoded = []
    original = Readout._decode
    monkeypatch.setattr(Readout, "_decode", lambda self, x: decoded.append(len(x)) or original(self, x))
    board = polymodal.compare(
        branches / "train.csv", "y", tmp_path / "cmp", test=branches / "test.csv", fusions="relation", seeds=1,
        noise_levels=0, permutations=0, report=False, ignore=["shown", "spoken"],
        **FAST | {"max_epochs": 2}, **readout_settings(branches),
    )  # fmt: skip
    # compare's cost of a frozen pass counts the readouts' decoding: the training rows in one batch, before any
    # entry's fit (whose training batches hold batch_size rows)
    assert board["encoder_pass_seconds"] > 0 and decoded[0] > FAST["batch_size"], decoded[:8]
    entries = {r["entry"] for r in board["results"]}
    assert {"clip:frames only", "clip:sound only", "relation", "relation order-blind"} <= entries, entries
    models = tmp_path / "cmp" / "models"
    for slug, inputs in (("clip_sound_only", ["clip:sound"]), ("relation", ["clip:frames", "clip:sound"])):
        readouts = json.loads((models / slug / "seed0" / "config.json").read_text())["config"]["encoders"]["readout"]
        assert sorted(readouts) == inputs
    # The order-blind entry: the frames' steps in one block (a bag of words), the sound track's in order.
    from polymodal import MultimodalPredictor

    net = MultimodalPredictor.load(models / "relation_order-blind" / "seed0").engine.net
    assert not net.encoders[net.keys["clip:frames"]].ordered and net.encoders[net.keys["clip:sound"]].ordered


def test_mistakes_are_named(branches):
    from polymodal import MultimodalPredictor

    opts = FAST | {"max_epochs": 1, "ignore": ["shown", "spoken"]}
    frames = str(branches / "shown")
    cases = [
        ({"encoders.readout": {"clip:frames": str(branches / "nowhere")}}, "not a fitted model folder"),
        ({"encoders.readout": {"clip:sound": frames}}, "must read 'clip:sound' alone"),
        ({"encoders.readout": {"clip:frames": frames}, "encoders.init_from": {"clip:frames": frames}},
         "both name"),
        ({"encoders.readout": {"clip:frames": frames}, "preprocess": FAST["preprocess"] | {"image_size": 8}},
         "prepared otherwise"),
    ]  # fmt: skip
    classifier = MultimodalPredictor(label="shown", ignore=["clip:sound", "spoken", "y"], **FAST | {"max_epochs": 1})
    classifier.fit(branches / "train.csv").save(branches / "classifier")
    cases.append(({"encoders.readout": {"clip:frames": str(branches / "classifier")}}, "not a text model"))
    ctc_settings = BRANCH | {"max_epochs": 1, "decoder.name": "ctc", "decoder.memory": "tokens"}
    ctc = MultimodalPredictor(label="spoken", ignore=["clip:frames", "shown", "y"], on_bad_rows="skip", **ctc_settings)
    ctc.fit(branches / "train.csv").save(branches / "ctc")
    cases.append(({"encoders.readout": {"clip:sound": str(branches / "ctc")}}, "decodes step by step"))
    from polymodal.optimize.compress import compress

    compress(branches / "shown", branches / "shown_int8", quantize="int8")
    cases.append(({"encoders.readout": {"clip:frames": str(branches / "shown_int8")}}, "int8 model; read out its"))
    for settings, words in cases:
        with pytest.raises(UserError, match=words):
            MultimodalPredictor(label="y", **(opts | settings)).fit(branches / "train.csv")


def test_a_readout_over_a_frozen_encoders_tokens(branches, tmp_path):
    """The text model read a frozen pretrained encoder's cached tokens: a pooled fusion's fit caches tokens too, so
    the input is prepared as the readout needs it, from the folder alone (no encoder setting repeated)."""
    from polymodal import MultimodalPredictor

    frozen = dict(audio_encoder="speech-embedding", cache_dir=tmp_path / "cache")
    text = MultimodalPredictor(label="spoken", ignore=["clip:frames", "shown", "y"], on_bad_rows="skip",
                               **BRANCH | {"max_epochs": 2}, **frozen)  # fmt: skip
    text.fit(branches / "train.csv").save(tmp_path / "spoken")
    assert text.input_specs_ is None and text.engine.preprocessor.input_specs()["clip:sound"]["sequence"]
    p = MultimodalPredictor(label="y", fusion="early", ignore=["clip:frames", "shown", "spoken"],
                            **FAST | {"max_epochs": 1}, cache_dir=tmp_path / "cache",
                            **{"encoders.readout": {"clip:sound": str(tmp_path / "spoken")}})  # fmt: skip
    p.fit(branches / "train.csv")
    net = p.engine.net
    assert type(net.encoders[net.keys["clip:sound"]]).__name__ == "Readout"
    assert p.input_specs_["clip:sound"]["readout"]["input_specs"]["clip:sound"]["sequence"]
    assert p.engine.preprocessor.state["clip:sound"] == text.engine.preprocessor.state["clip:sound"]
    assert any((tmp_path / "cache").rglob("shard-*.safetensors"))  # the tokens came through the feature cache
    assert len(p.predict(branches / "test.csv")) == 24


def test_a_readout_over_a_fine_tuned_encoder_takes_the_raw_input(branches, tmp_path):
    """The text model fine-tuned its pretrained encoder: the fused fit prepares the input as that fit did (the
    waveform, no cache), though this fit names no encoder and keeps the default encoders.freeze."""
    from polymodal import MultimodalPredictor

    fine_tuned = dict(audio_encoder="speech-embedding", freeze=False)
    text = MultimodalPredictor(label="spoken", ignore=["clip:frames", "shown", "y"], on_bad_rows="skip",
                               **BRANCH | {"max_epochs": 1}, **fine_tuned)  # fmt: skip
    text.fit(branches / "train.csv").save(tmp_path / "spoken")
    assert "pretrained" in text.engine.preprocessor.input_specs()["clip:sound"]
    p = MultimodalPredictor(label="y", fusion="early", ignore=["clip:frames", "shown", "spoken"],
                            **FAST | {"max_epochs": 1}, cache_dir=tmp_path / "cache",
                            **{"encoders.readout": {"clip:sound": str(tmp_path / "spoken")}})  # fmt: skip
    p.fit(branches / "train.csv")
    assert p.engine.preprocessor.config.pretrained["clip:sound"]["mode"] == "finetune"
    assert "pretrained" in p.input_specs_["clip:sound"]["readout"]["input_specs"]["clip:sound"]
    assert not any((tmp_path / "cache").rglob("shard-*.safetensors"))  # nothing cached: it reads the waveform
    assert p.predict(branches / "test.csv").shape == (24,)


def test_readout_inputs_are_not_augmented(branches, monkeypatch):
    """Training-time augmentation is for encoders that learn: a frozen readout's input is read as at test time."""
    import polymodal.training as training
    from polymodal import MultimodalPredictor

    seen, real = [], training.train

    def spy(net, task, inputs, train_rows, valid_rows, cfg, callbacks, warps, keep):
        seen.append(set(warps))
        return real(net, task, inputs, train_rows, valid_rows, cfg, callbacks, warps, keep)

    monkeypatch.setattr(training, "train", spy)
    opts = FAST | {"max_epochs": 1, "ignore": ["shown", "spoken"], "augment": True}
    MultimodalPredictor(label="y", fusion="early", **opts).fit(branches / "train.csv")
    MultimodalPredictor(label="y", fusion="early", **opts, **readout_settings(branches)).fit(branches / "train.csv")
    assert "clip:frames" in seen[0] and not seen[1] & {"clip:frames", "clip:sound"}, seen


def test_a_row_is_decoded_once_and_its_memoized_readout_is_the_same(branches, fused, monkeypatch):
    """The readout is frozen and its input never augmented: in training, each row's distributions are memoized by
    content, so epochs after the first decode nothing, and a memoized row reads exactly as a fresh decoding. In
    eval mode (validation, prediction, a server) nothing is kept."""
    net = fused.engine.net
    df = pd.read_csv(branches / "test.csv").dropna(subset=["clip"]).reset_index(drop=True)
    pipeline = fused.engine.pipeline
    media, frozen, _ = pipeline.decode(df, branches)
    x = torch.from_numpy(pipeline.features(df, media, frozen).inputs["clip:sound"])
    x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # the synthetic clips repeat
    readout = net.encoders[net.keys["clip:sound"]]
    readout._memo.clear()
    readout.eval()
    fresh_p, fresh_real = readout.distributions(x)
    assert not readout._memo  # eval mode: nothing kept
    readout.train()
    decoded = []
    original = readout._decode
    monkeypatch.setattr(readout, "_decode", lambda rows: decoded.append(len(rows)) or original(rows))
    twice = torch.cat([x[:5], x[:5], x[5:]])  # a row twice in one batch: decoded once
    p, real = readout.distributions(twice)
    assert decoded == [len(x)]
    torch.testing.assert_close(p[:5], p[5:10])
    torch.testing.assert_close(p[5:], fresh_p, atol=1e-6, rtol=0)
    assert torch.equal(real[5:], fresh_real)
    again, _ = readout.distributions(x.flip(0))  # another epoch, another order: nothing decoded
    assert decoded == [len(x)] and torch.equal(again, p[5:].flip(0))
    changed = x.clone()
    changed[0] += 0.5  # another clip: decoded
    readout.distributions(changed[:1])
    assert decoded == [len(x), 1]
    readout.eval()
