"""A real `polymodal serve --workers 2` process: the page driven in Debian's headless Chromium (selenium): a picture
chosen, dropped or taken with the camera, a sound recorded from the microphone (Chromium's fake devices: a test
pattern and a beep), typed fields, the bar chart; the offline API docs, and graceful shutdown. The shutdown test
stops the shared server, so it comes last."""

import base64
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
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_serving import INPUTS, b64, fit_model, instance, start_server

# Offline machine: without these Chromium stalls on background connections (sync, updates, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1000,1200",
    # A fake camera and microphone, allowed without asking: the photo and recording paths run for real.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
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
    Select(browser.find_element(By.CSS_SELECTOR, '[data-column="shade"]')).select_by_value("dark")
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


def open_page(browser, url: str) -> None:
    browser.get(url + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "predict-form").get_attribute("data-ready"))


def predict_and_read(browser) -> tuple[dict[str, float], str]:
    """Click Predict; (class -> probability from the bar chart, the inputs-used line)."""
    browser.find_element(By.ID, "predict").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "inputs-used") or d.find_elements(By.ID, "error"))
    assert not browser.find_elements(By.ID, "error"), browser.find_element(By.ID, "result").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities .row")
    shown = {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars}
    return shown, browser.find_element(By.ID, "inputs-used").text


def held(browser, column: str) -> bytes:
    """The bytes the page holds for a media column (what it uploads)."""
    script = """const done = arguments[arguments.length - 1]; const r = new FileReader();
      r.onload = () => done(r.result.split(",")[1]); r.readAsDataURL(window.polymodal.chosen.get(arguments[0]).blob);"""
    return base64.b64decode(browser.execute_async_script(script, column))


def api(url: str, inst: dict) -> dict:
    r = httpx.post(url + "/v1/predict", json={"instances": [inst]}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]


def wait_filled(browser, ident: str) -> None:
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, f"{ident}-zone").get_attribute("data-filled"))


def test_a_dropped_picture_is_previewed_and_predicted(server, browser):
    _, url, test, _ = server
    png = (test.parent / pd.read_csv(test).iloc[1]["image"]).read_bytes()
    open_page(browser, url)
    # Drag and drop, as a browser delivers it: a drop event whose DataTransfer holds the file.
    browser.execute_script(
        """const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true});
        document.getElementById("in-0-zone").dispatchEvent(drop);""",
        b64(png),
    )
    wait_filled(browser, "in-0")
    preview = browser.find_element(By.ID, "in-0-preview")
    assert preview.is_displayed() and preview.get_attribute("src").startswith("blob:")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].naturalWidth", preview) == 16)
    assert "dropped.png" in browser.find_element(By.ID, "in-0-name").text
    shown, used = predict_and_read(browser)
    assert shown == pytest.approx(api(url, {"image": b64(png)})["probabilities"], abs=1e-7)
    assert used.startswith("Used: image ·")
    # Clear empties the input: the picture is then a missing modality.
    browser.find_element(By.CSS_SELECTOR, '[data-action="clear"][data-for="in-0"]').click()
    assert not preview.is_displayed()
    browser.find_element(By.CSS_SELECTOR, '[data-column="caption"]').send_keys("a cat")
    assert predict_and_read(browser)[1].startswith("Used: caption ·")


def test_a_photo_from_the_camera_is_previewed_and_predicted(server, browser):
    url = server[1]
    open_page(browser, url)
    browser.find_element(By.CSS_SELECTOR, '[data-action="camera"]').click()
    live = browser.find_element(By.ID, "in-0-live")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].videoWidth", live) > 0)
    browser.find_element(By.CSS_SELECTOR, '[data-action="snap"]').click()
    wait_filled(browser, "in-0")
    assert not live.is_displayed() and browser.find_element(By.ID, "in-0-preview").is_displayed()
    photo = held(browser, "image")
    assert photo.startswith(b"\x89PNG")  # the camera frame, as PNG
    shown, used = predict_and_read(browser)
    assert shown == pytest.approx(api(url, {"image": b64(photo)})["probabilities"], abs=1e-7)
    assert used.startswith("Used: image ·")


def test_a_recording_from_the_microphone_is_played_back_decoded_and_predicted(server, browser):
    url = server[1]
    open_page(browser, url)
    record = browser.find_element(By.CSS_SELECTOR, '[data-action="record"]')
    record.click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "in-2-zone").get_attribute("data-recording"))
    assert record.text == "Stop"
    time.sleep(1.5)  # Chromium's fake microphone beeps
    record.click()
    wait_filled(browser, "in-2")
    assert record.text == "Record"
    player = browser.find_element(By.ID, "in-2-preview")
    assert player.is_displayed() and player.get_attribute("src").startswith("blob:")
    clip = held(browser, "clip")
    assert clip[:4] == b"\x1a\x45\xdf\xa3"  # WebM (Opus), which the server decodes with PyAV
    assert "recording.webm" in browser.find_element(By.ID, "in-2-name").text
    browser.find_element(By.CSS_SELECTOR, '[data-column="price"]').send_keys("2.5")
    shown, used = predict_and_read(browser)
    # The upload through the form and the same bytes as base64 through the JSON API are decoded alike.
    expected = api(url, {"clip": b64(clip), "price": 2.5})
    assert shown == pytest.approx(expected["probabilities"], abs=1e-7)
    assert used.startswith("Used: clip, tabular:numeric ·")


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
