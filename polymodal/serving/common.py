"""What the predict app (app.py) and the search app (search.py) share, so each is built the same way: the outermost
middleware (API key, body-size limit, request id, metrics, JSON access log), JSON errors, the probes, and the
Swagger UI served from the package (no CDN).

No `from __future__ import annotations`: FastAPI reads the endpoint annotations as real objects.
"""

import hashlib
import hmac
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from functools import cache
from types import SimpleNamespace
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from polymodal.serving.batcher import QueueFull
from polymodal.serving.inputs import ErrorResponse, FieldError, RequestError
from polymodal.serving.logs import ACCESS
from polymodal.serving.metrics import Metrics
from polymodal.version import __version__

access_log = logging.getLogger(ACCESS)

UNAUTHORIZED: dict[str, Any] = {"model": ErrorResponse, "description": "Missing or wrong API key"}
# With an API key, only the probes stay open; `public_docs` also opens the page, the docs and the metrics.
OPEN_PATHS = frozenset({"/health", "/ready"})
PUBLIC_DOCS_PATHS = frozenset({"/", "/docs", "/openapi.json", "/metrics", "/static/"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_bytes(content: Any) -> bytes:
    """JSON with orjson: several times faster than the standard library on a prediction's answer."""
    return orjson.dumps(content, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


class FastJSONResponse(JSONResponse):
    """Every JSON answer of both apps, rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def error_response(
    status: int, message: str, field: str | None = None, limit: float | None = None, headers: dict | None = None
) -> JSONResponse:
    """The JSON error of both apps: {"error": ..., "details": [{"instance", "field", "message", "limit"}]}."""
    body = RequestError([FieldError(None, field, message, limit)], status=status).body()
    return FastJSONResponse(body, status_code=status, headers=headers)


def queue_full_response(exc: QueueFull) -> JSONResponse:
    """503 at once, before any work on the request: a flood gets quick refusals, not a pile-up of timeouts."""
    headers = {"Retry-After": str(exc.retry_after)}
    return error_response(503, f"the server is busy: {exc}; retry after {exc.retry_after} s", headers=headers)


def answer_errors(handler: Callable[[bytes], Any]) -> Callable:
    """An ASGI app for a POST endpoint outside FastAPI's routing: reads the body, awaits `handler(body)` for a
    Response, and answers the errors as the app's exception handlers would."""

    async def app(scope, receive, send) -> None:
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            response = await handler(b"".join(chunks))
        except RequestError as e:
            response = FastJSONResponse(e.body(), status_code=e.status)
        except QueueFull as e:
            response = queue_full_response(e)
        except HTTPException as e:
            limit = getattr(e, "limit", None)
            response = error_response(e.status_code, str(e.detail), limit=limit, headers=e.headers)
        await response(scope, receive, send)

    return app


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
        shed: Callable[[str], QueueFull | None] | None = None,
        routes: dict[tuple[str, str], Any] | None = None,
    ):
        self.app, self.metrics, self.max_body, self.endpoints = app, metrics, max_body, endpoints
        # (method, path) -> an ASGI app answering it directly (the hot endpoint, without FastAPI's routing)
        self.routes = routes or {}
        # Request ids: unique per process start, and cheaper than a uuid4 (a getrandom call) per request.
        self.id_prefix, self.ids = uuid.uuid4().hex[:12] + "-", itertools.count()
        # path -> the refusal when a request there must be refused now (overload), else None
        self.shed = shed
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
        rid = rid if _REQUEST_ID.match(rid) else f"{self.id_prefix}{next(self.ids):x}"
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
                early = error_response(401, msg, headers={"WWW-Authenticate": "Bearer", "Connection": "close"})
            elif length is not None and not length.isdigit():
                early = error_response(400, "invalid Content-Length header", headers={"Connection": "close"})
            elif length is not None and int(length) > self.max_body:
                msg = f"the request body is {int(length)} bytes, above the limit of {self.max_body}"
                early = error_response(413, msg, limit=self.max_body, headers={"Connection": "close"})
            elif self.shed is not None and (full := self.shed(path)) is not None:
                # Overloaded: refused here, before routing or parsing, so that refusals cost next to nothing.
                early = queue_full_response(full)
            if early is not None:
                # Read what is cheap to read (up to twice the limit) so the client surely gets this answer.
                if length is None or (length.isdigit() and int(length) <= 2 * self.max_body):
                    await _drain(receive, 2 * self.max_body)
                return await early(scope, receive, send_logged)
            await self.routes.get((method, path), self.app)(scope, receive_limited, send_logged)
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


def new_app(
    title: str, description: str, on_invalid: Callable[[list[dict[str, Any]]], RequestError], lifespan=None
) -> FastAPI:
    """A FastAPI app with the shared error handlers and the offline docs; `on_invalid` words the body's
    validation errors for this app's request model."""
    app = FastAPI(
        title=title, version=__version__, description=description, lifespan=lifespan, docs_url=None,
        redoc_url=None, default_response_class=FastJSONResponse,
    )  # fmt: skip

    # ---- errors: always JSON {"error": ..., "details": [{"instance", "field", "message", "limit"}]} -----------
    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return FastJSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = on_invalid(list(exc.errors()))
        return FastJSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), limit=getattr(exc, "limit", None), headers=exc.headers)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return queue_full_response(exc)

    # ---- the docs, served from here (no CDN) -------------------------------------------------------------------
    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=app.title + " - docs", swagger_js_url="static/swagger-ui-bundle.js",
            swagger_css_url="static/swagger-ui.css", swagger_favicon_url="data:,",
        )  # fmt: skip

    @app.get("/static/swagger-ui-bundle.js", include_in_schema=False)
    async def swagger_js() -> Response:
        return Response(_swagger_asset("swagger-ui-bundle.js"), media_type="text/javascript")

    @app.get("/static/swagger-ui.css", include_in_schema=False)
    async def swagger_css() -> Response:
        return Response(_swagger_asset("swagger-ui.css"), media_type="text/css")

    return app


