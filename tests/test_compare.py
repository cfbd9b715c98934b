"""`polymodal compare`: the leaderboard over seeds, resuming an interrupted run, sharing preprocessing with
`fit`, and the noise used for robustness."""

import json

import numpy as np
import pandas as pd
import pytest
import synth
from scipy import stats
from typer.testing import CliRunner

from polymodal import MultimodalPredictor
from polymodal.cli import app
from polymodal.evaluation.robustness import noise_audio, noise_images, noise_text, relative_robustness
from polymodal.studies import compare as cmp
from polymodal.studies import entries, leaderboard, runs

IGNORE = ["clip", "price", "shade", "score"]
OPTIONS = dict(synth.FAST, max_epochs=6, ignore=IGNORE, modality_dropout=0.2)
FUSIONS = ["early", "ensemble-stack"]
N_FITS = 2 * 3  # two seeds x (two unimodal baselines + early fusion); the ensemble trains nothing


def _run(train, test, out, **kwargs):
    return cmp.compare(train, "y", out, test=test, fusions=FUSIONS, seeds=2, noise_levels=2, permutations=1,
                       report=False, **OPTIONS, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def resumed(synth_split, tmp_path_factory):
    """A compare interrupted in its third fit, then run again to the end, then once more.

    Returns (folder, fits of the second run, its leaderboard, fits of the third run, its leaderboard)."""
    train, test = synth_split
    out = tmp_path_factory.mktemp("cmp_resume")
    real_fit = entries.fit_on_features
    calls = {"n": 0, "stop_at": 3}

    def fit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(runs, "fit_on_features", fit)  # where Run.fit_entry looks it up
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(train, test, out)
        assert not (out / "leaderboard.json").exists()
        finished = sorted(p.parent.parent.name for p in out.glob("models/*/seed*/compare_result.json"))
        assert finished == ["caption_only", "image_only"]
        calls.update(n=0, stop_at=-1)
        second = _run(train, test, out)
        fits_second = calls["n"]
        calls["n"] = 0
        third = _run(train, test, out)
        fits_third = calls["n"]
    finally:
        mp.undo()
    return out, fits_second, second, fits_third, third


def test_interrupted_compare_resumes_without_redoing_finished_entries(resumed):
    out, fits_second, second, fits_third, third = resumed
    assert fits_second == N_FITS - 2  # the two baselines that finished before the interruption were kept
    assert second["entries_skipped"] == 2 and second["entries_run"] == 8 - 2
    assert fits_third == 0 and third["entries_skipped"] == 8 and third["entries_run"] == 0
    assert [r["entry"] for r in third["leaderboard"]] == [r["entry"] for r in second["leaderboard"]]
    for a, b in zip(second["leaderboard"], third["leaderboard"], strict=True):
        assert a["accuracy_mean"] == b["accuracy_mean"] and a["parameters"] == b["parameters"]
    assert not list(out.glob("models/**/.*tmp*")), "temporary files left behind"


def test_leaderboard_files_and_statistics(resumed):
    out, _, board, _, _ = resumed
    rows = board["leaderboard"]
    assert [r["entry"] for r in sorted(rows, key=lambda r: r["rank"])] == [r["entry"] for r in rows]
    assert [r["accuracy_mean"] for r in rows] == sorted((r["accuracy_mean"] for r in rows), reverse=True)
    assert {r["entry"] for r in rows} == {"image only", "caption only", "early", "ensemble-stack"}
    for r in rows:
        scores = [x["metrics"]["accuracy"] for x in board["results"] if x["entry"] == r["entry"]]
        assert len(scores) == r["seeds"] == 2
        assert r["accuracy_mean"] == pytest.approx(np.mean(scores))
        assert r["accuracy_std"] == pytest.approx(np.std(scores, ddof=1))
        assert r["accuracy_ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std(scores, ddof=1) / np.sqrt(2))
        assert r["parameters"] > 0 and r["train_seconds"] > 0 and r["infer_ms_per_sample"] > 0
        assert r["peak_mem_mb"] >= 0 and 0 <= r["f1_macro_mean"] <= 1
    by = {r["entry"]: r for r in rows}
    assert by["image only"]["missing:caption"] is None and by["early"]["missing:caption"] is not None
    # An ensemble's cost includes its members: its parameters are theirs plus the stacking weights.
    assert by["ensemble-stack"]["parameters"] > by["image only"]["parameters"] + by["caption only"]["parameters"]
    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv["entry"]) == [r["entry"] for r in rows]
    expected = ["accuracy_mean", "accuracy_std", "accuracy_ci95", "f1_macro_mean", "parameters", "train_seconds",
                "infer_ms_per_sample", "peak_mem_mb", "robustness:image", "missing:caption"]  # fmt: skip
    assert set(expected) <= set(csv.columns)
    assert json.loads((out / "leaderboard.json").read_text())["leaderboard"] == json.loads(json.dumps(rows))
    assert board["encoder_pass_seconds"] > 0 and board["wall_over_encoder_pass"] > 0
    assert len(np.load(out / "test_targets.npy")) == board["results"][0]["metrics"]["n"]


def test_entry_models_are_ordinary_model_folders_trained_like_fit(resumed, synth_split):
    """A compare baseline equals `fit` with the other columns ignored: same rows, preprocessing, network."""
    out, *_ = resumed
    train, test = synth_split
    saved = MultimodalPredictor.load(out / "models" / "image_only" / "seed1")
    assert list(saved.engine.schema.inputs) == ["image"]
    train_cfg = json.loads((out / "models" / "image_only" / "seed1" / "config.json").read_text())["config"]["train"]
    assert train_cfg["modality_dropout"] == 0.2 and train_cfg["seed"] == 1
    ref = MultimodalPredictor(
        label="y", fusion="early", seed=1, **dict(OPTIONS, max_epochs=1, ignore=IGNORE + ["caption"])
    )
    ref.fit(train)
    assert saved.engine.preprocessor.to_dict() == ref.engine.preprocessor.to_dict()
    assert saved.info()["parameters"] == ref.info()["parameters"]
    assert saved.metrics_["train_rows"] == ref.metrics_["train_rows"]
    assert saved.metrics_["valid"]["data"] == ref.metrics_["valid"]["data"]  # the same validation rows
    saved_outputs = np.load(out / "models" / "image_only" / "seed1" / "test_outputs.npy")
    np.testing.assert_allclose(saved.predict_proba(test).to_numpy(), saved_outputs, atol=1e-6)


def test_an_entry_with_other_settings_is_redone(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / leaderboard.RESULT).write_text(json.dumps({"settings": "abc"}))
    assert leaderboard.finished_result(folder, "abc") == {"settings": "abc"}
    assert leaderboard.finished_result(folder, "xyz") is None
    (folder / leaderboard.RESULT).write_text("{truncated")
    assert leaderboard.finished_result(folder, "abc") is None


def test_fusion_choices():
    assert entries.parse_fusions("all") == entries.fusion_choices()
    assert {"gmu", "tensor", "low_rank", "cross_attention", "ensemble-average", "ensemble-stack"} <= set(
        entries.fusion_choices()
    )
    assert entries.parse_fusions("gmu, ensemble-stack,gmu") == ["gmu", "ensemble-stack"]
    with pytest.raises(ValueError, match="unknown fusion"):
        entries.parse_fusions("gmu,concat")
    planned = entries.plan_entries(["image", "caption"], ["gmu", "ensemble-average"])
    assert [(e.name, e.kind) for e in planned] == [
        ("image only", "unimodal"), ("caption only", "unimodal"), ("gmu", "fusion"), ("ensemble-average", "ensemble"),
    ]  # fmt: skip
    assert [e.name for e in entries.plan_entries(["image"], ["gmu"])] == ["image only"]  # nothing to fuse


def test_cli_compare_reports_a_bad_fusion_name(synth_split, tmp_path):
    train, _ = synth_split
    r = CliRunner().invoke(app, ["compare", str(train), "--label", "y", "-o", str(tmp_path / "c"), "--fusions", "x"])
    assert r.exit_code == 2 and "unknown fusion" in r.output
    r = CliRunner().invoke(app, ["compare", str(train), "--label", "y", "-o", str(tmp_path / "c"), "--noise-rows", "0"])
    assert r.exit_code == 2 and "noise_rows must be at least 1" in r.output
    r = CliRunner().invoke(app, ["compare", str(train), "--label", "y", "-o", str(tmp_path / "c"), "--image-fit", "x"])
    assert r.exit_code == 2 and "preprocess.image_fit must be one of ['squash', 'pad'], not 'x'" in r.output
    assert not (tmp_path / "c").exists()  # refused before any work or folder


# ---- the noise -----------------------------------------------------------------------------------------------
def test_audio_noise_has_the_stated_snr():
    rng = np.random.default_rng(0)
    wave = np.sin(np.linspace(0, 2000, 40000)).astype(np.float32)
    for s in (0.2, 0.6, 1.0):
        noisy = noise_audio([wave, None], s, rng)
        assert noisy[1] is None
        snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy[0] - wave) ** 2))
        assert snr == pytest.approx(20 - 25 * s, abs=0.2)


