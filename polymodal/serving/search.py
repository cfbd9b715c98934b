"""`polymodal serve` for an aligned model with an index (MODEL/index): POST /v1/search, a search page, and the
gallery's media for the hits. The same middleware (API key, body limit, metrics, access log), limits and error
style as /v1/predict: a query is a value (text, or base64 image/audio checked by the same `InstanceChecker`),
never a path.

No `from __future__ import annotations`: FastAPI reads the endpoint annotations as real objects.
"""

import mimetypes
import time
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from polymodal.data.schema import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, Modality, ProblemType, Schema
from polymodal.errors import UserError
from polymodal.serving.common import (
    UNAUTHORIZED,
    add_page,
    add_probes,
    auth_dependencies,
    error_response,
    guard,
    new_app,
)
from polymodal.serving.config import ServeConfig
from polymodal.serving.inputs import (
    ErrorResponse,
    FieldError,
    InstanceChecker,
    RequestError,
    from_search_validation_errors,
)
from polymodal.serving.logs import configure as configure_logs
from polymodal.serving.metrics import Metrics
from polymodal.serving.page import CSP, PAGE_CSS, html_page
from polymodal.version import __version__

INDEX_DIR = "index"
MAX_MEDIA_BYTES = 32 * 1024 * 1024
SEARCH_CSP = CSP.replace("img-src 'self'", "img-src 'self' blob:") + "; media-src 'self' blob:"
ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    413: {"model": ErrorResponse, "description": "A limit was exceeded (body, pixels, seconds, text)"},
    422: {"model": ErrorResponse, "description": "Invalid query: wrong modality, corrupt file, empty text, bad k"},
}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr | None = Field(None, description="A text query")
    image: StrictStr | None = Field(None, description="An image query: base64 file (a data: URL is fine)")
    audio: StrictStr | None = Field(None, description="An audio query: base64 file (a data: URL is fine)")
    k: StrictInt = Field(10, description="How many hits")
    where: StrictStr | None = Field(None, max_length=1000, description="Metadata filter, e.g. speaker == 'jackson'")


class Hit(BaseModel):
    id: int
    score: float
    metadata: dict[str, Any]
    media: dict[str, str] = Field(description="Gallery column -> URL of the row's file (images and audio)")


class SearchResponse(BaseModel):
    hits: list[Hit]
    query_modality: str
    k: int


