"""Privacy: personal data found and removed from text, faces and voices, and nothing of it leaks into a model folder,
the logs, the reports or the error messages."""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app
from polymodal.data.redact import quote_value
from polymodal.privacy import PrivacySettings, anonymize_frame, anonymize_table
from polymodal.privacy.audio import lpc, mcadams
from polymodal.privacy.image import find_faces

runner = CliRunner()

# Planted personal values, and the fragments of each that a model folder would hold if they leaked: the word
# tokenizer splits at punctuation, so an email address survives as its name parts, a phone or card number
# written without separators as one token.
EMAILS = ["zorblatt.quimby@example.com", "wexford.ankh@mailbox.org"]
PHONES = ["+14155552671", "+442071838750"]
CARDS = ["4111111111111111", "5555555555554444"]
NAMES = ["Zebulon Quixby", "Marisol Tarquin"]
CITY = "Quarzazate"
FRAGMENTS = {
    "email": ["zorblatt", "quimby", "wexford", "mailbox"],
    "phone": ["14155552671", "442071838750"],
    "card": CARDS,
    "name": ["zebulon", "quixby", "marisol", "tarquin"],
}
FILLER = ["please", "update", "the", "order", "for", "tomorrow", "thanks", "kindly", "ship", "soon"]
TINY = ["--max-epochs", "1", "--embed-dim", "8", "--batch-size", "16", "--image-size", "16", "--sample-rate", "8000"]


def personal_table(folder: Path, n: int = 24) -> Path:
    """A table whose free text holds emails, phone and card numbers and names (each several times), with tiny
    images and audio clips, and a label."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = i % 2
        name, email, phone, card = NAMES[k], EMAILS[k], PHONES[k], CARDS[k]
        words = list(rng.choice(FILLER, size=3))
        note = (
            f"{name} from {CITY} writes {' '.join(words)}: mail {email} or call {phone}, card {card}"
            if i % 3
            else f"{' '.join(words)} {name} ({email}) paid with {card}, phone {phone}"
        )
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        t = np.arange(800) / 8000
        sf.write(folder / "wav" / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t)).astype("float32"), 8000)
        rows.append({"note": note, "photo": f"img/{i}.png", "voice": f"wav/{i}.wav", "amount": float(i), "y": k})
    path = folder / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tiny_ner(folder: Path) -> Path:
    """A tiny BERT token-classification model built from a config (no download): no encoder layer, so each
    token's label comes from its own embedding. The planted names' words are set to PER and the city to LOC;
    everything else is O. It tests the plumbing (model -> spans -> placeholders), not NER quality."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    people = [w.lower() for n in NAMES for w in n.split()]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *people, CITY.lower(), *FILLER]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words), hidden_size=4, num_hidden_layers=0, num_attention_heads=1, intermediate_size=4,
        max_position_embeddings=128, id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
    )  # fmt: skip
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        emb = model.bert.embeddings
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        emb.LayerNorm.weight.fill_(1.0)
        emb.LayerNorm.bias.zero_()
        table = torch.tensor([[1.0, -1.0, 0.0, 0.0]]).repeat(len(words), 1)  # -> O
        for w in people:
            table[words.index(w)] = torch.tensor([-1.0, 1.0, 0.0, 0.0])  # -> B-PER
        table[words.index(CITY.lower())] = torch.tensor([0.0, 0.0, 1.0, -1.0])  # -> B-LOC
        emb.word_embeddings.weight.copy_(table)
        w = torch.zeros(len(labels), 4)
        w[0, 0], w[1, 1], w[3, 2] = 5.0, 5.0, 5.0
        model.classifier.weight.copy_(w)
        model.classifier.bias.zero_()
    model.save_pretrained(folder)
    return folder


def hits(text: str) -> dict[str, list[str]]:
    low = text.lower()
    return {kind: [f for f in frags if f in low] for kind, frags in FRAGMENTS.items() if any(f in low for f in frags)}


def folder_hits(folder: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        for kind, frags in hits(f.read_bytes().decode("latin-1")).items():
            found.setdefault(kind, []).extend(frags)
    return found


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + json.dumps(getattr(record, "fields", {}), default=str))


