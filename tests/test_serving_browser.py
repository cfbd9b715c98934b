"""A real `polymodal serve --workers 2` process: the page driven in Debian's headless Chromium (selenium), the
offline API docs, and graceful shutdown. The shutdown test stops the shared server, so it comes last."""

import json
import re
import signal
import socket
import time

import httpx
import pandas as pd
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_serving import INPUTS, b64, fit_model, instance, start_server

# Offline machine: without these Chromium stalls on background connections (sync, updates, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,1200",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model, test = fit_model(tmp_path_factory)
    log = tmp_path_factory.mktemp("browser-server") / "server.log"
    proc, url = start_server(model, log, "--workers", "2")
    yield proc, url, test, log
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"  # Debian's; Selenium Manager must not download one
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_predicts_with_an_uploaded_image_and_shows_probability_bars(server, browser):
    _, url, test, _ = server
    row = pd.read_csv(test).iloc[0]
    image = (test.parent / row["image"]).resolve()
    browser.get(url + "/")
    labels = [e.text.split()[0] for e in browser.find_elements(By.CSS_SELECTOR, "form label")]
    assert labels == ["image", "caption", "clip", "price", "shade"]
    browser.find_element(By.CSS_SELECTOR, '[data-column="caption"]').send_keys(row["caption"])
    browser.find_element(By.CSS_SELECTOR, '[data-column="image"]').send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, '[data-column="price"]').send_keys("9.5")
    browser.find_element(By.CSS_SELECTOR, '[data-column="shade"]').send_keys("dark")
    browser.find_element(By.ID, "predict").click()  # the audio input stays empty: a missing modality
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#probabilities .row"))

    bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities .row")
    shown = {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars}
    assert sorted(shown) == ["0", "1", "2", "3"] and abs(sum(shown.values()) - 1) < 1e-5
    assert list(shown.values()) == sorted(shown.values(), reverse=True)  # most likely class first
    widths = [b.find_element(By.CSS_SELECTOR, ".bar").get_attribute("style") for b in bars]
    assert all("width:" in w for w in widths)
    # The page shows exactly what the JSON API answers for the same inputs.
    inst = {"image": b64(image.read_bytes()), "caption": row["caption"], "price": 9.5, "shade": "dark"}
    (expected,) = httpx.post(url + "/v1/predict", json={"instances": [inst]}).json()["predictions"]
    assert shown == pytest.approx(expected["probabilities"], abs=1e-7)
    assert browser.find_element(By.ID, "prediction").text == f"Prediction: {expected['prediction']}"
    used = browser.find_element(By.ID, "inputs-used").text
    assert "image" in used and "caption" in used and "missing: clip" in used


def test_page_shows_the_error_for_a_corrupt_upload(server, browser, tmp_path):
    url = server[1]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a picture")
    browser.get(url + "/")
    browser.find_element(By.CSS_SELECTOR, '[data-column="image"]').send_keys(str(bad))
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error"))
    text = browser.find_element(By.ID, "error").text
    assert "Error 422" in text and "image: not an image" in text
    assert not browser.find_elements(By.ID, "probabilities")


def test_api_docs_render_offline(server, browser):
    browser.get(server[1] + "/docs")  # Swagger UI from the app itself; this machine has no internet
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/predict", "/v1/predict/form", "/v1/model", "/health", "/ready", "/metrics"} <= paths


def in_flight(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(re.search(r"^polymodal_requests_in_flight (\S+)$", text, re.M).group(1))


def test_sigterm_finishes_the_request_in_flight_then_stops(server):
    """Last: it stops the shared server."""
    proc, url, test, log = server
    body = json.dumps({"instances": [instance(pd.read_csv(test).iloc[0], test.parent)]}).encode()
    port = int(url.rsplit(":", 1)[1])
    head = f"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        # Headers and half the body: the request is in flight until the rest arrives.
        s.sendall((head + "Connection: close\r\n\r\n").encode() + body[:100])
        deadline = time.monotonic() + 20
        while in_flight(url) < 2:  # this request, and the /metrics scrape itself (summed over both workers)
            assert time.monotonic() < deadline, "the request never showed as in flight"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        while "Waiting for connections to close" not in log.read_text():  # shutdown has begun, our request holds it
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        s.sendall(body[100:])
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    status, _, payload = response.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), response[:500]
    assert json.loads(payload)["predictions"][0]["inputs_used"] == INPUTS
    assert proc.wait(30) in (0, -signal.SIGTERM)
    out = log.read_text()
    events = [json.loads(x).get("event") for x in out.splitlines() if x.startswith("{")]
    assert events.count("ready") == 2 and events.count("stop") == 2, out  # both workers, both stopped cleanly
    assert "died" not in out and "Traceback" not in out
