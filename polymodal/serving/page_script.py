"""The script of the prediction page (polymodal/serving/page.py), served as /static/page.js.

Media inputs keep what the user chose, dropped, photographed or recorded as a Blob per column; the form endpoint
receives it as a file upload, like any file. Results: a bar chart of the class probabilities, the generated text,
or the predicted value.
"""

PAGE_JS = r"""
"use strict";
(function () {
  const form = document.getElementById("predict-form");
  const result = document.getElementById("result");
  const button = document.getElementById("predict");
  const chosen = new Map();  // column -> {blob, name}: a file, a drop, a photo or a recording
  const EXTENSIONS = { "audio/webm": "webm", "audio/ogg": "ogg", "audio/mp4": "m4a", "audio/wav": "wav",
                       "image/png": "png", "image/jpeg": "jpg" };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function part(zone, cls) { return zone.querySelector("." + cls); }
  function action(zone, name) { return zone.querySelector('[data-action="' + name + '"]'); }

  // ---- media inputs: choose, drop, take a photo, record ---------------------------------------------------------
  function setMedia(input, blob, name) {
    const zone = input.closest(".media");
    const preview = part(zone, "preview");
    if (preview.src) URL.revokeObjectURL(preview.src);
    chosen.set(input.name, { blob: blob, name: name });
    preview.src = URL.createObjectURL(blob);
    preview.hidden = false;
    action(zone, "clear").hidden = false;
    part(zone, "filename").textContent = name + " · " + Math.max(1, Math.round(blob.size / 1024)) + " KB";
    zone.dataset.filled = "true";
  }

  function clearMedia(input) {
    const zone = input.closest(".media");
    const preview = part(zone, "preview");
    chosen.delete(input.name);
    input.value = "";
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
    action(zone, "clear").hidden = true;
    part(zone, "filename").textContent = "";
    delete zone.dataset.filled;
  }

  function fail(message) { showError({ error: message }, "in the page"); }

  async function camera(input, zone) {
    const video = part(zone, "live");
    const snap = action(zone, "snap");
    if (video.srcObject) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (err) {
      fail("no camera: " + err.message);
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    snap.hidden = false;
    await video.play();
    zone.dataset.camera = "live";
    snap.onclick = () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      stream.getTracks().forEach((t) => t.stop());
      video.srcObject = null;
      video.hidden = true;
      snap.hidden = true;
      delete zone.dataset.camera;
      canvas.toBlob((blob) => setMedia(input, blob, "photo.png"), "image/png");
    };
  }

  function recorderType() {
    for (const t of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"]) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(t)) return t;
    }
    return "";
  }

  async function record(input, zone, btn) {
    if (zone.recorder) {  // second click: stop
      zone.recorder.stop();
      return;
    }
    if (!window.MediaRecorder) {
      fail("this browser cannot record sound");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      fail("no microphone: " + err.message);
      return;
    }
    const type = recorderType();
    const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
    const chunks = [];
    const clock = part(zone, "recording");
    const limit = parseFloat(zone.dataset.maxSeconds) || 60;
    const started = Date.now();
    const tick = setInterval(() => {
      const s = (Date.now() - started) / 1000;
      clock.textContent = "● recording " + s.toFixed(1) + " s";
      if (s >= limit) recorder.stop();
    }, 100);
    recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
    recorder.onstop = () => {
      clearInterval(tick);
      stream.getTracks().forEach((t) => t.stop());
      zone.recorder = null;
      btn.textContent = "Record";
      btn.classList.remove("active");
      clock.hidden = true;
      delete zone.dataset.recording;
      const mime = (recorder.mimeType || type || "audio/webm").split(";")[0];
      const blob = new Blob(chunks, { type: mime });
      setMedia(input, blob, "recording." + (EXTENSIONS[mime] || "webm"));
    };
    zone.recorder = recorder;
    recorder.start(250);
    btn.textContent = "Stop";
    btn.classList.add("active");
    clock.hidden = false;
    zone.dataset.recording = "true";
  }

  for (const zone of document.querySelectorAll(".media")) {
    const input = zone.querySelector("input[type=file]");
    const kind = zone.dataset.kind;
    input.addEventListener("change", () => {
      if (input.files.length) setMedia(input, input.files[0], input.files[0].name);
    });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragover"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragover"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragover");
      const file = e.dataTransfer.files[0];
      if (!file) return;
      if (file.type && !file.type.startsWith(kind + "/")) {
        fail(input.name + ": drop a " + kind + " file, not " + file.type);
        return;
      }
      setMedia(input, file, file.name);
    });
    zone.addEventListener("click", (e) => {
      const btn = e.target.closest("button[data-action]");
      if (!btn) return;
      if (btn.dataset.action === "clear") clearMedia(input);
      else if (btn.dataset.action === "camera") camera(input, zone);
      else if (btn.dataset.action === "record") record(input, zone, btn);
    });
    if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {  // no camera or microphone here
      for (const name of ["camera", "record"]) { const b = action(zone, name); if (b) b.hidden = true; }
    }
  }

  // ---- results ---------------------------------------------------------------------------------------------------
  function showError(body, status) {
    result.replaceChildren();
    const box = el("div", "error");
    box.id = "error";
    box.appendChild(el("strong", "", "Error " + status + ": " + (body.error || "request failed")));
    const list = el("ul");
    for (const d of body.details || []) {
      list.appendChild(el("li", "", (d.field ? d.field + ": " : "") + d.message));
    }
    box.appendChild(list);
    result.appendChild(box);
  }

  function bars(probabilities) {
    const entries = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
    const chart = el("div");
    chart.id = "probabilities";
    chart.setAttribute("role", "img");
    chart.setAttribute("aria-label", "class probabilities");
    entries.forEach(([cls, prob], i) => {
      const row = el("div", i === 0 ? "row top" : "row");
      row.dataset.class = cls;
      row.dataset.probability = String(prob);
      row.appendChild(el("span", "label", cls));
      const track = el("div", "track");
      const bar = el("div", "bar");
      bar.style.width = (100 * prob).toFixed(1) + "%";
      track.appendChild(bar);
      row.appendChild(track);
      row.appendChild(el("span", "value", (100 * prob).toFixed(1) + " %"));
      chart.appendChild(row);
    });
    return chart;
  }

  function showPrediction(p) {
    result.replaceChildren();
    const head = el("div", "prediction");
    head.id = "prediction";
    if (form.dataset.problemType === "text") {
      head.append("Generated text:");
      result.appendChild(head);
      const text = el("p", "generated", String(p.prediction));
      text.id = "prediction-text";
      result.appendChild(text);
    } else {
      head.append("Prediction: ");
      head.appendChild(el("strong", "", String(p.prediction)));
      result.appendChild(head);
    }
    if (p.probabilities) result.appendChild(bars(p.probabilities));
    const used = el("div", "inputs", "Used: " + (p.inputs_used.join(", ") || "none") +
      (p.inputs_missing.length ? " · missing: " + p.inputs_missing.join(", ") : ""));
    used.id = "inputs-used";
    result.appendChild(used);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData();
    for (const input of form.querySelectorAll("[data-column]")) {
      if (input.type === "file") {
        const media = chosen.get(input.name);
        if (media) data.append(input.name, media.blob, media.name);
      } else if (input.value.trim() !== "") {
        data.append(input.name, input.value);
      }
    }
    const headers = {};
    const key = document.getElementById("api-key");
    if (key && key.value) headers["Authorization"] = "Bearer " + key.value;
    button.disabled = true;
    result.textContent = "Predicting…";
    try {
      const response = await fetch("v1/predict/form", { method: "POST", body: data, headers: headers });
      const body = await response.json();
      if (!response.ok) showError(body, response.status);
      else showPrediction(body.predictions[0]);
    } catch (err) {
      showError({ error: String(err) }, "network");
    } finally {
      button.disabled = false;
    }
  });
  // What each media input holds (a Blob and its file name), for automation: tests, scripts.
  window.polymodal = { chosen: chosen };
  form.dataset.ready = "true";
})();
"""
