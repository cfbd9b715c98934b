"""Cross-modal retrieval: alignment, the FAISS gallery index, search (Python, CLI, REST), metrics, zero-shot."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from polymodal.cli import app

# Six kinds; each row's image colour, tone pitch and caption name the same kind, so the pairing is learnable.
KINDS = ["red", "green", "blue", "yellow", "cyan", "magenta"]
RGB = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]
FREQ = [250, 400, 600, 900, 1300, 1900]
FAST = dict(
    preprocess={"image_size": 16, "sample_rate": 8000, "n_mels": 32, "n_mfcc": 13},
    embed_dim=32, dim=16, hidden=32, batch_size=32, max_epochs=12, patience=6, lr=3e-3, progress=False,
)  # fmt: skip


def make_rows(folder: Path, kinds: list[int], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, k in enumerate(kinds):
        pix = np.clip(np.array(RGB[k]) * 0.7 + 0.15 + rng.normal(0, 0.1, (16, 16, 3)), 0, 1)
        Image.fromarray((pix * 255).astype("uint8")).save(folder / "img" / f"{seed}_{i}.png")
        t = np.arange(2000) / 8000
        tone = 0.3 * np.sin(2 * np.pi * FREQ[k] * t) + rng.normal(0, 0.05, t.size)
        sf.write(folder / "wav" / f"{seed}_{i}.wav", tone.astype("float32"), 8000)
        rows.append(
            {
                "image": f"img/{seed}_{i}.png",
                "clip": f"wav/{seed}_{i}.wav",
                "caption": f"a {KINDS[k]} {rng.choice(['thing', 'object', 'item'])} here",
                "kind": KINDS[k],
                "speaker": str(rng.choice(["ann", "bob"])),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread here: on a busy 2-core machine, two spinning threads per op make these fits many times
    slower; the previous setting is restored after this file's tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("align")
    rng = np.random.default_rng(0)
    paths = {
        "train": make_rows(folder, list(rng.integers(6, size=180)), 1),
        "gallery": make_rows(folder, list(rng.integers(6, size=60)), 2),
        "more": make_rows(folder, list(rng.integers(6, size=12)), 3),
        "unique": make_rows(folder, list(range(6)), 4),  # one row per kind: instance-level chance is 1/6
    }
    out = {}
    for name, df in paths.items():
        df.to_csv(folder / f"{name}.csv", index=False)
        out[name] = folder / f"{name}.csv"
    return out


@pytest.fixture(scope="module")
def aligned(data, tmp_path_factory) -> Path:
    """clip and caption aligned to image (plain InfoNCE, no label), saved."""
    from polymodal.retrieval import MultimodalRetriever

    r = MultimodalRetriever(query=["clip", "caption"], target="image", **FAST).fit(data["train"])
    folder = r.save(tmp_path_factory.mktemp("models") / "r1")
    emb, present = r.embed(data["gallery"], "image")
    loaded = MultimodalRetriever.load(folder)
    emb2, present2 = loaded.embed(data["gallery"], "image")
    np.testing.assert_allclose(emb, emb2, atol=1e-5)  # load rebuilds the exact model
    assert present.all() and present2.all()
    return folder


def test_retrieval_metrics_by_hand():
    from polymodal.retrieval.metrics import retrieval_metrics

    # Query 0 ranks its pair first; query 1 ranks its pair second (rank 2): recall@1 0.5, MRR 0.75.
    gallery = np.eye(3, dtype=np.float32)
    queries = np.array([[1, 0, 0], [0.9, 0.5, 0], [0, 0, 1]], dtype=np.float32)
    m = retrieval_metrics(queries, gallery, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(2 / 3) and m["recall@2"] == 1.0
    assert m["MRR"] == pytest.approx((1 + 0.5 + 1) / 3) and m["mAP"] == pytest.approx(m["MRR"])
    # Class level: queries 0 and 1 (label a) find a's two items at ranks 1 and 3: AP = (1 + 2/3) / 2 each.
    labels_q, labels_g = np.array(["a", "a", "b"]), np.array(["a", "b", "a"])
    q = np.array([[1, 0, 0], [1, 0.5, 0.2], [0, 1, 0]], dtype=np.float32)
    c = retrieval_metrics(q, gallery, labels_q, labels_g, ks=(1,))
    assert c["level"] == "class" and c["recall@1"] == 1.0
    assert c["mAP"] == pytest.approx((2 * (1 + 2 / 3) / 2 + 1.0) / 3)


def test_alignment_learns_the_pairing(aligned, data):
    from polymodal.retrieval import MultimodalRetriever

    r = MultimodalRetriever.load(aligned)
    m = r.evaluate(data["unique"])  # six rows, one per kind: chance recall@1 is 1/6
    for direction in ("clip->image", "image->clip", "caption->image", "image->caption"):
        assert m[direction]["instance"]["recall@1"] >= 0.8, (direction, m[direction])
    assert r.metrics_["valid"]["clip->image"]["instance"]["recall@10"] > 0.5
    assert 0 < r.metrics_["temperature"] < 1 and r.metrics_["best_epoch"] >= 0


def test_supervised_contrastive_with_label(data, tmp_path):
    from polymodal.retrieval import MultimodalRetriever

    r = MultimodalRetriever(query="clip", target="image", label="kind", **FAST).fit(data["train"])
    m = r.evaluate(data["gallery"])
    # Class level: every row of the query's kind is relevant; chance precision@1 is about 1/6.
    assert m["clip->image"]["class"]["precision@1"] >= 0.8
    assert m["image->clip"]["class"]["mAP"] >= 0.7
    assert m["clip->image"]["class"]["queries"] == 60
    with pytest.raises(ValueError, match="label"):
        MultimodalRetriever(query="clip", target="image", label="clip")


def test_index_matches_exact_search_and_round_trips(aligned, data, tmp_path):
    from polymodal.retrieval import MultimodalRetriever
    from polymodal.retrieval.search import Searcher

    r = MultimodalRetriever.load(aligned)
    s = Searcher.build(r, data["gallery"], "image", tmp_path / "index")
    assert s.index.kind == "flat" and len(s.index) == 60
    gallery, _ = r.embed(data["gallery"], "image")
    query = r.embed_query(str(data["unique"].parent / "wav" / "4_2.wav"), "audio")
    hits = s.search("audio", str(data["unique"].parent / "wav" / "4_2.wav"), k=10)
    exact = np.argsort(-(gallery @ query), kind="stable")[:10]
    assert [h["id"] for h in hits] == exact.tolist()  # ids are the gallery's row numbers
    np.testing.assert_allclose([h["score"] for h in hits], (gallery @ query)[exact], atol=1e-5)
    assert hits[0]["image"] == pd.read_csv(data["gallery"])["image"][exact[0]]  # the row's columns come back

    # Add a table and remove rows, save, reload: the same answers, removed rows gone, new rows found.
    s.add(data["more"])
    s.remove([int(exact[0]), 5])
    s.save()
    again = Searcher.open(tmp_path / "index")
    assert len(again.index) == 60 + 12 - 2
    after = again.search("audio", str(data["unique"].parent / "wav" / "4_2.wav"), k=70)
    ids = [h["id"] for h in after]
    assert int(exact[0]) not in ids and 5 not in ids and set(range(60, 72)) <= set(ids)
    more, _ = r.embed(data["more"], "image")
    full = np.concatenate([gallery, more])
    order = [i for i in np.argsort(-(full @ query), kind="stable") if i not in (int(exact[0]), 5)]
    assert ids == [int(i) for i in order]
    with pytest.raises(ValueError, match="not in the index"):
        again.remove([999])

    # A filter still gives k results when that many rows match.
    filtered = again.search("text", "a blue thing", k=5, where="speaker == 'ann' and kind != 'red'")
    assert len(filtered) == 5 and all(h["speaker"] == "ann" and h["kind"] != "red" for h in filtered)
    with pytest.raises(ValueError, match="unknown column"):
        again.search("text", "a blue thing", where="nosuch == 1")
    with pytest.raises(ValueError, match="filter"):
        again.search("text", "a blue thing", where="__import__('os').system('true')")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_add_remove_reload(aligned, data, tmp_path, kind):
    from polymodal.retrieval.search import Searcher

    params = {"nlist": 4, "nprobe": 4} if kind == "ivf" else None
    s = Searcher.build(aligned, data["gallery"], "image", tmp_path / kind, kind=kind, params=params)
    top = s.search("text", "a green item", k=3)
    s.remove([top[0]["id"]])
    s.add(data["more"])
    s.save()
    again = Searcher.open(tmp_path / kind)
    assert again.index.kind == kind and len(again.index) == 60 - 1 + 12
    hits = again.search("text", "a green item", k=71)
    assert len(hits) == 71 and top[0]["id"] not in [h["id"] for h in hits]
    few = again.search("text", "a green item", k=3, where="speaker == 'bob'")
    assert len(few) == 3 and all(h["speaker"] == "bob" for h in few)


def test_index_from_another_model_is_refused(aligned, data, tmp_path):
    from safetensors.torch import load_file, save_file

    from polymodal.retrieval import IndexMismatch
    from polymodal.retrieval.search import Searcher

    Searcher.build(aligned, data["gallery"], "image", tmp_path / "index")
    other = tmp_path / "other"
    shutil.copytree(aligned, other)
    weights = load_file(str(other / "model.safetensors"))
    weights["logit_scale"] = weights["logit_scale"] + 1.0
    save_file(weights, str(other / "model.safetensors"))
    with pytest.raises(IndexMismatch, match="Rebuild it"):
        Searcher.open(tmp_path / "index", model=other)
    settings = json.loads((tmp_path / "index" / "settings.json").read_text())
    settings["model"] = str(other)
    (tmp_path / "index" / "settings.json").write_text(json.dumps(settings))
    result = CliRunner().invoke(app, ["search", str(tmp_path / "index"), "--text", "a red thing"])
    assert result.exit_code == 2 and "another space" in result.output.replace("\n", " ")


def test_cli_align_index_search_evaluate_report(data, tmp_path):
    run = CliRunner().invoke
    model, index = tmp_path / "r2", tmp_path / "r2" / "index"
    args = ["align", str(data["train"]), "--query", "clip", "--target", "image", "--label", "kind", "-o", str(model),
            "--max-epochs", "2", "--image-size", "16", "--sample-rate", "8000", "--embed-dim", "16",
            "--dim", "8"]  # fmt: skip
    result = run(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((model / "config.json").read_text())["kind"] == "aligned"
    result = run(app, ["index", str(model), str(data["gallery"]), "--column", "image"])
    assert result.exit_code == 0, result.output
    assert (index / "index.faiss").is_file() and (index / "metadata.jsonl").is_file()
    wav = str(data["unique"].parent / "wav" / "4_0.wav")
    result = run(app, ["search", str(index), "--audio", wav, "--k", "4", "--where", "speaker == 'ann'", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 4 and all(h["speaker"] == "ann" for h in hits)
    result = run(app, ["index", str(index), "--add", str(data["more"]), "--remove", str(hits[0]["id"])])
    assert result.exit_code == 0 and "added 12, removed 1" in result.output

    # Bad queries: clear errors, exit code 2.
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"not a png at all")
    for bad, message in [
        (["--text", "a red thing"], "no text column"),  # this model aligns audio and image only
        (["--image", str(corrupt)], "bad row"),
        (["--audio", str(tmp_path / "missing.wav")], "no such file"),
        (["--audio", wav, "--k", "0"], "k must be"),
        (["--audio", wav, "--image", str(corrupt)], "exactly one query"),
        (["--audio", wav, "--where", "speaker = 'ann'"], "filter"),
    ]:
        result = run(app, ["search", str(index), *bad])
        assert result.exit_code == 2, (bad, result.output)
        assert message in result.output.replace("\n", " "), (bad, result.output)

    result = run(app, ["evaluate", str(model), str(data["gallery"])])
    assert result.exit_code == 0, result.output
    test = json.loads((model / "metrics.json").read_text())["test"]
    assert {"instance", "class"} <= set(test["clip->image"]) and "mAP" in test["image->clip"]["class"]
    result = run(app, ["report", str(model), str(data["gallery"]), "-o", str(tmp_path / "report.html")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "Retrieval" in html and "recall@1" in html and "image-&gt;clip" in html


def test_align_settings_live_in_the_config_tree(aligned, data, tmp_path, monkeypatch):
    import yaml

    from polymodal.preprocess.augment import SpectralWarp
    from polymodal.retrieval import MultimodalRetriever

    warped = []
    original = SpectralWarp.__call__
    monkeypatch.setattr(SpectralWarp, "__call__", lambda self, x: warped.append(len(x)) or original(self, x))

    run = CliRunner().invoke
    cfg = tmp_path / "align.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"label": "kind"},
        "align": {"target": "image", "query": ["clip"], "dim": 12, "hidden": 16},
        "encoders": {"embed_dim": 16, "image": {"embed_dim": 24}},
        "preprocess": FAST["preprocess"],
        "train": {"max_epochs": 2, "batch_size": 32, "progress": False, "audio_warp": 0.2},
    }))  # fmt: skip
    model = tmp_path / "m"
    # The file names the columns; a flag and --set override it.
    result = run(app, ["align", str(data["train"]), "--config", str(cfg), "--set", "align.dim=8", "--lr", "0.002",
                       "-o", str(model)])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((model / "config.json").read_text())["config"]
    assert saved["align"] == {"target": "image", "query": ["clip"], "dim": 8, "hidden": 16, "dropout": 0.1,
                              "temperature": 0.07}  # fmt: skip
    assert saved["train"]["lr"] == 0.002 and saved["data"]["label"] == "kind"
    assert warped, "train.audio_warp warps the audio column's training batches"
    r = MultimodalRetriever.load(model)
    assert r.config_.get("align.dim") == 8 and r.label == "kind" and r.queries == ["clip"]
    assert r.net.encoders[r.net.keys["image"]].dim == 24 and r.net.encoders[r.net.keys["clip"]].dim == 16
    emb, _ = r.embed(data["more"], "image")
    assert emb.shape == (12, 8)

    # An unknown key names the closest valid one, before any training; so does a missing anchor.
    result = run(app, ["align", str(data["train"]), "--config", str(cfg), "--set", "align.dimm=8", "-o", str(model)])
    assert result.exit_code == 2 and "align.dim" in result.output, result.output
    with pytest.raises(ValueError, match="anchor column"):
        MultimodalRetriever(query="clip")

    # A folder written before the tree (settings as top-level keys) still loads, to the same model.
    old = tmp_path / "old"
    shutil.copytree(aligned, old)
    config = json.loads((old / "config.json").read_text())
    tree = config.pop("config")
    config.pop("config_format")
    config |= {"embed_dim": tree["encoders"]["embed_dim"], "train": tree["train"],
               "valid_fraction": tree["data"]["valid_fraction"]}  # fmt: skip
    config |= {k: tree["align"][k] for k in ("dim", "hidden", "dropout", "temperature")}
    (old / "config.json").write_text(json.dumps(config))
    a, b = MultimodalRetriever.load(aligned), MultimodalRetriever.load(old)
    assert b.config_.align == a.config_.align and b.train_config.lr == a.train_config.lr
    np.testing.assert_array_equal(a.embed(data["more"], "clip")[0], b.embed(data["more"], "clip")[0])


def test_serve_search(aligned, data, tmp_path):
    from fastapi.testclient import TestClient

    from polymodal.retrieval.search import Searcher
    from polymodal.serving import ServeConfig, create_app

    model = tmp_path / "served"
    shutil.copytree(aligned, model)
    with pytest.raises(ValueError, match="without an index"):
        create_app(ServeConfig(model=str(model), warmup=False))
    Searcher.build(model, data["gallery"], "image", model / "index")
    client = TestClient(create_app(ServeConfig(model=str(model), warmup=False, max_text_chars=100)))
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    folder = data["unique"].parent
    r = client.post("/v1/search", json={"audio": b64(folder / "wav" / "4_3.wav"), "k": 4, "where": "kind != 'red'"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["hits"]) == 4 and all(h["metadata"]["kind"] != "red" for h in body["hits"])
    direct = Searcher.open(model / "index").search("audio", str(folder / "wav" / "4_3.wav"), k=4, where="kind != 'red'")
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in direct]  # the same answer as Python
    media = client.get(body["hits"][0]["media"]["image"])
    assert media.status_code == 200 and media.headers["content-type"] == "image/png"
    assert client.post("/v1/search", json={"text": "a cyan object", "k": 2}).status_code == 200

    bad = [
        ({"text": ""}, 422, "empty"),
        ({"text": "red", "k": 0}, 422, "k must be"),
        ({"text": "red", "k": 5000}, 422, "k must be"),
        ({"image": base64.b64encode(b"garbage" * 20).decode()}, 422, "not an image"),
        ({"audio": b64(folder / "img" / "4_0.png")}, 422, "not an audio file"),
        ({"image": "%%%"}, 422, "base64"),
        ({"text": "x" * 101}, 413, "limit"),
        ({"text": "a", "image": b64(folder / "img" / "4_0.png")}, 422, "exactly one"),
        ({"video": "abc"}, 422, "unknown field"),
        ({"text": "red", "where": "speaker ="}, 422, "filter"),
    ]
    for payload, status, message in bad:
        r = client.post("/v1/search", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert message in r.json()["error"], (payload, r.json())
        assert r.json()["details"][0]["message"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="q-audio"' in page.text and 'id="q-text"' in page.text
    assert "media-src 'self' blob:" in page.headers["content-security-policy"]
    assert "showHits" in client.get("/static/search.js").text
    info = client.get("/v1/model").json()
    assert info["kind"] == "aligned" and info["index"]["rows"] == 60


def test_serve_search_wrong_modality(data, tmp_path):
    from fastapi.testclient import TestClient

    from polymodal.retrieval import MultimodalRetriever
    from polymodal.retrieval.search import Searcher
    from polymodal.serving import ServeConfig, create_app

    fast = FAST | {"max_epochs": 1}
    model = MultimodalRetriever(query="clip", target="image", **fast).fit(data["more"]).save(tmp_path / "m")
    Searcher.build(model, data["more"], "image", model / "index")
    client = TestClient(create_app(ServeConfig(model=str(model), warmup=False)))
    r = client.post("/v1/search", json={"text": "a red thing"})
    assert r.status_code == 422 and "no text input" in r.json()["error"]


def tiny_clip(folder: Path) -> Path:
    """A random CLIP with tiny towers and a word-level tokenizer, saved like a hub model (no network)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "photo", "of", "red", "green", "blue", "thing"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=16,
    ).save_pretrained(folder)  # fmt: skip
    config = CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_zero_shot_with_a_tiny_clip(data, tmp_path):
    clip = tiny_clip(tmp_path / "clip")
    out = tmp_path / "preds.csv"
    args = ["zero-shot", str(data["unique"]), "--image", "image", "--classes", "red, green,blue",
            "--template", "a photo of a {} thing", "--model", str(clip), "-o", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    proba = preds[["proba_red", "proba_green", "proba_blue"]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert len(preds) == 6 and set(preds["prediction"]) <= {"red", "green", "blue"}
    assert (preds["prediction"] == np.array(["red", "green", "blue"])[proba.argmax(axis=1)]).all()
    assert proba.std(axis=1).max() > 1e-4  # the classes' texts really differ

    for extra, message in [
        (["--classes", "red"], "at least two"),
        (["--template", "no placeholder"], "{}"),
        (["--image", "nosuch"], "missing"),
    ]:
        bad = [*args[:-2]] + extra
        result = CliRunner().invoke(app, bad)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)


def test_frozen_pretrained_text_through_the_feature_cache(data, tmp_path):
    from polymodal.retrieval import MultimodalRetriever
    from polymodal.retrieval.search import Searcher

    fast = FAST | {"max_epochs": 1}
    cache = tmp_path / "cache"
    r = MultimodalRetriever(query="caption", target="image", encoders={"text": "minilm"}, cache_dir=cache, **fast)
    r.fit(data["more"])
    assert r.metrics_["feature_cache"]["caption"]["misses"] == 12
    folder = r.save(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["encoders"]["caption"]["kind"] == "frozen" and config["encoders"]["image"]["kind"] == "scratch"
    loaded = MultimodalRetriever.load(folder, cache_dir=cache)
    emb, _ = loaded.embed(data["more"], "caption")  # every caption is in the cache now
    assert loaded.pipeline._extractors["caption"].stats == {"hits": 12, "misses": 0, "encode_seconds": 0.0}
    np.testing.assert_allclose(emb, r.embed(data["more"], "caption")[0], atol=1e-5)
    s = Searcher.build(loaded, data["more"], "caption", tmp_path / "index")
    hits = s.search("image", str(data["more"].parent / "img" / "3_0.png"), k=3)
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