def test_image_and_text_noise_grow_with_severity():
    rng = np.random.default_rng(0)
    img = (np.random.default_rng(1).random((3, 16, 16)) * 255).astype(np.uint8)
    errors = [np.abs(noise_images([img], s, rng)[0].astype(float) - img).mean() for s in (0.2, 0.6, 1.0)]
    assert errors[0] < errors[1] < errors[2]
    text = pd.Series(["the quick brown fox jumps over the lazy dog again"] * 200 + [None])
    kept = []
    for s in (0.2, 1.0):
        noisy = noise_text(text, s, rng)
        assert pd.isna(noisy.iloc[-1]) and (noisy.iloc[:-1].str.len() > 0).all()
        kept.append(np.mean([w in ("quick", "brown", "lazy") for t in noisy.iloc[:-1] for w in t.split()]))
    assert kept[0] > kept[1]


def test_relative_robustness():
    assert relative_robustness([0.8, 0.8, 0.8], True) == pytest.approx(1.0)
    assert relative_robustness([1.0, 0.5, 0.0], True) == pytest.approx(0.5)
    assert relative_robustness([1.0, 2.0, 3.0], False) == pytest.approx(0.5)  # RMSE doubling on average


def test_regression_compare_ranks_by_lowest_rmse(synth_split, tmp_path):
    """No --test: one held-out split for every entry; regression ranks by RMSE, ascending, without F1."""
    train, _ = synth_split
    options = dict(synth.FAST, max_epochs=5, ignore=["clip", "price", "shade", "y"])
    board = cmp.compare(train, "score", tmp_path / "reg", fusions=["early", "ensemble-stack"], seeds=1, noise_levels=2,
                        permutations=1, **options)  # fmt: skip
    rows = board["leaderboard"]
    assert board["metric"] == "rmse" and board["higher_is_better"] is False
    assert [r["rmse_mean"] for r in rows] == sorted(r["rmse_mean"] for r in rows)
    assert all("f1_macro_mean" not in r for r in rows)
    n_test = {r["metrics"]["n"] for r in board["results"]}
    assert n_test == {round(0.2 * len(pd.read_csv(train)))}  # the same 20 % of the rows for every entry
    fused = next(r for r in rows if r["entry"] == "early")
    assert fused["rmse_mean"] < min(r["rmse_mean"] for r in rows if r["kind"] == "unimodal")
    assert "regression" in (tmp_path / "reg" / "report.html").read_text()


