"""The page at `/`: one input per column of the model, generated from its schema; it calls the form endpoint and
draws the class probabilities as bars. Plain HTML, CSS and JS served by the app itself: no build step, no CDN."""

from __future__ import annotations

from html import escape
from typing import Any

# The page's own script and style are separate URLs so the Content-Security-Policy can forbid inline script.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _input(i: int, col: dict[str, Any], categories: list[str], max_text: int) -> str:
    name, modality = escape(col["name"]), col["modality"]
    ident = f"in-{i}"
    common = f'id="{ident}" name="{name}" data-column="{name}" data-modality="{modality}"'
    if modality == "text":
        control = f'<textarea {common} rows="2" maxlength="{max_text}" placeholder="text"></textarea>'
    elif modality in ("image", "audio"):
        control = f'<input type="file" {common} accept="{modality}/*">'
    elif modality == "numeric":
        control = f'<input type="number" step="any" {common} placeholder="number">'
    else:
        options = "".join(f'<option value="{escape(str(v))}"></option>' for v in categories[:200])
        control = (
            f'<input type="text" {common} list="{ident}-values" placeholder="category">'
            f'<datalist id="{ident}-values">{options}</datalist>'
        )
    return (
        f'<div class="field"><label for="{ident}">{name} <span class="modality">{escape(modality)}</span></label>'
        f"{control}</div>"
    )


def render_page(info: dict[str, Any], max_text_chars: int, api_key_required: bool) -> str:
    """The HTML of `/` for a model described by `ModelService.describe()`."""
    fields = "\n".join(
        _input(i, col, info["categories"].get(col["name"], []), max_text_chars) for i, col in enumerate(info["inputs"])
    )
    key = (
        '<div class="field"><label for="api-key">API key <span class="modality">required</span></label>'
        '<input type="password" id="api-key" autocomplete="off"></div>'
        if api_key_required
        else ""
    )
    valid = info["metrics"].get("valid", {})
    score = f" · validation accuracy {valid['accuracy']:.3f}" if isinstance(valid.get("accuracy"), int | float) else ""
    main = f"""<h1>Predict <code>{escape(info["label"])}</code></h1>
<p class="sub">{escape(info["fusion"])} fusion · {escape(info["problem_type"])}{escape(score)} ·
leave any input empty: the model handles a missing modality · <a href="docs">API docs</a></p>
<form id="predict-form" autocomplete="off">
{key}
{fields}
<button type="submit" id="predict">Predict</button>
</form>"""
    return html_page(info["label"], main, "page.js")


def html_page(title: str, main: str, script: str) -> str:
    """The document around a page's <main>: the shared style sheet, and one script (no inline script, for the CSP)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>polymodal · {escape(title)}</title>
<link rel="stylesheet" href="static/page.css">
</head>
<body>
<main>
{main}
<section id="result" aria-live="polite"></section>
</main>
<script src="static/{script}"></script>
</body>
</html>
"""


PAGE_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
main { max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
.sub { color: #5a6475; margin-top: 0; }
form { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 1rem; }
.field { display: flex; flex-direction: column; margin-bottom: .8rem; }
label { font-weight: 600; margin-bottom: .2rem; }
.modality { font-weight: 400; color: #5a6475; font-size: .85em; }
textarea, input[type=text], input[type=number], input[type=password] { font: inherit; padding: .35rem .5rem;
  border: 1px solid #c5cbd5; border-radius: 5px; }
button { font: inherit; padding: .45rem 1.2rem; border: 0; border-radius: 5px; background: #2d5bd3; color: #fff;
  cursor: pointer; }
button:disabled { background: #8aa0d8; }
#result { margin-top: 1.2rem; }
.prediction { font-size: 1.2rem; margin-bottom: .6rem; }
.row { display: grid; grid-template-columns: 8rem 1fr 4.5rem; align-items: center; gap: .5rem; margin: .25rem 0; }
.track { background: #e4e8ee; border-radius: 4px; height: 1.1rem; overflow: hidden; }
.bar { background: #2d5bd3; height: 100%; }
.row.top .bar { background: #1f9d55; }
.value { text-align: right; font-variant-numeric: tabular-nums; }
.inputs { color: #5a6475; font-size: .9em; margin-top: .6rem; }
.error { background: #fdecec; border: 1px solid #f3b4b4; border-radius: 6px; padding: .6rem .8rem; }
"""

PAGE_JS = r"""
"use strict";
(function () {
  const form = document.getElementById("predict-form");
  const result = document.getElementById("result");
  const button = document.getElementById("predict");

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

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

  function showPrediction(p) {
    result.replaceChildren();
    const head = el("div", "prediction");
    head.id = "prediction";
    head.append("Prediction: ");
    head.appendChild(el("strong", "", String(p.prediction)));
    result.appendChild(head);
    if (p.probabilities) {
      const entries = Object.entries(p.probabilities).sort((a, b) => b[1] - a[1]);
      const bars = el("div");
      bars.id = "probabilities";
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
        bars.appendChild(row);
      });
      result.appendChild(bars);
    }
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
        if (input.files.length) data.append(input.name, input.files[0]);
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
  form.dataset.ready = "true";
})();
"""
