"""Issue 9: defects found when tried as a new user would (compare on every kind of input, user vs internal
errors in the CLI, decompression bombs, the API key on every endpoint) and the compare verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import synth
from typer.testing import CliRunner

from polymodal.cli import app

SMALL = ["--max-epochs", "2", "--batch-size", "32", "--embed-dim", "16", "--image-size", "16", "--sample-rate", "8000"]


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """The generated table with every kind of input (text, image, audio, numeric, categorical) and empty cells."""
    folder = tmp_path_factory.mktemp("every_kind")
    df = synth.make_table(folder, 60, seed=3)
    rng = np.random.default_rng(0)
    for col in ("image", "caption", "clip", "price", "shade"):
        df.loc[rng.choice(len(df), size=5, replace=False), col] = None
    df = df.drop(columns=["score"])
    df.to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


# ---- 1. compare on a table with every kind of input -----------------------------------------------------------
def test_compare_runs_on_every_kind_of_input_with_empty_cells(every_kind, tmp_path):
    from polymodal.studies.compare import compare
    from polymodal.studies.leaderboard import leaderboard_table

    out = tmp_path / "cmp"
    options = dict(synth.FAST, max_epochs=2, patience=1, embed_dim=16, hidden=16)
    board = compare(every_kind, "y", out, fusions="early,late", seeds=1, noise_levels=2, noise_rows=8,
                    permutations=1, **options)  # fmt: skip
    names = {e["entry"] for e in board["leaderboard"]}
    assert {"image only", "caption only", "clip only", "tabular:numeric only", "tabular:categorical only"} <= names
    assert {"early", "late"} <= names
    noise = board["results"][-1]["robustness"]["noise"]  # the categorical input was noised too
    assert len(noise["tabular:categorical"]["scores"]) == 3
    assert board["majority_class"]["name"].startswith("majority class") and 0 < board["majority_class"]["score"] < 1
    assert board["verdict"].startswith("The best fusion, ") and "majority class" in board["verdict"]
    assert leaderboard_table(board).caption == board["verdict"]  # printed under the table
    assert "Verdict:" in (out / "report.html").read_text()


def test_categorical_noise_does_not_write_into_a_read_only_array():
    from polymodal.evaluation.robustness import noise_categorical

    df = pd.DataFrame({"c": pd.Series(["a", "b", None, "a"] * 10, dtype="str")})
    noisy = noise_categorical(df, ["c"], [["a", "b"]], 1.0, np.random.default_rng(0))
    assert noisy["c"].isna().sum() == df["c"].isna().sum()  # an empty cell stays empty
    assert (noisy["c"] != df["c"]).sum() > 0
    assert df["c"].tolist()[:4] == ["a", "b", None, "a"] or pd.isna(df["c"].iloc[2])  # the input is untouched


# ---- 2. user errors vs internal errors in the CLI -------------------------------------------------------------
def test_a_user_error_is_one_line_and_exit_code_2(every_kind, tmp_path):
    r = CliRunner().invoke(app, ["fit", str(every_kind), "-y", "y", "-o", str(tmp_path / "m"), "--fusion", "nope"])
    assert r.exit_code == 2 and "error: unknown fusion 'nope'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["fit", str(every_kind), "-y", "y", "-o", str(tmp_path / "m"), "--problem-type", "x"])
    assert r.exit_code == 2 and "problem type must be one of" in r.output
    r = CliRunner().invoke(app, ["info", str(tmp_path / "absent")])
    assert r.exit_code == 2 and "error:" in r.output  # a path the user gave that is not there
    r = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])  # the CLI's own check
    assert r.exit_code == 2 and "labelled table" in r.output
    assert not (tmp_path / "m").exists()


def test_an_internal_error_says_it_is_a_bug_and_keeps_the_traceback(every_kind, tmp_path, monkeypatch):
    from polymodal.predictor import MultimodalPredictor

    def broken(*args, **kwargs):
        raise ValueError("assignment destination is read-only")  # a plain ValueError is not the user's fault

    monkeypatch.setattr(MultimodalPredictor, "fit", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("POLYMODAL_DEBUG", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    r = CliRunner().invoke(app, ["fit", str(every_kind), "-y", "y", "-o", str(tmp_path / "m")])
    assert r.exit_code == 3, r.output
    assert "internal error (a bug in polymodal): ValueError: assignment destination is read-only" in r.output
    assert "Traceback" not in r.output
    (crash,) = tmp_path.glob("polymodal-crash-*.txt")
    assert str(crash) in r.output.replace("\n", "")
    text = crash.read_text()
    assert "Traceback" in text and "in broken" in text
    r = CliRunner().invoke(app, ["--debug", "fit", str(every_kind), "-y", "y", "-o", str(tmp_path / "m")])
    assert r.exit_code == 3 and "Traceback" in r.output and "in broken" in r.output


def test_user_errors_share_one_base_class():
    from polymodal.data import BadRowsError, SchemaError
    from polymodal.data.media import MediaError
    from polymodal.encoders.pretrained import EncoderNotFound
    from polymodal.errors import UserError

    for cls in (BadRowsError, SchemaError, MediaError, EncoderNotFound):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


# ---- 3. decompression bombs: "too large" with the size, whatever the size; the file's path in every error ------
def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (no pixel is ever allocated)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize("side", [12_000, 20_000, 100_000])  # 72 M, 200 M (above Pillow's 179 M), 5 G pixels
def test_a_huge_image_is_too_large_with_its_size_and_path(tmp_path, side):
    from polymodal.data.media import MAX_IMAGE_PIXELS, MediaError, decode_image

    path = tmp_path / f"bomb_{side}.png"
    path.write_bytes(bomb_png(side, side // 2))
    with pytest.raises(MediaError) as e:
        decode_image(path, 16)
    msg = str(e.value)
    assert f"image too large: {side} x {side // 2} = {side * side // 2} pixels, limit {MAX_IMAGE_PIXELS}" in msg
    assert str(path) in msg and "corrupt" not in msg


def test_every_media_error_names_the_file(tmp_path):
    import soundfile as sf

    from polymodal.data.media import MediaError, decode_audio, decode_image

    bad_img, bad_wav, silent = tmp_path / "bad.png", tmp_path / "bad.wav", tmp_path / "silent.wav"
    bad_img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    bad_wav.write_bytes(b"RIFF" + b"junk" * 20)
    sf.write(silent, np.zeros(0, dtype="float32"), 8000)
    for fn, path in [(decode_image, bad_img), (decode_audio, bad_wav), (decode_audio, silent),
                     (decode_image, tmp_path / "absent.png")]:  # fmt: skip
        with pytest.raises(MediaError) as e:
            fn(path, 16 if fn is decode_image else 8000)
        assert str(path) in str(e.value), str(e.value)


def test_a_bomb_in_a_table_is_a_bad_row_naming_row_column_and_file(every_kind, tmp_path):
    from polymodal.data import BadRowsError
    from polymodal.predictor import MultimodalPredictor

    df = pd.read_csv(every_kind)
    (every_kind.parent / "img" / "bomb.png").write_bytes(bomb_png(30_000, 30_000))
    df.loc[0, "image"] = "img/bomb.png"
    table = every_kind.parent / "with_bomb.csv"
    df.to_csv(table, index=False)
    with pytest.raises(BadRowsError, match=r"row 0, column 'image': image too large: 30000 x 30000 .*bomb\.png"):
        MultimodalPredictor(label="y", **synth.FAST).fit(table)


# ---- 4. with an API key, only /health and /ready are open (unless --public-docs) ---------------------------------
@pytest.fixture(scope="module")
def serving_model(tmp_path_factory):
    from test_serving import fit_model

    return fit_model(tmp_path_factory)[0]


def _client(model, monkeypatch, **kwargs):
    import warnings

    from polymodal.serving import ServeConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    monkeypatch.setenv("HARDENING_KEY", "k3y")
    config = ServeConfig(model=str(model), api_key_env="HARDENING_KEY", warmup=False, **kwargs)
    return TestClient(create_app(config))


PAGES = ["/", "/docs", "/redoc", "/openapi.json", "/metrics", "/static/page.js", "/static/swagger-ui-bundle.js"]


def test_with_a_key_docs_metrics_and_page_need_it(serving_model, monkeypatch):
    key = {"Authorization": "Bearer k3y"}
    with _client(serving_model, monkeypatch) as c:
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        for path in PAGES:
            r = c.get(path)
            assert r.status_code == 401 and "shade" not in r.text and "caption" not in r.text, path
            assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert "caption" in c.get("/openapi.json", headers=key).text
        assert "polymodal_requests_total" in c.get("/metrics", headers=key).text
        assert 'id="api-key"' in c.get("/", headers=key).text and c.get("/docs", headers=key).status_code == 200


def test_public_docs_opens_docs_metrics_and_page_but_not_v1(serving_model, monkeypatch):
    with _client(serving_model, monkeypatch, public_docs=True) as c:
        for path in ("/", "/docs", "/openapi.json", "/metrics", "/static/page.js", "/static/swagger-ui-bundle.js"):
            assert c.get(path).status_code == 200, path
        assert c.get("/v1/model").status_code == 401
        assert c.post("/v1/predict", json={"instances": [{"caption": "a cat"}]}).status_code == 401


def test_serve_cli_has_the_public_docs_flag():
    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--public-docs" in r.output


# ---- 8. the verdict of a compare ------------------------------------------------------------------------------
def _board(rows, majority=0.25, seeds=3, higher=True, metric="accuracy"):
    rows = [{"entry": e, "kind": k, f"{metric}_mean": m, f"{metric}_std": s} for e, k, m, s in rows]
    rows.sort(key=lambda r: -r[f"{metric}_mean"] if higher else r[f"{metric}_mean"])
    return {"metric": metric, "higher_is_better": higher, "seeds": seeds, "leaderboard": rows,
            "majority_class": {"name": "majority class 'a'", "score": majority}}  # fmt: skip


def test_verdict_when_fusion_wins_and_every_entry_learned():
    from polymodal.studies.leaderboard import verdict

    board = _board([("gmu", "fusion", 0.90, 0.01), ("image only", "unimodal", 0.70, 0.02),
                    ("caption only", "unimodal", 0.60, 0.03)])  # fmt: skip
    v = verdict(board)
    assert v == (
        "The best fusion, gmu (0.9000 ± 0.0100), beats the best single input, image only (0.7000 ± 0.0200) by "
        "0.2000, more than the seeds' spread (std 0.0200); every entry beats the majority class 'a' (accuracy "
        "0.2500)."
    )


def test_verdict_when_fusion_is_within_noise_and_nothing_beats_the_majority_class():
    from polymodal.studies.leaderboard import verdict

    # NLVR-like: everything at chance, the fusion a hair above the best single input but within the spread.
    board = _board(
        [
            ("early", "fusion", 0.515, 0.02),
            ("ensemble-stack", "ensemble", 0.50, 0.01),
            ("image only", "unimodal", 0.51, 0.01),
            ("text only", "unimodal", 0.505, 0.015),
        ],
        majority=0.52,
    )
    v = verdict(board)
    assert "does not beat the best single input, image only" in v and "(std 0.0200; difference +0.0050)" in v
    assert v.endswith("no entry beats the majority class 'a' (accuracy 0.5200): nothing learned a signal from "
                      "these inputs.")  # fmt: skip
    # Some above, some not; RMSE: lower is better.
    board = _board([("early", "fusion", 1.0, 0.1), ("x only", "unimodal", 2.0, 0.1), ("y only", "unimodal", 3.1, 0.1)],
                   majority=3.0, higher=False, metric="rmse")  # fmt: skip
    v = verdict(board)
    assert "beats the best single input, x only" in v and "by 1.0000" in v and "2 of 3 entries beat" in v
    assert "difference" in verdict(_board([("early", "fusion", 0.6, float("nan")),
                                           ("x only", "unimodal", 0.5, float("nan"))], seeds=1))  # fmt: skip
