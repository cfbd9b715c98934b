"""`polymodal serve` in process: endpoints, equality with `predict`, micro-batching, limits, bad inputs, API key.

A real server process (the page in a browser, workers, graceful shutdown) is tested in test_serving_browser.py.
"""

import asyncio
import base64
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import synth
from PIL import Image
from starlette.exceptions import StarletteDeprecationWarning

from polymodal import MultimodalPredictor
from polymodal.serving import ServeConfig, create_app, resolve_host
from polymodal.serving.batcher import MicroBatcher
from polymodal.serving.logs import ACCESS, JsonFormatter
from polymodal.serving.service import ModelService

with warnings.catch_warnings():
    # Starlette would rather its TestClient ran on httpx2; on httpx it works the same for these tests.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

COLUMNS = ["image", "caption", "clip", "price", "shade"]
INPUTS = ["image", "caption", "clip", "tabular:numeric", "tabular:categorical"]


# ---- shared helpers (the browser test imports them too) -----------------------------------------------------------
def fit_model(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, test.csv): one small early-fusion model on every modality, fitted once per session."""
    base = tmp_path_factory.getbasetemp() / "serving"
    model, test = base / "model", base / "data" / "test.csv"
    if not (model / "config.json").exists():
        train, test = synth.write_split(base / "data", n_train=120, n_test=24)
        kw = dict(synth.FAST, max_epochs=3)
        MultimodalPredictor(label="y", fusion="early", ignore=["score"], **kw).fit(train).save(model)
    return model, test


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def instance(row, base: Path) -> dict:
    """A JSON instance built from a row of the test table: files sent by value."""
    return {
        "image": b64((base / row["image"]).read_bytes()),
        "caption": row["caption"],
        "clip": b64((base / row["clip"]).read_bytes()),
        "price": float(row["price"]),
        "shade": row["shade"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`polymodal serve` in a subprocess on a free loopback port, output to `log`; returns once /ready is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "polymodal", "serve", str(model), "--port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready:\n" + log.read_text())


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.05)


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_and_test(tmp_path_factory):
    return fit_model(tmp_path_factory)


@pytest.fixture(scope="session")
def service(model_and_test):
    return ModelService(model_and_test[0])


@pytest.fixture(scope="session")
def table(model_and_test):
    test = model_and_test[1]
    return pd.read_csv(test), test.parent


@pytest.fixture(scope="module")
def client(service, model_and_test):
    app = create_app(ServeConfig(model=str(model_and_test[0])), service)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def limited(service, model_and_test):
    config = ServeConfig(
        model=str(model_and_test[0]), max_body_bytes=60_000, max_instances=3, max_image_pixels=10_000,
        max_audio_seconds=1.0, max_text_chars=100,
    )  # fmt: skip
    with TestClient(create_app(config, service)) as c:
        wait_ready(c)
        yield c


def details(r: httpx.Response) -> list[dict]:
    body = r.json()
    assert set(body) == {"error", "details"} and body["details"], body
    return body["details"]


def one_detail(r: httpx.Response, status: int, instance, field, limit=None) -> dict:
    assert r.status_code == status, r.text
    (d,) = details(r)
    assert (d["instance"], d["field"], d["limit"]) == (instance, field, limit), d
    return d


# ---- predictions ------------------------------------------------------------------------------------------------
def test_server_predictions_equal_predict(client, table, model_and_test):
    df, base = table
    rows = df.head(10)
    r = client.post("/v1/predict", json={"instances": [instance(row, base) for _, row in rows.iterrows()]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = MultimodalPredictor.load(model_and_test[0]).predict_proba(model_and_test[1]).head(10)
    got = np.array([[p["probabilities"][c] for c in expected.columns] for p in preds])
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-5)
    assert [p["prediction"] for p in preds] == [int(c) for c in expected.idxmax(axis=1)]
    assert all(p["inputs_used"] == INPUTS and p["inputs_missing"] == [] for p in preds)


def test_form_upload_equals_json(client, table):
    df, base = table
    row = df.iloc[3]
    files = {"image": ("x.png", (base / row["image"]).read_bytes(), "image/png"),
             "clip": ("y.wav", (base / row["clip"]).read_bytes(), "audio/wav")}  # fmt: skip
    form = {"caption": row["caption"], "price": str(row["price"]), "shade": row["shade"]}
    r = client.post("/v1/predict/form", data=form, files=files)
    assert r.status_code == 200, r.text
    j = client.post("/v1/predict", json={"instances": [instance(row, base)]}).json()
    (p,), (q,) = r.json()["predictions"], j["predictions"]
    assert p["prediction"] == q["prediction"] and p["inputs_used"] == INPUTS
    np.testing.assert_allclose(list(p["probabilities"].values()), list(q["probabilities"].values()), atol=1e-6)


def test_missing_modalities_are_accepted_and_reported(client, table, model_and_test):
    df, base = table
    rows = df.head(4)
    insts = [{"caption": c} for c in rows["caption"]]
    insts[1]["image"] = None  # null and absent mean the same
    insts[2]["shade"] = ""  # so does an empty value
    r = client.post("/v1/predict", json={"instances": insts})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert all(p["inputs_used"] == ["caption"] for p in preds)
    assert preds[0]["inputs_missing"] == ["image", "clip", "tabular:numeric", "tabular:categorical"]
    # The same as `predict` on a table that has only the caption column.
    expected = MultimodalPredictor.load(model_and_test[0]).predict_proba(rows[["caption"]])
    got = np.array([[p["probabilities"][c] for c in expected.columns] for p in preds])
    np.testing.assert_allclose(got, expected.to_numpy(), atol=1e-5)
    # Form: only an image upload.
    image = (base / df.iloc[0]["image"]).read_bytes()
    r = client.post("/v1/predict/form", files={"image": ("a.png", image, "image/png")})
    assert r.status_code == 200 and r.json()["predictions"][0]["inputs_used"] == ["image"], r.text


def test_concurrent_requests_share_a_forward_pass_and_get_their_own_answers(service, model_and_test, table):
    df, base = table
    config = ServeConfig(model=str(model_and_test[0]), max_batch_size=32, max_wait_ms=200, warmup=False)
    app = create_app(config, service)
    insts = [instance(row, base) for _, row in df.head(8).iterrows()]

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                rs = await asyncio.gather(*[c.post("/v1/predict", json={"instances": [i]}) for i in insts])
                together = await c.post("/v1/predict", json={"instances": insts})
                return rs, together, (await c.get("/metrics")).text

    rs, together, metrics = asyncio.run(go())
    assert all(r.status_code == 200 for r in rs)
    alone, both = [r.json()["predictions"][0] for r in rs], together.json()["predictions"]
    assert [p["prediction"] for p in alone] == [p["prediction"] for p in both]
    np.testing.assert_allclose(
        [list(p["probabilities"].values()) for p in alone], [list(p["probabilities"].values()) for p in both], atol=1e-6
    )
    assert len({json.dumps(p["probabilities"]) for p in alone}) == 8  # each request got its own row's answer
    # The 8 concurrent requests went through fewer forward passes than requests.
    count = float(next(x for x in metrics.splitlines() if x.startswith("polymodal_batch_requests_count")).split()[-1])
    total = float(next(x for x in metrics.splitlines() if x.startswith("polymodal_batch_requests_sum")).split()[-1])
    assert total == 9 and count < 9, metrics


def test_batcher_groups_up_to_max_batch_size_off_the_event_loop():
    calls: list[tuple[list[int], str]] = []

    def run(payloads):
        calls.append(([len(p) for p in payloads], threading.current_thread().name))
        return [ValueError("bad") if p[0] == "bad" else [x * 10 for x in p] for p in payloads]

    async def go(max_batch_size, payloads):
        b = MicroBatcher(run, max_batch_size=max_batch_size, max_wait_ms=100)
        b.start()
        results = await asyncio.gather(*[b.submit(p) for p in payloads], return_exceptions=True)
        await b.close()
        return results

    results = asyncio.run(go(4, [[i] for i in range(10)]))
    assert results == [[i * 10] for i in range(10)]
    assert [sizes for sizes, _ in calls] == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1]]
    assert all(name.startswith("polymodal-model") for _, name in calls)
    calls.clear()
    # A request is never split; one that raises fails alone; batching off = one request per pass.
    results = asyncio.run(go(1, [[1, 2], ["bad"], [3]]))
    assert results[0] == [10, 20] and isinstance(results[1], ValueError) and results[2] == [30]
    assert [sizes for sizes, _ in calls] == [[2], [1], [1]]


def test_a_lone_request_runs_at_once_and_requests_queued_meanwhile_share_the_next_pass():
    """Adaptive batching (max_wait_ms=0): no waiting for company when the model is free; what arrives while it
    is busy forms the next batch."""
    calls: list[list[int]] = []
    release = threading.Event()

    def run(payloads):
        calls.append([p[0] for p in payloads])
        if len(calls) == 1:
            assert release.wait(30)  # the model is busy with the first request until released
        return payloads

    async def go():
        b = MicroBatcher(run, max_batch_size=32, max_wait_ms=0)
        b.start()
        first = asyncio.create_task(b.submit([0]))
        while not calls:  # the first request went to the model alone, without waiting
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(b.submit([i])) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        assert calls == [[0]]  # the others wait for the model, not for a timer
        release.set()
        out = [await first] + [await t for t in rest]
        await b.close()
        return out

    assert asyncio.run(go()) == [[i] for i in range(6)]
    assert calls == [[0], [1, 2, 3, 4, 5]]


def test_a_request_alone_at_light_load_runs_inline_and_close_arrivals_batch():
    """run_inline: a request alone, with the previous one more than a pass ago, runs on the calling thread (no
    thread hops); one that follows close behind a pass, one with requests queued or a pass running, or any under
    a set max_wait_ms, is left to the model thread (NOT_RUN) so that batches form under load."""
    from polymodal.serving.batcher import NOT_RUN

    threads: list[str] = []

    def run(payloads):
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # a pass takes 50 ms
        return [[x * 10 for x in p] for p in payloads]

    async def go():
        b = MicroBatcher(run, max_batch_size=32, max_wait_ms=0)
        b.start()
        b.reserve(1)
        first = b.run_inline([1])  # the first request: nothing before it
        b.release(1)
        b.reserve(1)  # right after a 50 ms pass: closer than a pass
        second = b.run_inline([2])
        third = await b.submit([2]) if second is NOT_RUN else None
        b.release(1)
        await asyncio.sleep(0.08)
        b.reserve(1)  # 80 ms later: light load again
        fourth = b.run_inline([4])
        b.release(1)
        b._pending.append(object())  # something queued: never inline
        queued = b.run_inline([5])
        b._pending.clear()
        await b.close()
        waiting = MicroBatcher(run, max_wait_ms=5)  # a set wait asks for company: never inline
        return first, second, third, fourth, queued, waiting.run_inline([6])

    first, second, third, fourth, queued, waiting = asyncio.run(go())
    assert first == [10] and fourth == [40]
    assert second is NOT_RUN and third == [20] and queued is NOT_RUN and waiting is NOT_RUN
    main = threading.current_thread().name
    assert len(threads) == 3, threads
    assert threads[0] == threads[2] == main and threads[1].startswith("polymodal-model")


def test_admission_is_bounded_503_with_retry_after(service, model_and_test):
    # One row may be admitted; the first request waits 300 ms for company, the second is refused at once.
    config = ServeConfig(model=str(model_and_test[0]), max_queue=1, max_wait_ms=300, warmup=False)
    app = create_app(config, service)

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/predict", json={"instances": [{"caption": "a cat"}]}))
                while not app.state.serving.batcher._pending:
                    await asyncio.sleep(0.005)
                second = await c.post("/v1/predict", json={"instances": [{"caption": "a dog"}]})
                assert not first.done()  # refused while the first still waits: no queueing behind it
                return await first, second, (await c.get("/metrics")).text

    first, second, metrics = asyncio.run(go())
    assert first.status_code == 200
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
    assert "busy" in second.json()["error"] and "limit 1" in second.json()["error"]
    assert 'status="503"' in metrics


def test_batcher_close_answers_what_is_queued():
    async def go():
        b = MicroBatcher(lambda ps: [p for p in ps], max_batch_size=2, max_wait_ms=10_000)
        b.start()
        tasks = [asyncio.create_task(b.submit([i])) for i in range(5)]
        await asyncio.sleep(0)
        await b.close()  # must not wait 10 s for the batch to fill, nor drop anything
        return [t.result() for t in tasks]

    assert asyncio.run(go()) == [[0], [1], [2], [3], [4]]


def test_a_request_that_crashes_the_model_fails_alone(service, table):
    df, base = table
    row = dict.fromkeys(COLUMNS) | {"caption": df.iloc[0]["caption"]}
    good = service.decode([row])
    broken = service.decode([row])
    broken.media["image"] = [np.zeros((2, 2), np.uint8)]  # a shape no preprocessing can take
    out = service.run([good, broken, good])
    assert isinstance(out[0], list) and isinstance(out[2], list) and out[0] == out[2]
    assert out[1].status == 422 and "could not be processed" in out[1].errors[0].message


def test_a_file_that_crashes_its_decoder_fails_alone(service, model_and_test, table, monkeypatch):
    df, base = table
    png_bytes = (base / df.iloc[0]["image"]).read_bytes()
    real = service.decoders["image"]
    poison = png(3, 3)  # a valid picture this decoder chokes on, as a library bug would

    def fragile(data):
        if data == poison:
            raise RuntimeError("a decoder bug")
        return real(data)

    monkeypatch.setitem(service.decoders, "image", fragile)
    config = ServeConfig(model=str(model_and_test[0]), warmup=False)
    with TestClient(create_app(config, service)) as c:
        bad = c.post("/v1/predict", json={"instances": [{"image": b64(poison)}]})
        good = c.post("/v1/predict", json={"instances": [{"image": b64(png_bytes)}]})
    assert bad.status_code == 422 and "could not be processed" in bad.json()["error"]
    assert good.status_code == 200 and good.json()["predictions"][0]["inputs_used"] == ["image"]


# ---- the other endpoints ----------------------------------------------------------------------------------------
def test_health_ready_model_metrics_docs(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["pid"] == os.getpid()
    assert client.get("/ready").json() == {"ready": True}
    m = client.get("/v1/model").json()
    assert [(i["name"], i["modality"]) for i in m["inputs"]] == list(
        zip(COLUMNS, ["image", "text", "audio", "numeric", "categorical"], strict=True)
    )
    assert m["classes"] == [0, 1, 2, 3] and m["label"] == "y" and m["fusion"] == "early"
    assert m["fusion_inputs"]["tabular:numeric"] == ["price"] and "accuracy" in m["metrics"]["valid"]
    assert m["limits"]["max_instances"] == 64 and set(m["categories"]["shade"]) == {"light", "dark", "mid"}
    client.post("/v1/predict", json={"instances": [{"caption": "a cat"}]})
    text = client.get("/metrics").text
    for name in ("polymodal_requests_total", "polymodal_request_latency_seconds_bucket",
                 "polymodal_batch_size_bucket", "polymodal_requests_in_flight"):  # fmt: skip
        assert name in text, name
    assert 'polymodal_requests_total{endpoint="/v1/predict",method="POST",status="200"}' in text
    spec = client.get("/openapi.json").json()
    instance = spec["components"]["schemas"]["Instance"]
    assert list(instance["properties"]) == COLUMNS and instance["additionalProperties"] is False
    assert instance["properties"]["image"]["contentEncoding"] == "base64"
    assert "multipart/form-data" in spec["paths"]["/v1/predict/form"]["post"]["requestBody"]["content"]
    docs = client.get("/docs").text
    assert "static/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static/swagger-ui-bundle.js").status_code == 200


def test_page_is_generated_from_the_schema_and_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    page = r.text
    assert 'type="file" id="in-0" name="image"' in page and 'accept="image/*"' in page
    assert 'data-action="camera" data-for="in-0"' in page and '<img class="preview" id="in-0-preview"' in page
    assert '<textarea id="in-1" name="caption"' in page and 'accept="audio/*"' in page
    assert 'data-action="record" data-for="in-2"' in page and '<audio class="preview" id="in-2-preview"' in page
    assert 'type="number" step="any" id="in-3" name="price"' in page
    # A category is a select of the known values, with an empty choice for a missing one.
    assert '<select id="in-4" name="shade"' in page and '<option value="">(missing)</option>' in page
    assert '<option value="dark">dark</option>' in page
    assert 'id="api-key"' not in page
    # Previews and players of what the user chose or recorded are blob: URLs; nothing else is allowed in.
    assert "img-src 'self' blob:" in r.headers["content-security-policy"]
    assets = [client.get(u) for u in ("/static/page.js", "/static/page.css")]
    assert all(a.status_code == 200 for a in assets)
    for text in [page, *(a.text for a in assets)]:
        assert "http://" not in text and "https://" not in text  # nothing from elsewhere


def test_access_log_is_json_with_request_id(client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger(ACCESS).addHandler(handler)
    try:
        r = client.get("/health", headers={"X-Request-ID": "req-42"})
    finally:
        logging.getLogger(ACCESS).removeHandler(handler)
    assert r.headers["x-request-id"] == "req-42"
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event"] == "access" and line["path"] == "/health" and line["status"] == 200
    assert line["request_id"] == "req-42" and line["duration_ms"] >= 0 and line["method"] == "GET"


# ---- limits: each a 4xx naming instance, field and limit ---------------------------------------------------------
def png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def wav(seconds: float, sr: int = 8000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * sr), dtype=np.float32), sr, format="WAV")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: decoding it would need gigabytes."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_limits(limited):
    ok = {"caption": "a cat"}
    r = limited.post("/v1/predict", json={"instances": [ok, {"image": b64(png(101, 100))}]})
    d = one_detail(r, 413, 1, "image", 10_000)
    assert "10100 pixels" in d["message"]
    r = limited.post("/v1/predict", json={"instances": [ok, ok, {"image": b64(bomb_png(60_000, 60_000))}]})
    one_detail(r, 413, 2, "image", 10_000)
    r = limited.post("/v1/predict", json={"instances": [ok, {"clip": b64(wav(1.5))}]})
    assert "1.5 seconds" in one_detail(r, 413, 1, "clip", 1.0)["message"]
    r = limited.post("/v1/predict", json={"instances": [{"caption": "x" * 101}]})
    assert "101 characters" in one_detail(r, 413, 0, "caption", 100)["message"]
    r = limited.post("/v1/predict/form", data={"caption": "x" * 101})
    one_detail(r, 413, 0, "caption", 100)
    r = limited.post("/v1/predict", json={"instances": [ok] * 4})
    assert "4 instances" in one_detail(r, 413, None, "instances", 3)["message"]
    # Body size: by Content-Length, and for a chunked body with no length, while it streams in.
    big = json.dumps({"instances": [{"caption": "y" * 70_000}]}).encode()
    r = limited.post("/v1/predict", content=big, headers={"content-type": "application/json"})
    assert "70" in one_detail(r, 413, None, None, 60_000)["message"]
    assert r.headers["connection"] == "close"  # the connection is not reused after an unread body
    r = limited.post(
        "/v1/predict", content=iter([big[:30_000], big[30_000:]]), headers={"content-type": "application/json"}
    )
    one_detail(r, 413, None, None, 60_000)
    r = limited.post("/v1/predict/form", files={"image": ("a.png", b"\0" * 70_000, "image/png")})
    assert r.status_code == 413, r.text
    # Within the limits all is well.
    r = limited.post("/v1/predict", json={"instances": [ok, {"image": b64(png(100, 100)), "clip": b64(wav(0.9))}]})
    assert r.status_code == 200, r.text


# ---- bad inputs: 422 with the same detail, never a 5xx -----------------------------------------------------------
def test_bad_inputs_are_422_naming_instance_and_field(client, table):
    df, base = table
    good = instance(df.iloc[0], base)
    png_bytes = (base / df.iloc[0]["image"]).read_bytes()
    cases = [
        ({"image": b64(b"not an image at all")}, "image", "not an image"),
        ({"image": b64(png_bytes[: len(png_bytes) // 2])}, "image", "corrupt image"),  # header fine, data cut
        ({"image": "%%%not base64%%%"}, "image", "not valid base64"),
        ({"image": b64(b"P6\n1 1\n255\n\xff\x00\x00")}, "image", "accepted: PNG, JPEG"),  # PPM: not accepted
        ({"clip": b64(b"RIFF....WAVEfmt garbage")}, "clip", "not an audio file"),
        ({"clip": b64(wav(0.0))}, "clip", "audio has no samples"),  # a valid header over no data
        ({"price": "3.5"}, "price", "expected a finite number, got a string"),
        ({"price": True}, "price", "expected a finite number, got a boolean"),
        ({"caption": 12}, "caption", "expected a string, got a number"),
        ({"shade": ["dark"]}, "shade", "expected a string, number or boolean, got a list"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"y": 1}, "y", "unknown field"),  # the label is not an input
    ]
    for bad, field, message in cases:
        r = client.post("/v1/predict", json={"instances": [good, good | bad]})
        d = one_detail(r, 422, 1, field)
        assert message in d["message"], (bad, d)
    # Requests that are wrong as a whole.
    for body, field, message in [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b'{"instances": []}', "instances", "at least one"),
        (b'{"rows": []}', "instances", 'needs an "instances" list'),
        (b'{"instances": [1]}', None, "must be an object"),
        (b'{"instances": [{"price": NaN}]}', "price", "finite number"),
    ]:
        r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert any(d["field"] == field and message in d["message"] for d in details(r)), (body, r.text)
    # Form endpoint.
    r = client.post("/v1/predict/form", data={"price": "cheap"})
    assert "expected a finite number" in one_detail(r, 422, 0, "price")["message"]
    r = client.post("/v1/predict/form", data={"colour": "red"})
    assert "unknown field" in one_detail(r, 422, 0, "colour")["message"]
    r = client.post("/v1/predict/form", files={"caption": ("c.txt", b"a cat", "text/plain")})
    assert "not a file" in one_detail(r, 422, 0, "caption")["message"]
    r = client.post("/v1/predict/form", files=[("image", ("a.png", png_bytes)), ("image", ("b.png", png_bytes))])
    assert "more than once" in one_detail(r, 422, 0, "image")["message"]
    r = client.post("/v1/predict/form", content=b"caption=a", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and details(r)
    # After all that the server answers normally.
    assert client.post("/v1/predict", json={"instances": [good]}).status_code == 200
    # An absurd but finite number is clipped by the preprocessing (standardized to +-100), not an error.
    r = client.post("/v1/predict", json={"instances": [good | {"price": 1e308}]})
    assert r.status_code == 200 and abs(sum(r.json()["predictions"][0]["probabilities"].values()) - 1) < 1e-4


def test_a_string_in_a_media_field_is_never_opened_as_a_path(client, table, monkeypatch):
    import polymodal.data.validate as validate

    df, base = table
    opened = []
    monkeypatch.setattr(validate, "resolve_path", lambda *a: opened.append(a))
    path = str((base / df.iloc[0]["image"]).resolve())
    for value in (path, "file://" + path, "http://127.0.0.1:1/x.png"):
        r = client.post("/v1/predict", json={"instances": [{"image": value}]})
        assert r.status_code == 422 and details(r)[0]["field"] == "image", r.text
        r = client.post("/v1/predict/form", data={"image": value})
        assert r.status_code == 422, r.text
    assert opened == []


def test_api_key(service, model_and_test, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEY", "s3cret-key")
    config = ServeConfig(model=str(model_and_test[0]), api_key_env="TEST_SERVE_KEY", warmup=False)
    with TestClient(create_app(config, service)) as c:
        body = {"instances": [{"caption": "a dog"}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}):  # fmt: skip
            r = c.post("/v1/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert "Authorization: Bearer" in r.json()["error"]
        assert c.get("/v1/model").status_code == 401
        assert c.post("/v1/predict/form", data={"caption": "a dog"}).status_code == 401
        # Without the key, not even the error message of a bad body is shown.
        assert c.post("/v1/predict", content=b"{oops", headers={"content-type": "application/json"}).status_code == 401
        key = {"Authorization": "Bearer s3cret-key"}
        assert c.post("/v1/predict", json=body, headers=key).status_code == 200
        assert c.get("/v1/model", headers=key).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert 'id="api-key"' in c.get("/", headers=key).text
        spec = c.get("/openapi.json", headers=key).json()
        assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])
    with pytest.raises(ValueError, match="unset or empty"):
        ServeConfig(model=str(model_and_test[0]), api_key_env="TEST_SERVE_KEY_UNSET")


def test_default_host_is_loopback_without_a_key(tmp_path):
    host, notice = resolve_host(None, api_key_required=False)
    assert host == "127.0.0.1" and "127.0.0.1 only" in notice
    assert resolve_host(None, api_key_required=True)[0] == "0.0.0.0"
    assert "WARNING" in resolve_host("0.0.0.0", api_key_required=False)[1]
    from typer.testing import CliRunner

    from polymodal.cli import app

    r = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert r.exit_code == 2 and "not a model folder" in r.output
