"""Every validation error stops before training with a message naming the row, column and reason."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import synth

from polymodal import MultimodalPredictor
from polymodal.data import BadRowsError, SchemaError

QUICK = synth.FAST | {"max_epochs": 2}


@pytest.fixture()
def table(tmp_path):
    df = synth.make_table(tmp_path, 40, seed=3)
    return tmp_path, df


def fit(folder, df, **kw):
    df.to_csv(folder / "t.csv", index=False)
    return MultimodalPredictor(label="y", ignore=["score"], **(QUICK | kw)).fit(folder / "t.csv")


def test_missing_file(table):
    folder, df = table
    df.loc[4, "image"] = "img/nope.png"
    with pytest.raises(BadRowsError, match=r"row 4, column 'image': file not found: .*nope\.png"):
        fit(folder, df)


def test_corrupt_image(table):
    folder, df = table
    (folder / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    df.loc[7, "image"] = "img/bad.png"
    with pytest.raises(BadRowsError, match=r"row 7, column 'image': unreadable or corrupt image"):
        fit(folder, df)


def test_decompression_bomb_is_refused_before_decoding(table, monkeypatch):
    import polymodal.data.media as media

    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 100)  # the 16x16 test images are 256 pixels
    folder, df = table
    with pytest.raises(
        BadRowsError, match=r"row 0, column 'image': image too large: 16 x 16 = 256 pixels, limit 100: .*\.png"
    ):
        fit(folder, df)


def test_corrupt_and_empty_audio(table):
    folder, df = table
    (folder / "wav" / "bad.wav").write_bytes(b"RIFF....WAVEfmt " + b"\x00" * 7)
    sf.write(folder / "wav" / "silent.wav", np.zeros(0, dtype="float32"), 8000)
    df.loc[2, "clip"] = "wav/bad.wav"
    df.loc[5, "clip"] = "wav/silent.wav"
    with pytest.raises(BadRowsError) as e:
        fit(folder, df)
    msg = str(e.value)
    assert "row 2, column 'clip': unreadable or corrupt audio" in msg
    assert "row 5, column 'clip': " in msg and ("no samples" in msg or "empty" in msg)
    assert "2 bad row(s)" in msg and "--on-bad-rows skip" in msg


def test_nan_label(table):
    folder, df = table
    df["y"] = df["y"].astype(float)
    df.loc[[3, 9], "y"] = np.nan
    with pytest.raises(BadRowsError, match=r"row 3, column 'y': label is empty \(NaN\)[\s\S]*row 9, column 'y'"):
        fit(folder, df)


def test_unknown_column(table):
    folder, df = table
    with pytest.raises(SchemaError, match=r"unknown column\(s\) \['title'\]"):
        fit(folder, df, modalities={"title": "text"})


def test_fully_empty_input_column(table):
    folder, df = table
    df["caption"] = np.nan
    with pytest.raises(SchemaError, match=r"column 'caption' is 100% empty.*--ignore caption"):
        fit(folder, df, modalities={"caption": "text"})


def test_many_problems_are_listed_up_to_20_then_counted(table):
    folder, df = table
    df["image"] = [f"img/missing_{i}.png" for i in range(len(df))]
    with pytest.raises(BadRowsError) as e:
        fit(folder, df)
    msg = str(e.value)
    assert msg.count("file not found") == 20
    assert "... and 20 more problem(s)" in msg and "40 bad row(s)" in msg


def test_skip_drops_bad_rows_and_writes_a_report(table, tmp_path):
    folder, df = table
    df.loc[4, "image"] = "img/nope.png"
    df.loc[6, "clip"] = "wav/nope.wav"
    p = fit(folder, df, on_bad_rows="skip")
    assert p.metrics_["train_rows"] + p.metrics_["valid_rows"] == len(df) - 2
    out = p.save(tmp_path / "m")
    report = pd.read_csv(out / "dropped_rows.csv")
    assert report[["row", "column"]].values.tolist() == [[4, "image"], [6, "clip"]]
    assert report["reason"].str.contains("file not found").all()


def test_empty_cells_are_a_missing_modality_not_an_error(table):
    folder, df = table
    df.loc[[1, 2], "image"] = np.nan
    df.loc[[3], "caption"] = np.nan
    df.loc[[4], "clip"] = ""
    p = fit(folder, df)
    assert p.metrics_["train_rows"] + p.metrics_["valid_rows"] == len(df)
    assert p.metrics_["dropped_rows"] == 0


def test_pad_fit_keeps_the_aspect_ratio(tmp_path):
    from PIL import Image

    from polymodal.data.media import PAD_GRAY, decode_image

    path = tmp_path / "wide.png"
    Image.new("RGB", (40, 10), (255, 0, 0)).save(path)
    squash = decode_image(path, 16)
    assert squash.shape == (3, 16, 16) and (squash[0] == 255).all() and (squash[1:] == 0).all()
    pad = decode_image(path, 16, fit="pad")
    # 40x10 scales to 16x4, centred: rows 6-9 are the picture, the rest mid-grey bars.
    assert (pad[:, 6:10] == np.array([255, 0, 0])[:, None, None]).all()
    assert (pad[:, :6] == PAD_GRAY).all() and (pad[:, 10:] == PAD_GRAY).all()
    with pytest.raises(ValueError, match="image fit"):
        decode_image(path, 16, fit="crop")
    with pytest.raises(ValueError, match="image_fit must be one of"):
        MultimodalPredictor(label="y", preprocess={"image_fit": "crop"})
