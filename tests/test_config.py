"""The config tree: one object behind keyword arguments, YAML files, CLI flags and the model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth
from typer.testing import CliRunner

from polymodal import MultimodalPredictor
from polymodal.cli import app
from polymodal.config import Config, ConfigError, build_config

FIXTURES = Path(__file__).parent / "fixtures"
QUICK = {**synth.FAST, "max_epochs": 2}


def test_flat_keywords_sections_and_dotted_paths_name_the_same_settings():
    a = build_config(label="y", fusion="early", lr=3e-3, embed_dim=32, text_encoder="minilm", freeze=False)
    b = build_config(
        {"data": {"label": "y"}, "fusion": {"name": "early"}, "encoders": {"embed_dim": 32}},
        **{"train.lr": 3e-3, "encoders.text.name": "minilm", "encoders.freeze": False},
    )
    assert a == b
    assert a.get("train.lr") == 3e-3 and a.get("encoders.text.name") == "minilm"
    assert a.diff() == {"data.label": "y", "fusion.name": "early", "train.lr": 3e-3, "encoders.embed_dim": 32,
                        "encoders.text.name": "minilm", "encoders.freeze": False}  # fmt: skip
    assert Config.from_dict(a.to_dict()) == a


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"train.learning_rate": 0.1}, "unknown setting 'train.learning_rate'; did you mean 'train.lr'?"),
        ({"fusion.nme": "early"}, "did you mean 'fusion.name'?"),
        ({"encoders.image.embed_dm": 8}, "did you mean 'encoders.image.embed_dim'?"),
        ({"lrr": 0.1}, "did you mean 'train.lr'?"),
        ({"train.lr": "fast"}, "train.lr must be float, not 'fast'"),
        ({"train.max_epochs": 2.5}, "train.max_epochs must be int, not 2.5"),
        ({"encoders.freeze": "yes"}, "encoders.freeze must be bool"),
        ({"preprocess.image_fit": "crop"}, "preprocess.image_fit must be one of ['squash', 'pad'], not 'crop'"),
        ({"train.lr.value": 1}, "train.lr is a setting, not a section"),
        ({"fusion": {"name": "attention", "options": {"head": 2}}}, "fusion.options.head of the attention fusion"),
        ({"fusion": "concat"}, "unknown fusion 'concat' (fusion.name)"),
        ({"data.valid_fraction": 1.5}, "data.valid_fraction must be between 0 and 1"),
        ({"train.time_limit": -5}, "train.time_limit must be a positive number, not -5.0"),
        ({"preprocess.pretrained": {}}, "preprocess.pretrained is set by polymodal itself"),
    ],
)  # fmt: skip
def test_an_unknown_key_or_a_wrong_type_names_the_key_and_the_closest_valid_one(settings, message):
    with pytest.raises(ConfigError) as e:
        MultimodalPredictor(label="y", **settings)
    assert message in str(e.value)


def test_a_predictor_needs_a_label():
    with pytest.raises(ConfigError, match="data.label is not set"):
        MultimodalPredictor(fusion="early")


def test_round_trip_kwargs_yaml_cli_model_folder_load(synth_split, tmp_path):
    """kwargs -> YAML -> `fit --config` with a flag and a --set on top -> config.json -> load: one tree."""
    train, test = synth_split
    p = MultimodalPredictor(
        label="y", fusion="attention", ignore=["clip", "score"], **QUICK,
        **{"encoders.image.embed_dim": 24, "fusion.options": {"heads": 2, "layers": 1}},
    )  # fmt: skip
    yaml_path = tmp_path / "cfg.yaml"
    p.config_.to_yaml(yaml_path)
    assert Config.from_yaml(yaml_path) == p.config_

    out = tmp_path / "m"
    r = CliRunner().invoke(
        app, ["fit", str(train), "-c", str(yaml_path), "-o", str(out), "--lr", "0.002", "--set", "train.seed=7"]
    )
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    expected = p.config_.copy()
    expected.train.lr, expected.train.seed = 0.002, 7
    assert Config.from_dict(saved["config"]) == expected
    loaded = MultimodalPredictor.load(out)
    assert loaded.config_ == expected
    # The per-modality size reached the network: the image encoder is 24 wide, the caption's 32.
    net = loaded.engine.net
    assert net.encoders[net.keys["image"]].dim == 24 and net.encoders[net.keys["caption"]].dim == 32
    assert net.fusion.encoder.layers[0].self_attn.num_heads == 2 and len(net.fusion.encoder.layers) == 1
    # The same tree fitted from Python gives the same model (the seed fixes everything).
    again = MultimodalPredictor(config=Config.from_dict(saved["config"])).fit(train)
    np.testing.assert_allclose(again.predict_proba(test).to_numpy(), loaded.predict_proba(test).to_numpy(), atol=1e-6)


def test_a_bad_setting_on_the_command_line_is_a_clear_error_and_writes_nothing(synth_split, tmp_path):
    train, _ = synth_split
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  lr: 0.01\n  epochs: 3\n")
    for args, message in [
        (["--set", "fusion.nam=early"], "did you mean 'fusion.name'?"),
        (["--set", "train.lr"], "--set takes PATH=VALUE"),
        (["-c", str(bad_yaml)], "unknown setting 'train.epochs'; did you mean 'train.max_epochs'?"),
    ]:
        r = CliRunner().invoke(app, ["fit", str(train), "-y", "y", "-o", str(tmp_path / "m"), *args])
        assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "m").exists()


def test_config_command_prints_the_checked_tree(tmp_path):
    r = CliRunner().invoke(app, ["config", "--set", "fusion.name=gmu", "--set", "encoders.text.name=minilm"])
    assert r.exit_code == 0, r.output
    cfg = Config.from_dict(__import__("yaml").safe_load(r.output))
    assert cfg.fusion.name == "gmu" and cfg.encoders.text.name == "minilm"
    r = CliRunner().invoke(app, ["config", "--paths"])
    assert "encoders.image.embed_dim\tint | None" in r.output and "train.lr\tfloat" in r.output


def test_a_model_folder_from_before_the_config_tree_still_loads(tmp_path):
    """tests/fixtures/model_v0_1 was written by polymodal 0.1.0 (flat config.json); its predictions stand."""
    folder = tmp_path / "old"
    shutil.copytree(FIXTURES / "model_v0_1", folder)
    assert "config" not in json.loads((folder / "config.json").read_text())
    p = MultimodalPredictor.load(folder)
    assert p.fusion == "gmu" and p.config_.encoders.embed_dim == 8 and p.config_.train.seed == 3
    assert p.config_.data.ignore == ["score"]
    df = synth.make_table(tmp_path, 40, seed=5)  # the table it was checked on (tests/fixtures/make_model_v0_1.py.txt)
    df.loc[3, "caption"] = ""
    df.loc[4, "image"] = ""
    df.loc[5, "price"] = None
    df.to_csv(tmp_path / "t.csv", index=False)
    expected = pd.read_csv(FIXTURES / "model_v0_1_proba.csv").to_numpy()
    np.testing.assert_allclose(p.predict_proba(tmp_path / "t.csv").head(8).to_numpy(), expected, atol=1e-5)
    p.save(tmp_path / "new")  # saved again, it is in today's format
    assert Config.from_dict(json.loads((tmp_path / "new" / "config.json").read_text())["config"]) == p.config_