def create_search_app(config: ServeConfig) -> FastAPI:
    from polymodal.retrieval.search import MAX_K, Searcher

    configure_logs()
    index_dir = Path(config.model) / INDEX_DIR
    if not (index_dir / "settings.json").is_file():
        raise UserError(
            f"{config.model} is an aligned model without an index at {index_dir}: build one first with "
            f"`polymodal index {config.model} gallery.csv --column COL`"
        )
    searcher = Searcher.open(index_dir, model=config.model)
    r, index = searcher.retriever, searcher.index
    modalities = sorted({m.value for m in r.schema.columns.values()})
    # The query fields are named by modality; the same checker as /v1/predict decodes and bounds them.
    checker = InstanceChecker(Schema({m: Modality(m) for m in modalities}, "", ProblemType.MULTICLASS), config)
    metrics, api_key = Metrics(), config.api_key()
    state = SimpleNamespace(ready=True, started=time.time())
    meta_cols = [c for c in index.metadata.columns if c not in ("id", "_source")]
    media_cols = [
        c for c in meta_cols
        if index.metadata[c].astype(str).str.lower().str.endswith(IMAGE_EXTENSIONS + AUDIO_EXTENSIONS).mean() >= 0.9
    ]  # fmt: skip

    app = new_app(
        f"polymodal: search {index.settings['column']!r}",
        f"Search {len(index)} gallery rows of `{index.settings['column']}` by {', '.join(modalities)}. "
        "Queries are values (text, or base64 image/audio), never paths.",
        lambda errors: from_search_validation_errors(errors, modalities),
    )
    security = auth_dependencies(api_key)

    def run_search(modality: str, value: Any, k: int, where: str | None) -> list[dict[str, Any]]:
        try:
            return searcher.search(modality, value, k=k, where=where)
        except ValueError as e:  # BadRowsError, an empty query, a bad filter
            msg = str(e).split("\n")[0] if "bad row" not in str(e) else f"the {modality} query could not be decoded"
            raise RequestError([FieldError(None, "where" if str(e).startswith("filter ") else modality, msg)]) from None

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS, dependencies=security,
              summary="The k gallery rows nearest to a text, image or audio query")  # fmt: skip
    async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
        given = {m: getattr(body, m) for m in ("text", "image", "audio") if getattr(body, m) is not None}
        errors = []
        if len(given) != 1:
            errors.append(FieldError(None, None, f"send exactly one query field, one of {modalities}"))
        for m in given:
            if m not in modalities:
                errors.append(FieldError(None, m, f"this model has no {m} input: it searches with {modalities}"))
        if not 1 <= body.k <= MAX_K:
            errors.append(FieldError(None, "k", f"k must be from 1 to {MAX_K}"))
        if errors:
            raise RequestError(errors)
        (modality, raw), = given.items()  # fmt: skip
        row = await run_in_threadpool(checker.check_all, [{modality: raw}])
        value = row[0][modality]
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RequestError([FieldError(None, modality, f"the {modality} query is empty")])
        hits = await run_in_threadpool(run_search, modality, value, body.k, body.where)
        out = []
        for h in hits:
            meta = {c: h.get(c) for c in meta_cols}
            media = {c: f"v1/items/{h['id']}/{c}" for c in media_cols if meta.get(c) is not None}
            out.append({"id": h["id"], "score": h["score"], "metadata": meta, "media": media})
        return {"hits": out, "query_modality": modality, "k": body.k}

    @app.get("/v1/items/{row_id}/{column}", dependencies=security, responses={404: {"model": ErrorResponse}},
             summary="The file of a gallery row's image or audio column (for showing hits)")  # fmt: skip
    async def item(row_id: int, column: str) -> Response:
        if column not in media_cols:
            return error_response(404, f"column {column!r} holds no gallery files; it is one of {media_cols}", "column")
        try:
            path = index.file_of(row_id, column)
        except KeyError:
            return error_response(404, f"no gallery row {row_id} in the index", "row_id")
        if not path.is_file() or path.stat().st_size > MAX_MEDIA_BYTES:
            return error_response(404, f"the file of row {row_id} is not available", "row_id")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/model", dependencies=security, summary="The aligned model and its index")
    async def model_info() -> dict[str, Any]:
        return {
            "kind": "aligned", "target": r.target, "queries": r.queries, "label": r.label,
            "columns": {c: m.value for c, m in r.schema.columns.items()}, "query_modalities": modalities,
            "index": {k: index.settings.get(k) for k in ("kind", "params", "column", "modality", "dim")}
            | {"rows": len(index), "metadata_columns": meta_cols},
            "metrics": {k: v for k, v in r.metrics_.items() if k in ("valid", "test")},
            "limits": config.limits(), "polymodal_version": __version__,
        }  # fmt: skip

    add_probes(app, state, metrics)

    page = render_search_page(index.settings["column"], modalities, config.max_text_chars, api_key is not None)
    add_page(app, page, ("search.js", SEARCH_JS), PAGE_CSS + SEARCH_CSS, SEARCH_CSP)

    # `public_docs` is not applied here, as before: with a key, the search page and docs keep needing it.
    guard(app, metrics, config.max_body_bytes, api_key)
    app.state.serving, app.state.searcher = state, searcher
    return app