def auth_dependencies(api_key: str | None) -> list[Any]:
    """The dependencies of a /v1 endpoint: they show the key field in /docs; the middleware is what enforces it."""
    return [Depends(HTTPBearer(auto_error=False))] if api_key else []


def add_probes(app: FastAPI, state: SimpleNamespace, metrics: Metrics) -> None:
    """/health (the process answers), /ready (`state.ready`) and /metrics (Prometheus)."""

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid(), "started": state.started, "uptime_s": time.time() - state.started}

    @app.get("/ready", summary="Readiness: the model is loaded and warmed up", responses={503: {}})
    async def ready() -> JSONResponse:
        if state.ready:
            return FastJSONResponse({"ready": True})
        return FastJSONResponse({"ready": False, "reason": "warming up or shutting down"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)


def add_page(app: FastAPI, html: str, script: tuple[str, str], css: str, csp: str) -> None:
    """The page at `/`, its script (file name, source) and the style sheet, under a Content-Security-Policy."""
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}
    name, source = script

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @app.get(f"/static/{name}", include_in_schema=False)
    async def page_js() -> Response:
        return Response(source, media_type="text/javascript", headers=headers)

    @app.get("/static/page.css", include_in_schema=False)
    async def page_css() -> Response:
        return Response(css, media_type="text/css", headers=headers)


def guard(
    app: FastAPI,
    metrics: Metrics,
    max_body: int,
    api_key: str | None,
    public_docs: bool = False,
    shed: Callable[[str], QueueFull | None] | None = None,
    routes: dict[tuple[str, str], Any] | None = None,
) -> None:
    """Wrap the app, once every route is added, in the ServingMiddleware (the one place for the API key check, the
    body-size limit and load shedding), and keep the metrics on app.state. `routes`: (method, path) -> an ASGI app
    answering it directly, past FastAPI (a route of the same path documents it)."""
    endpoints = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(
        ServingMiddleware, metrics=metrics, max_body=max_body, api_key=api_key, endpoints=endpoints,
        public_docs=public_docs, shed=shed, routes=routes,
    )  # fmt: skip
    app.state.metrics = metrics
