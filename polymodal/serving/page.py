"""The page at `/`: one input per column of the model, generated from its schema; it calls the form endpoint and
draws the class probabilities as a bar chart (or shows the generated text, or the predicted value). Plain HTML, CSS
and JS served by the app itself: no build step, no CDN.

Each kind of input gets its control from the schema: a picture has a preview and can be dropped, chosen or taken
with the camera; a sound has a player and can be recorded from the microphone (the server decodes what the browser
records: WebM, Ogg or MP4); a number is a number field; a category is a select of the known values. A modality the
page has no special control for gets a file input of its kind with a preview, so a new modality slots in.
"""

from __future__ import annotations

from html import escape
from typing import Any

from polymodal.serving.page_script import PAGE_JS

__all__ = ["CSP", "PAGE_CSS", "PAGE_JS", "html_page", "render_page"]

# The page's own script and style are separate URLs so the Content-Security-Policy can forbid inline script.
# blob: URLs are the previews and players of what the user chose or recorded, made in the page itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; media-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
TEXT_KINDS = ("text",)
MAX_SELECT = 200  # more known values than this: a text field with suggestions instead of a select


def _button(action: str, ident: str, text: str, hidden: bool = False) -> str:
    return (
        f'<button type="button" class="secondary" data-action="{action}" data-for="{ident}"'
        f"{' hidden' if hidden else ''}>{text}</button>"
    )


def _media(ident: str, common: str, modality: str, max_audio_seconds: float) -> str:
    """A drop zone with a file input, a preview of its kind, and the camera or the microphone where it has one."""
    kind = escape(modality)
    if modality == "image":
        extra = _button("camera", ident, "Take photo")
        live = f'<video class="live" id="{ident}-live" playsinline muted hidden></video>' + _button(
            "snap", ident, "Capture", hidden=True
        )
        preview = f'<img class="preview" id="{ident}-preview" alt="preview" hidden>'
        hint = "drop a picture here, choose a file or take a photo"
    elif modality == "audio":
        extra = _button("record", ident, "Record")
        live = f'<span class="recording" id="{ident}-recording" hidden></span>'
        preview = f'<audio class="preview" id="{ident}-preview" controls hidden></audio>'
        hint = "drop a sound here, choose a file or record from the microphone"
    else:  # a modality without a control of its own (video, ...): its files, with a player
        extra, live = "", ""
        preview = f'<video class="preview" id="{ident}-preview" controls hidden></video>'
        hint = f"drop a {kind} file here or choose one"
    return (
        f'<div class="media" id="{ident}-zone" data-kind="{kind}" data-max-seconds="{max_audio_seconds:g}">'
        f'<input type="file" {common} accept="{kind}/*">'
        f'<div class="actions">{extra}{_button("clear", ident, "Clear", hidden=True)}'
        f'<span class="filename" id="{ident}-name"></span></div>'
        f'<p class="hint">{hint}</p>{live}{preview}</div>'
    )


def _input(i: int, col: dict[str, Any], categories: list[str], max_text: int, max_audio_seconds: float) -> str:
    name, modality = escape(col["name"]), col["modality"]
    ident = f"in-{i}"
    common = f'id="{ident}" name="{name}" data-column="{name}" data-modality="{escape(modality)}"'
    if modality in TEXT_KINDS:
        control = f'<textarea {common} rows="2" maxlength="{max_text}" placeholder="text"></textarea>'
    elif modality == "numeric":
        control = f'<input type="number" step="any" {common} placeholder="number">'
    elif modality == "categorical" and len(categories) <= MAX_SELECT:
        options = "".join(f'<option value="{escape(str(v))}">{escape(str(v))}</option>' for v in categories)
        control = f'<select {common}><option value="">(missing)</option>{options}</select>'
    elif modality == "categorical":
        options = "".join(f'<option value="{escape(str(v))}"></option>' for v in categories)
        control = (
            f'<input type="text" {common} list="{ident}-values" placeholder="category">'
            f'<datalist id="{ident}-values">{options}</datalist>'
        )
    else:
        control = _media(ident, common, modality, max_audio_seconds)
    return (
        f'<div class="field"><label for="{ident}">{name} <span class="modality">{escape(modality)}</span></label>'
        f"{control}</div>"
    )


def render_page(
    info: dict[str, Any], max_text_chars: int, api_key_required: bool, max_audio_seconds: float = 60.0
) -> str:
    """The HTML of `/` for a model described by `ModelService.describe()`."""
    fields = "\n".join(
        _input(i, col, info["categories"].get(col["name"], []), max_text_chars, max_audio_seconds)
        for i, col in enumerate(info["inputs"])
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
<form id="predict-form" autocomplete="off" data-problem-type="{escape(info["problem_type"])}">
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
textarea, select, input[type=text], input[type=number], input[type=password] { font: inherit;
  padding: .35rem .5rem; border: 1px solid #c5cbd5; border-radius: 5px; background: #fff; }
button { font: inherit; padding: .45rem 1.2rem; border: 0; border-radius: 5px; background: #2d5bd3; color: #fff;
  cursor: pointer; }
button:disabled { background: #8aa0d8; }
button.secondary { background: #e8ecf3; color: #1d2330; padding: .3rem .8rem; margin-right: .4rem; }
button.secondary.active { background: #d33a2d; color: #fff; }
.media { border: 2px dashed #c5cbd5; border-radius: 8px; padding: .6rem; background: #fafbfc; }
.media.dragover { border-color: #2d5bd3; background: #eef3ff; }
.media .actions { display: flex; align-items: center; flex-wrap: wrap; gap: .3rem; margin-top: .4rem; }
.media .hint { color: #5a6475; font-size: .85em; margin: .3rem 0 0; }
.media .filename { color: #5a6475; font-size: .85em; }
.media img.preview, .media video { display: block; max-width: 100%; max-height: 14rem; margin-top: .5rem;
  border-radius: 5px; }
.media audio.preview { display: block; width: 100%; margin-top: .5rem; }
.media [hidden] { display: none !important; }
.recording { color: #d33a2d; font-variant-numeric: tabular-nums; margin-top: .4rem; }
#result { margin-top: 1.2rem; }
.prediction { font-size: 1.2rem; margin-bottom: .6rem; }
.generated { white-space: pre-wrap; background: #fff; border: 1px solid #dde1e7; border-radius: 6px;
  padding: .6rem .8rem; }
.row { display: grid; grid-template-columns: 8rem 1fr 4.5rem; align-items: center; gap: .5rem; margin: .25rem 0; }
.track { background: #e4e8ee; border-radius: 4px; height: 1.1rem; overflow: hidden; }
.bar { background: #2d5bd3; height: 100%; }
.row.top .bar { background: #1f9d55; }
.value { text-align: right; font-variant-numeric: tabular-nums; }
.inputs { color: #5a6475; font-size: .9em; margin-top: .6rem; }
.error { background: #fdecec; border: 1px solid #f3b4b4; border-radius: 6px; padding: .6rem .8rem; }
"""