# ---- the page: one search box per query modality, hits with thumbnails and players -------------------------------
def render_search_page(column: str, modalities: list[str], max_text_chars: int, api_key_required: bool) -> str:
    fields = []
    for m in modalities:
        if m == "text":
            control = (
                f'<input type="text" id="q-text" data-modality="text" maxlength="{max_text_chars}" placeholder="text">'
            )
        else:
            control = f'<input type="file" id="q-{m}" data-modality="{m}" accept="{m}/*">'
        fields.append(f'<div class="field"><label for="q-{m}">{m} query</label>{control}</div>')
    key = (
        '<div class="field"><label for="api-key">API key</label><input type="password" id="api-key" autocomplete="off">'
        "</div>"
        if api_key_required
        else ""
    )
    main = f"""<h1>Search <code>{escape(column)}</code></h1>
<p class="sub">fill in one query ({escape(", ".join(modalities))}) · <a href="docs">API docs</a></p>
<form id="search-form" autocomplete="off">
{key}
{"".join(fields)}
<div class="field"><label for="q-k">results</label><input type="number" id="q-k" min="1" max="100" value="10"></div>
<div class="field"><label for="q-where">filter <span class="modality">e.g. speaker == 'jackson'</span></label>
<input type="text" id="q-where" maxlength="1000"></div>
<button type="submit" id="search">Search</button>
</form>"""
    return html_page(f"search {column}", main, "search.js")


SEARCH_CSS = """
.hit { display: flex; gap: .8rem; align-items: center; background: #fff; border: 1px solid #dde1e7;
  border-radius: 6px; padding: .5rem; margin: .4rem 0; }
.hit img { width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated; background: #eee; }
.hit .meta { font-size: .9em; color: #39414f; }
.hit .score { font-variant-numeric: tabular-nums; font-weight: 600; }
"""

SEARCH_JS = r"""
"use strict";
(function () {
  const form = document.getElementById("search-form");
  const result = document.getElementById("result");
  const button = document.getElementById("search");
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const headers = () => {
    const h = { "Content-Type": "application/json" };
    const key = document.getElementById("api-key");
    if (key && key.value) h["Authorization"] = "Bearer " + key.value;
    return h;
  };
  const readFile = (file) => new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(file);
  });
  async function media(url, kind) {  // fetched with the key, shown from a blob URL
    const h = headers();
    delete h["Content-Type"];
    const response = await fetch(url, { headers: h });
    if (!response.ok) return null;
    const src = URL.createObjectURL(await response.blob());
    const node = kind === "audio" ? el("audio") : el("img");
    node.src = src;
    if (kind === "audio") node.controls = true;
    else node.alt = "hit";
    return node;
  }
  function showError(body, status) {
    result.replaceChildren();
    const box = el("div", "error");
    box.id = "error";
    box.appendChild(el("strong", "", "Error " + status + ": " + (body.error || "request failed")));
    result.appendChild(box);
  }
  async function showHits(body) {
    result.replaceChildren();
    const list = el("div");
    list.id = "hits";
    if (!body.hits.length) list.appendChild(el("p", "", "No results."));
    for (const h of body.hits) {
      const row = el("div", "hit");
      row.dataset.id = String(h.id);
      for (const [col, url] of Object.entries(h.media)) {
        const value = String(h.metadata[col] || "").toLowerCase();
        const kind = /\.(wav|flac|ogg|mp3|aiff?|opus)$/.test(value) ? "audio" : "image";
        const node = await media(url, kind);
        if (node) row.appendChild(node);
      }
      row.appendChild(el("span", "score", h.score.toFixed(3)));
      const meta = Object.entries(h.metadata).map(([k, v]) => k + ": " + v).join(" · ");
      row.appendChild(el("span", "meta", "#" + h.id + " · " + meta));
      list.appendChild(row);
    }
    result.appendChild(list);
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { k: parseInt(document.getElementById("q-k").value || "10", 10) };
    const where = document.getElementById("q-where").value.trim();
    if (where) body.where = where;
    for (const input of form.querySelectorAll("[data-modality]")) {
      const m = input.dataset.modality;
      if (input.type === "file") {
        if (input.files.length) body[m] = await readFile(input.files[0]);
      } else if (input.value.trim() !== "") {
        body[m] = input.value;
      }
    }
    button.disabled = true;
    result.textContent = "Searching…";
    try {
      const response = await fetch("v1/search", { method: "POST", body: JSON.stringify(body), headers: headers() });
      const answer = await response.json();
      if (!response.ok) showError(answer, response.status);
      else await showHits(answer);
    } catch (err) {
      showError({ error: String(err) }, "network");
    } finally {
      button.disabled = false;
    }
  });
  form.dataset.ready = "true";
})();
"""