@pytest.fixture()
def captured_logs():
    """Every log record of every logger while the test runs (the root and polymodal's own, which do not propagate)."""
    handler = ListHandler()
    loggers = [
        logging.getLogger(),
        *(logging.getLogger(n) for n in ("polymodal", "polymodal.access", "polymodal.serving")),
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield handler.lines
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture(scope="module")
def fitted_models(tmp_path_factory):
    """The same table fitted twice through the CLI: with --anonymize (and the NER model) and without."""
    base = tmp_path_factory.mktemp("privacy")
    table = personal_table(base / "data")
    ner = tiny_ner(base / "ner")
    outputs, logs = {}, {}
    for name, extra in (("clean", ["--anonymize", "--ner-model", str(ner)]), ("raw", [])):
        handler = ListHandler()
        root = logging.getLogger()
        root.addHandler(handler)
        old = root.level
        root.setLevel(logging.INFO)
        try:
            out = base / name
            r = runner.invoke(
                app, ["fit", str(table), "--label", "y", "-o", str(out), "--fusion", "early", *TINY, *extra]
            )
        finally:
            root.removeHandler(handler)
            root.setLevel(old)
        assert r.exit_code == 0, r.output
        outputs[name], logs[name] = out, r.output + "\n".join(handler.lines)
    return outputs, logs, table


def test_fit_anonymize_leaves_no_personal_value_in_the_model_folder_or_logs(fitted_models):
    outputs, logs, table = fitted_models
    # Without --anonymize the values are there (the vocabulary in preprocess.json): the search can fail.
    raw = folder_hits(outputs["raw"])
    assert set(raw) == {"email", "phone", "card", "name"}, raw
    # With it: nothing in the model folder, the anonymized copy beside it (table, media, report), or the output.
    assert folder_hits(outputs["clean"]) == {}
    anonymized = outputs["clean"].parent / "clean.anonymized"
    assert (anonymized / "train" / "train.csv").exists()
    assert folder_hits(anonymized) == {}
    assert hits(logs["clean"]) == {}
    # The placeholders took their place, and the report counts what was found (no values).
    clean = pd.read_csv(anonymized / "train" / "train.csv")
    assert clean["note"].str.contains("<EMAIL_ADDRESS>").all() and clean["note"].str.contains("<PERSON>").all()
    assert clean["note"].str.contains("<CREDIT_CARD>").all() and clean["note"].str.contains("<PHONE_NUMBER>").all()
    assert clean["note"].str.contains("<LOCATION>").any()
    report = json.loads((anonymized / "train" / "anonymization_report.json").read_text())
    n = len(clean)
    assert report["columns"]["note"]["entities"]["EMAIL_ADDRESS"] == n
    assert report["columns"]["note"]["entities"]["CREDIT_CARD"] == n
    assert report["columns"]["note"]["entities"]["PERSON"] >= n
    assert report["columns"]["voice"]["files"] == n and report["columns"]["photo"]["files"] == n
    # Media were rewritten under neutral names; the source table was only read.
    assert clean["photo"].str.match(r"media/photo/\d+\.png$").all()
    assert clean["voice"].str.match(r"media/voice/\d+\.wav$").all()
    assert hits(table.read_text())  # untouched


def test_info_warns_about_personal_vocabulary(fitted_models):
    outputs, _, _ = fitted_models
    r = runner.invoke(app, ["info", str(outputs["raw"])])
    assert r.exit_code == 0, r.output
    assert "look personal" in r.output and "CREDIT_CARD" in r.output and "PHONE_NUMBER" in r.output
    assert hits(r.output) == {}  # the warning counts; it does not quote
    r = runner.invoke(app, ["info", str(outputs["clean"])])
    assert r.exit_code == 0 and "look personal" not in r.output


def test_serve_logs_and_errors_never_hold_input_values(fitted_models, captured_logs):
    from polymodal.serving import ServeConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    outputs, _, table = fitted_models
    df = pd.read_csv(table)
    base = table.parent
    email, phone = EMAILS[0], "555-123-4567"
    with TestClient(create_app(ServeConfig(model=str(outputs["raw"]), warmup=False))) as client:
        inst = {"note": f"write to {email}", "amount": 3.0}
        ok = client.post("/v1/predict", json={"instances": [inst]})
        assert ok.status_code == 200
        files = {"photo": (base / df["photo"][0]).read_bytes(), "voice": (base / df["voice"][0]).read_bytes()}
        bad = client.post("/v1/predict/form", data={"note": f"call {CARDS[0]}", "amount": phone}, files=files)
        assert bad.status_code == 422
        assert "amount" in bad.text and phone not in bad.text and "###-###" in bad.text
        unknown = client.post("/v1/predict", json={"instances": [{"note": email, "nope": CARDS[1]}]})
        assert unknown.status_code == 422 and CARDS[1] not in unknown.text
    lines = "\n".join(captured_logs)
    assert "/v1/predict" in lines  # the access log did log the requests
    assert email not in lines and phone not in lines and hits(lines) == {}


def test_hash_operator_is_consistent_across_rows_and_salted(tmp_path, monkeypatch):
    df = pd.DataFrame(
        {
            "msg": [f"hi, I am {EMAILS[0]}", f"{EMAILS[0]} again", f"and {EMAILS[1]}", "nothing here"],
            "y": [0, 1, 0, 1],
        }
    )
    clean, report = anonymize_frame(df, tmp_path, tmp_path, PrivacySettings(operator="hash", salt="s1"))
    tokens = clean["msg"].str.extract(r"(<EMAIL_ADDRESS_[0-9a-f]{10}>)")[0]
    assert tokens[0] == tokens[1] != tokens[2] and pd.isna(tokens[3])
    assert (
        report["columns"]["msg"]["entities"] == {"EMAIL_ADDRESS": 3} and report["columns"]["msg"]["cells_changed"] == 3
    )
    monkeypatch.setenv("POLYMODAL_PRIVACY_SALT", "s2")  # the salt may come from the environment
    other, report2 = anonymize_frame(df, tmp_path, tmp_path, PrivacySettings(operator="hash"))
    assert other["msg"][0] != clean["msg"][0] and report2["settings"]["salt"] == "set"
    assert "s2" not in json.dumps(report2)
    monkeypatch.delenv("POLYMODAL_PRIVACY_SALT")
    with pytest.raises(ValueError, match="POLYMODAL_PRIVACY_SALT"):
        anonymize_frame(df, tmp_path, tmp_path, PrivacySettings(operator="hash"))
    masked, _ = anonymize_frame(df, tmp_path, tmp_path, PrivacySettings(operator="mask"))
    assert masked["msg"][0] == "hi, I am " + "*" * len(EMAILS[0])


def _exif_jpeg(rgb: np.ndarray) -> bytes:
    """A JPEG with EXIF: camera, date, and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x0132] = "2024:05:01 10:00:00"  # DateTime
    gps = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    exif[0x8825] = gps
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_faces_blurred_rest_kept_and_no_metadata(tmp_path):
    from skimage.data import astronaut

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(_exif_jpeg(astronaut()))
    with Image.open(tmp_path / "in" / "a.jpg") as im:
        assert im.getexif().get_ifd(0x8825)  # the input does carry GPS
        before = np.asarray(im.convert("RGB")).astype(int)
    pd.DataFrame({"photo": ["a.jpg"], "y": [1]}).to_csv(tmp_path / "in" / "t.csv", index=False)
    path, report = anonymize_table(tmp_path / "in" / "t.csv", tmp_path / "out", PrivacySettings())
    assert report["columns"]["photo"]["faces"] >= 1
    out_file = path.parent / pd.read_csv(path)["photo"][0]
    raw = out_file.read_bytes()
    assert b"Exif" not in raw and b"SpyCam" not in raw and b"GPS" not in raw
    with Image.open(out_file) as im:
        assert im.format == "PNG" and not im.getexif() and "exif" not in im.info
        after = np.asarray(im.convert("RGB")).astype(int)
    boxes = find_faces(before.astype(np.uint8))
    face = np.zeros(before.shape[:2], bool)
    for x, y, w, h in boxes:
        face[max(0, y - h // 2) : y + 2 * h, max(0, x - w // 2) : x + 2 * w] = True
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    inner = np.abs(after - before)[y : y + h, x : x + w].mean()
    outside = np.abs(after - before)[~face].mean()
    assert inner > 10 and outside < 0.5, (inner, outside)


def _formants(wave: np.ndarray, sr: int) -> np.ndarray:
    """Formant frequencies (Hz) of a steady vowel: angles of the LPC poles of its middle 40 ms."""
    mid = wave[len(wave) // 2 - int(0.02 * sr) : len(wave) // 2 + int(0.02 * sr)] * np.hanning(int(0.04 * sr))
    poles = np.roots(lpc(mid, 12))
    poles = poles[(np.imag(poles) > 0) & (np.abs(poles) > 0.9)]
    return np.sort(np.angle(poles) * sr / (2 * np.pi))


def test_mcadams_moves_formants_keeps_duration_and_rate(tmp_path):
    from scipy.signal import lfilter

    sr = 16000
    pulses = np.zeros(sr // 2)
    pulses[:: sr // 120] = 1.0  # a 120 Hz voice source
    wave = pulses
    for f, bw in ((500, 80), (1500, 100), (2500, 120)):  # the formants of a neutral vowel
        r = np.exp(-np.pi * bw / sr)
        wave = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * f / sr), r * r], wave)
    wave = 0.5 * wave / np.abs(wave).max()
    same = mcadams(wave, sr, alpha=1.0)
    assert np.corrcoef(wave, same)[0, 1] > 0.99  # alpha 1 leaves the voice as it was
    f_in = _formants(wave, sr)
    f1_in = f_in[np.argmin(np.abs(f_in - 500))]
    f_out = _formants(mcadams(wave, sr, alpha=0.8), sr)
    f1_out = f_out[np.argmin(np.abs(f_out - 693))]  # 500 Hz -> (2 pi 500 / 16000) ** 0.8 -> 693 Hz
    assert abs(f1_in - 500) < 60 and abs(f1_out - 693) < 80 and f1_out - f1_in > 120, (f_in, f_out)
    # Through a table: the same duration and sample rate, 16-bit WAV.
    sf.write(tmp_path / "v.wav", wave.astype("float32"), sr)
    pd.DataFrame({"clip": ["v.wav"], "y": [0]}).to_csv(tmp_path / "t.csv", index=False)
    path, _ = anonymize_table(tmp_path / "t.csv", tmp_path / "out", PrivacySettings(alpha_range=(0.7, 0.9)))
    info = sf.info(path.parent / pd.read_csv(path)["clip"][0])
    assert info.samplerate == sr and info.frames == len(wave) and info.subtype == "PCM_16"


def test_error_messages_truncate_and_mask_cell_values(tmp_path):
    from polymodal import MultimodalPredictor
    from polymodal.data import BadRowsError
    from polymodal.tasks import Task

    assert quote_value("call +1 415 555 2671 now") == "'call +# ### …'"
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, "ssn 536-22-8901", 2.0, 3.0]})
    with pytest.raises(BadRowsError) as e:
        MultimodalPredictor(label="y", problem_type="regression").fit(df)
    assert "536-22-8901" not in str(e.value) and "row 1, column 'y': label 'ssn ###-##-#…'" in str(e.value)
    task = Task.fit("binary", pd.Series(["a", "b"]))
    with pytest.raises(ValueError) as e:
        task.encode_targets(pd.Series(["a", EMAILS[0]]))
    assert EMAILS[0] not in str(e.value) and "'zorblatt.qui…'" in str(e.value)
    pd.DataFrame({"photo": ["pics/jane_doe_1984.png"], "y": [0]}).to_csv(tmp_path / "t.csv", index=False)
    r = runner.invoke(app, ["anonymize", str(tmp_path / "t.csv"), "-o", str(tmp_path / "out"), "--image", "photo"])
    assert r.exit_code == 2 and "row 0, column 'photo': file not found: 'jane_doe_####.png'" in r.output
    assert not (tmp_path / "out").exists()  # nothing written
    r = runner.invoke(app, ["anonymize", str(tmp_path / "t.csv"), "-o", str(tmp_path)])
    assert r.exit_code == 2 and "never works in place" in r.output


def test_the_privacy_section_of_the_config_anonymizes_in_python_and_in_compare(tmp_path):
    """`privacy.anonymize` in the tree (here from Python, without the CLI): fit and compare read only the copies."""
    from polymodal import MultimodalPredictor
    from polymodal.studies.compare import compare

    table = personal_table(tmp_path / "data")
    tiny = {"max_epochs": 1, "embed_dim": 8, "hidden": 8, "batch_size": 16, "progress": False,
            "preprocess": {"image_size": 16, "sample_rate": 8000}, "modalities": {"note": "text"}}  # fmt: skip
    patterns = [f for kind in ("email", "phone", "card") for f in FRAGMENTS[kind]]  # names need an NER model
    p = MultimodalPredictor(label="y", fusion="early", anonymize=True, **tiny).fit(table)
    vocab = " ".join(p.engine.preprocessor.state["note"]["vocab"])
    assert p.config_.privacy.anonymize and not any(f in vocab for f in patterns)
    assert "email_address" in vocab  # the placeholders took their place
    raw = MultimodalPredictor(label="y", fusion="early", **tiny).fit(table)
    assert "zorblatt" in " ".join(raw.engine.preprocessor.state["note"]["vocab"])  # the check can fail

    out = tmp_path / "cmp"
    compare(table, "y", out, fusions="early", seeds=1, noise_levels=0, report=False, anonymize=True, **tiny)
    assert (tmp_path / "cmp.anonymized" / "train" / "train.csv").exists()
    saved = MultimodalPredictor.load(out / "models" / "early" / "seed0")
    assert not any(f in json.dumps(saved.engine.preprocessor.to_dict()) for f in patterns)