def test_noise_curves_on_a_row_sample_start_from_that_samples_clean_score(fitted, synth_split):
    from polymodal.data.io import read_table
    from polymodal.evaluation.robustness import NoisyInputs, evaluate_robustness, noise_sample

    engine = fitted["early"].engine
    df, base_dir = read_table(synth_split[1])
    media, frozen, _ = engine.pipeline.decode(df, base_dir)
    feats, targets = engine.pipeline.features(df, media, frozen), engine.task.encode_targets(df["y"])
    rows = noise_sample(len(df), 40)
    assert len(rows) == 40 and (np.diff(rows) > 0).all() and np.array_equal(rows, noise_sample(len(df), 40))
    assert noise_sample(len(df), 10_000) is None  # a sample as large as the table is the table
    noisy = NoisyInputs(engine.preprocessor, df, media, 2, rows=rows)
    rob = evaluate_robustness(engine, feats, targets, noisy, permutations=1)
    assert rob["noise_rows"] == 40 and len(noisy.get("image", 2)[0]) == 40
    on_sample = engine.task.score(targets[rows], engine.outputs(feats.take(rows)))
    assert rob["clean"] == pytest.approx(engine.task.score(targets, engine.outputs(feats)))  # all rows
    for curve in rob["noise"].values():
        assert curve["scores"][0] == pytest.approx(on_sample) and len(curve["scores"]) == 3


def test_a_refitted_branch_folder_changes_the_settings_so_entries_are_redone(tmp_path):
    """compare's settings hash covers the folders that encoders.init_from and encoders.readout name, by content:
    an entry that started from (or read) a branch fitted again since is redone, not resumed."""
    from polymodal.config import Config
    from polymodal.studies.leaderboard import settings_hash, used_folders

    branch = tmp_path / "branch"
    branch.mkdir()
    (branch / "config.json").write_text('{"created": "first"}')
    (branch / "model.safetensors").write_bytes(b"0" * 10)
    cfg = Config()
    cfg.encoders.init_from = {"video:frames": str(branch)}
    cfg.encoders.readout = {"video:sound": str(tmp_path / "not_yet")}
    first = used_folders(cfg)
    assert first[str(tmp_path / "not_yet")] == "missing" and len(first) == 2
    assert used_folders(cfg) == first  # stable while nothing changes
    (branch / "config.json").write_text('{"created": "again"}')  # the branch fitted again, same path
    again = used_folders(cfg)
    assert again[str(branch)] != first[str(branch)] and settings_hash(again) != settings_hash(first)
