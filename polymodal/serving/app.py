"""The FastAPI app of `polymodal serve`, built from a model folder.

No `from __future__ import annotations` here: the request model is made at run time from the model's schema,
and FastAPI reads the endpoint annotations as real objects.
"""

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from polymodal.version import __version__
from polymodal.data.schema import Modality
from polymodal.serving import logs
from polymodal.serving.batcher import MicroBatcher, QueueFull
from polymodal.serving.config import CONFIG_ENV, ServeConfig
from polymodal.serving.inputs import (
    ErrorResponse,
    FieldError,
    InstanceChecker,
    PredictResponse,
    RequestError,
    from_validation_errors,
    request_model,
)
from polymodal.serving.metrics import Metrics
from polymodal.serving.page import CSP, PAGE_CSS, PAGE_JS, render_page
from polymodal.serving.service import ModelService

log = logging.getLogger(logs.SERVER)
access_log = logging.getLogger(logs.ACCESS)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "A limit was exceeded (body, instances, pixels, seconds, text)"},
    422: {"model": ErrorResponse, "description": "Invalid input: wrong type, unknown field, corrupt file"},
    429: {"model": ErrorResponse, "description": "Too many rows waiting for the model; retry shortly"},
}
INLINE_CHECK_BYTES = 256 * 1024
# With an API key, only the probes stay open; `public_docs` also opens the page, the docs and the metrics.
OPEN_PATHS = frozenset({"/health", "/ready"})
PUBLIC_DOCS_PATHS = frozenset({"/", "/docs", "/openapi.json", "/metrics", "/static/"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class InputInfo(BaseModel):
    name: str
    modality: str
    type: str
    fusion_input: str


class ModelInfo(BaseModel):
    label: str
    problem_type: str
    classes: list[Any] | None
    fusion: str
    inputs: list[InputInfo] = Field(description="Input columns, with modality and JSON type")
    fusion_inputs: dict[str, list[str]] = Field(description="Fusion input -> the columns it is built from")
    categories: dict[str, list[str]] = Field(description="Known values of each categorical column")
    metrics: dict[str, Any] = Field(description="Validation (and test, after evaluate) metrics of the model folder")
    limits: dict[str, int | float] = Field(description="What one request may send")
    batching: dict[str, int | float]
    polymodal_version: str


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        # The rest of the body is never read, so the connection cannot carry another request.
        super().__init__(413, f"the request body is above the limit of {limit} bytes", {"Connection": "close"})
        self.limit = limit


async def _drain(receive, limit: int) -> bool:
    """Read and drop a request body of at most `limit` bytes. Answering without reading the body would make the
    kernel reset the connection, and the client could lose the error response."""
    n = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False
        n += len(message.get("body", b""))
        if n > limit:
            return False
        if not message.get("more_body", False):
            return True


def _error(status: int, message: str, limit: float | None = None, headers: dict | None = None) -> JSONResponse:
    body = RequestError([FieldError(None, None, message, limit)], status=status).body()
    return JSONResponse(body, status_code=status, headers=headers)


@cache
def _swagger_asset(name: str) -> bytes:
    """Swagger UI's files, shipped inside the fastapi-offline package, so /docs works with no internet."""
    from importlib.resources import files

    return (files("fastapi_offline") / "static" / name).read_bytes()


class ServingMiddleware:
    """Outermost layer: API key, body-size limit, request id, metrics and the JSON access log, for every request."""

    def __init__(
        self,
        app,
        *,
        metrics: Metrics,
        max_body: int,
        api_key: str | None,
        endpoints: set[str],
        public_docs: bool = False,
    ):
        self.app, self.metrics, self.max_body, self.endpoints = app, metrics, max_body, endpoints
        # Keys are compared as SHA-256 digests with hmac.compare_digest: constant time, and length-independent.
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.open_paths = OPEN_PATHS | (PUBLIC_DOCS_PATHS if public_docs else frozenset())

    def _needs_key(self, path: str) -> bool:
        """With a key, everything but the probes needs it: the page, the docs and /metrics show the model's
        columns and traffic (unless `public_docs` opens them on purpose)."""
        if self.key_digest is None or path in self.open_paths:
            return False
        return not ("/static/" in self.open_paths and path.startswith("/static/"))

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(hashlib.sha256(token.encode("utf-8", "replace")).digest(), self.key_digest)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        status, received = 500, 0
        length = headers.get(b"content-length")

        async def send_logged(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # a chunked body without content-length is cut off here
                    raise BodyTooLarge(self.max_body)
            return message

        self.metrics.in_flight.inc()
        try:
            early = None  # an answer given before the app sees the request
            if self._needs_key(path) and not self._authorized(headers):
                msg = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
                early = _error(401, msg, headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
            elif length is not None and not length.isdigit():
                early = _error(400, "invalid Content-Length header", headers={"Connection": "close"})
            elif length is not None and int(length) > self.max_body:
                msg = f"the request body is {int(length)} bytes, above the limit of {self.max_body}"
                early = _error(413, msg, self.max_body, headers={"Connection": "close"})
            if early is not None:
                # Read what is cheap to read (up to twice the limit) so the client surely gets this answer.
                if length is None or (length.isdigit() and int(length) <= 2 * self.max_body):
                    await _drain(receive, 2 * self.max_body)
                return await early(scope, receive, send_logged)
            await self.app(scope, receive_limited, send_logged)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            endpoint = path if path in self.endpoints else "other"  # bounded label values
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            client = scope.get("client") or ("", 0)
            fields = {
                "event": "access", "method": method, "path": path, "status": status,
                "duration_ms": round(1000 * seconds, 2), "client": client[0], "request_id": rid,
                "bytes_in": received or (int(length) if length and length.isdigit() else 0),
            }  # fmt: skip
            access_log.info("%s %s %d", method, path, status, extra={"fields": fields})


def create_app(config: ServeConfig, service: ModelService | None = None) -> FastAPI:
    """Build the app for `config.model` (or for an already loaded `service`)."""
    from polymodal.retrieval.retriever import is_aligned_folder

    if service is None and is_aligned_folder(config.model):  # an aligned model: search its index instead
        from polymodal.serving.search import create_search_app

        return create_search_app(config)
    logs.configure()
    service = service or ModelService(config.model, runtime=config.runtime)
    schema = service.schema
    metrics = Metrics()
    checker = InstanceChecker(schema, config)
    api_key = config.api_key()
    state = SimpleNamespace(batcher=None, ready=False, started=time.time())
    PredictRequest = request_model(schema, config)  # noqa: N806 (a class made at run time)
    media = {c for c, m in schema.columns.items() if m in (Modality.IMAGE, Modality.AUDIO)}

    async def warm_up() -> None:
        try:
            row = await run_in_threadpool(service.example_row)
            for n in (1, min(config.max_batch_size, 8)):  # first call, then a batch shape
                (result,) = await state.batcher.run_now([[row] * n])
                if isinstance(result, Exception):
                    raise result
            state.ready = True
            log.info("model warmed up; ready", extra={"fields": {"event": "ready", "model": config.model}})
        except Exception:
            log.exception("warm-up failed; /ready stays 503")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.batcher = MicroBatcher(
            service.run, config.max_batch_size, config.max_wait_ms, config.max_queue, metrics.observe_batch
        )
        state.batcher.start()
        if config.warmup:
            warm = asyncio.create_task(warm_up())
        else:
            state.ready, warm = True, None
        log.info("serving", extra={"fields": {"event": "start", "model": config.model, **config.limits()}})
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests; anything still queued is answered before exit.
            state.ready = False
            if warm is not None:
                await asyncio.gather(warm, return_exceptions=True)
            await state.batcher.close()
            Metrics.worker_exit(os.getpid())
            log.info("stopped", extra={"fields": {"event": "stop"}})

    auth = "; every endpoint but /health and /ready needs 'Authorization: Bearer <key>'" if api_key else ""
    app = FastAPI(
        title=f"polymodal: predict {schema.label!r}",
        version=__version__,
        description=f"Serving the {service.predictor.fusion}-fusion model `{Path(config.model).name}`. Images and "
        f"audio are sent by value (base64 in JSON, or as uploads), never as paths{auth}.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # Shows the key field in /docs; the middleware is what enforces it.
    security = [Depends(HTTPBearer(auto_error=False))] if api_key else []

    # ---- errors: always JSON {"error": ..., "details": [{"instance", "field", "message", "limit"}]} -----------
    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = from_validation_errors(list(exc.errors()), schema, config)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "limit", None), exc.headers)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, f"the server is busy: {exc}; retry shortly", headers={"Retry-After": "1"})

    async def check(instances: list[dict[str, Any]], request: Request) -> list[dict[str, Any]]:
        """Base64 decoding and header checks: inline for a small request (a thread hop costs more, and dozens of
        threads fighting for the GIL make latency unfair under load), in a thread for a large one."""
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) <= INLINE_CHECK_BYTES:
            return checker.check_all(instances)
        return await run_in_threadpool(checker.check_all, instances)

    async def predict_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
        if state.batcher is None:
            raise HTTPException(503, "the server is starting")
        return {"predictions": await state.batcher.submit(rows)}

    # ---- prediction ------------------------------------------------------------------------------------------
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        dependencies=security,
        summary="Predict from JSON (images and audio as base64)",
    )
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        instances = [inst.model_dump(by_alias=True, exclude_unset=True) for inst in body.instances]
        return await predict_rows(await check(instances, request))

    form_schema = {
        "type": "object",
        "properties": {
            col: {
                Modality.TEXT: {"type": "string", "maxLength": config.max_text_chars},
                Modality.IMAGE: {"type": "string", "format": "binary"},
                Modality.AUDIO: {"type": "string", "format": "binary"},
                Modality.NUMERIC: {"type": "number"},
                Modality.CATEGORICAL: {"type": "string"},
            }[m]
            for col, m in schema.columns.items()
        },
    }

    @app.post(
        "/v1/predict/form",
        response_model=PredictResponse,
        responses={**ERRORS, 415: {"model": ErrorResponse, "description": "Not a form"}},
        dependencies=security,
        summary="Predict one instance from a form (file uploads for images and audio)",
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form_schema}}}},
    )
    async def predict_form(request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            raise RequestError([FieldError(None, None, "send multipart/form-data, one field per column")], 415)
        n = len(schema.columns) + 8  # room for a few unknown fields, so that they get a clear 422 below
        part = max(1024 * 1024, 4 * config.max_text_chars)
        values: dict[str, Any] = {}
        errors: list[FieldError] = []
        async with request.form(max_files=n, max_fields=n, max_part_size=part) as form:
            for key, value in form.multi_items():
                if key in values:
                    errors.append(FieldError(0, key, "given more than once"))
                elif isinstance(value, UploadFile):
                    if key in schema.columns and key not in media:
                        errors.append(
                            FieldError(0, key, f"a {schema.columns[key].value} field takes a value, not a file")
                        )
                    values[key] = await value.read()
                else:
                    values[key] = value
        if errors:
            raise RequestError(errors)
        return await predict_rows(await check([values], request))

    # ---- about the model and the server ---------------------------------------------------------------------
    about = service.describe()

    @app.get(
        "/v1/model",
        response_model=ModelInfo,
        responses={401: ERRORS[401]},
        dependencies=security,
        summary="The model: input columns with modality and type, classes, metrics, limits",
    )
    async def model_info() -> dict[str, Any]:
        batching = {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms}
        return {**about, "limits": config.limits(), "batching": batching, "polymodal_version": __version__}

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "started": state.started, "uptime_s": time.time() - state.started}

    @app.get("/ready", summary="Readiness: the model is loaded and warmed up", responses={503: {}})
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": "warming up or shutting down"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    # ---- the page and the docs, all served from here (no CDN) ------------------------------------------------
    page = render_page(about, config.max_text_chars, api_key_required=api_key is not None)
    page_headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/static/page.js", include_in_schema=False)
    async def page_js() -> Response:
        return Response(PAGE_JS, media_type="text/javascript", headers=page_headers)

    @app.get("/static/page.css", include_in_schema=False)
    async def page_css() -> Response:
        return Response(PAGE_CSS, media_type="text/css", headers=page_headers)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=app.title + " - docs",
            swagger_js_url="static/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get("/static/swagger-ui-bundle.js", include_in_schema=False)
    async def swagger_js() -> Response:
        return Response(_swagger_asset("swagger-ui-bundle.js"), media_type="text/javascript")

    @app.get("/static/swagger-ui.css", include_in_schema=False)
    async def swagger_css() -> Response:
        return Response(_swagger_asset("swagger-ui.css"), media_type="text/css")

    endpoints = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(
        ServingMiddleware,
        metrics=metrics,
        max_body=config.max_body_bytes,
        api_key=api_key,
        endpoints=endpoints,
        public_docs=config.public_docs,
    )
    app.state.serving = state
    app.state.metrics = metrics
    app.state.service = service
    return app


def app_from_env() -> FastAPI:
    """App factory for worker processes (`--workers N`): the settings come from the environment."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
