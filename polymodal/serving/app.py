"""The FastAPI app of `polymodal serve`, built from a model folder.

No `from __future__ import annotations` here: the request model is made at run time from the model's schema,
and FastAPI reads the endpoint annotations as real objects.
"""

import asyncio
import gc
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response

from polymodal.data.schema import Modality
from polymodal.serving.batcher import NOT_RUN, MicroBatcher, QueueFull
from polymodal.serving.common import (
    UNAUTHORIZED,
    add_page,
    add_probes,
    answer_errors,
    auth_dependencies,
    guard,
    json_bytes,
    new_app,
)  # fmt: skip
from polymodal.serving.config import CONFIG_ENV, ServeConfig, cores
from polymodal.serving.inputs import (
    ErrorResponse,
    FieldError,
    InstanceChecker,
    PredictResponse,
    RequestError,
    from_validation_errors,
    parse_instances,
    request_model,
)
from polymodal.serving.logs import SERVER
from polymodal.serving.logs import configure as configure_logs
from polymodal.serving.metrics import Metrics
from polymodal.serving.page import CSP, PAGE_CSS, PAGE_JS, render_page
from polymodal.serving.search import create_search_app
from polymodal.serving.service import UNPROCESSABLE, Decoded, ModelService
from polymodal.version import __version__

log = logging.getLogger(SERVER)
PREDICT_PATHS = frozenset({"/v1/predict", "/v1/predict/form"})
INLINE_ROWS = 4  # a request this small, alone in the server, is decoded on the event loop

ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    413: {"model": ErrorResponse, "description": "A limit was exceeded (body, instances, pixels, seconds, text)"},
    422: {"model": ErrorResponse, "description": "Invalid input: wrong type, unknown field, corrupt file"},
    503: {
        "model": ErrorResponse,
        "description": "Overloaded (too many rows admitted) or starting: retry after the Retry-After header's seconds",
    },
}


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
    runtime: str = Field(description="torch or onnx: what the model folder holds")
    executor: str = Field(description="What answers: onnx-graph, onnx-network, torchscript or pytorch")
    polymodal_version: str


def create_app(config: ServeConfig, service: ModelService | None = None) -> FastAPI:
    """Build the app for `config.model` (or for an already loaded `service`)."""
    from polymodal.retrieval.retriever import is_aligned_folder

    if service is None and is_aligned_folder(config.model):  # an aligned model: search its index instead
        return create_search_app(config)
    configure_logs()
    service = service or ModelService(
        config.model, runtime=config.runtime, threads=config.threads, accelerate=config.trace
    )
    schema = service.schema
    metrics = Metrics()
    checker = InstanceChecker(schema, config)
    api_key = config.api_key()
    state = SimpleNamespace(batcher=None, pool=None, ready=False, started=time.time())
    PredictRequest = request_model(schema, config)  # noqa: N806 (a class made at run time)
    media = checker.media

    async def warm_up() -> None:
        try:
            one = await run_in_threadpool(lambda: service.decode([service.example_row()]))
            for n in (1, min(config.max_batch_size, 8)):  # first call, then a batch shape
                batch = Decoded(one.rows * n, {c: v * n for c, v in one.media.items()})
                (result,) = await state.batcher.run_now([batch])
                if isinstance(result, Exception):
                    raise result
            # The model, the libraries and the app are loaded for good: move their objects out of the garbage
            # collector's reach, so a full collection walks only what requests allocate (with torch loaded, a
            # full collection over everything paused the server 100-250 ms: the p99 tail at 100 req/s).
            gc.collect()
            gc.freeze()
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
        # Checking and decoding requests' files: a pool sized to the cores, beside the event loop and the model.
        state.pool = ThreadPoolExecutor(config.decode_threads or cores(), thread_name_prefix="polymodal-decode")
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
            state.pool.shutdown(wait=True)
            Metrics.worker_exit(os.getpid())
            log.info("stopped", extra={"fields": {"event": "stop"}})

    auth = "; every endpoint but /health and /ready needs 'Authorization: Bearer <key>'" if api_key else ""
    app = new_app(
        f"polymodal: predict {schema.label!r}",
        f"Serving the {service.predictor.fusion}-fusion model `{Path(config.model).name}`. Images and "
        f"audio are sent by value (base64 in JSON, or as uploads), never as paths{auth}.",
        lambda errors: from_validation_errors(errors, schema, config),
        lifespan=lifespan,
    )
    security = auth_dependencies(api_key)

    def prepare(instances: list[dict[str, Any]], form: bool) -> Decoded:
        """Check every value, then decode the request's files (in the pool when it has any)."""
        rows = checker.check_all(instances, form)
        try:
            return service.decode(rows)
        except RequestError:
            raise
        except Exception:  # a file that crashes a decoder (rather than failing cleanly) fails its request alone
            log.exception("request could not be decoded")
            raise RequestError([FieldError(None, None, UNPROCESSABLE)]) from None

    async def answer(instances: list[dict[str, Any]], form: bool = False) -> Response:
        batcher = state.batcher
        if batcher is None:
            raise HTTPException(503, "the server is starting", {"Retry-After": "1"})
        batcher.reserve(len(instances))  # bounded admission: 503 at once when full (QueueFull's handler)
        try:
            alone = batcher.admitted == len(instances) and len(instances) <= INLINE_ROWS
            if checker.has_media(instances) and not alone:
                decoded = await asyncio.get_running_loop().run_in_executor(state.pool, prepare, instances, form)
            else:  # no files, or a small request with nothing else in flight: the loop is free; a hop costs more
                decoded = prepare(instances, form)
            # Alone in the server, the request runs here: no batch could form, and the loop has nothing else to do.
            predictions = batcher.run_inline(decoded) if alone else NOT_RUN
            if predictions is NOT_RUN:
                predictions = await batcher.submit(decoded)
        finally:
            batcher.release(len(instances))
        return Response(json_bytes({"predictions": predictions}), media_type="application/json")

    async def predict_body(body: bytes) -> Response:
        return await answer(parse_instances(body, config))

    # ---- prediction ------------------------------------------------------------------------------------------
    body_schema = {"$ref": "#/components/schemas/PredictRequest"}

    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        dependencies=security,
        summary="Predict from JSON (images and audio as base64)",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}},
    )
    async def predict(request: Request) -> Response:
        return await predict_body(await request.body())

    form_schema = {
        "type": "object",
        "properties": {
            col: {
                Modality.TEXT: {"type": "string", "maxLength": config.max_text_chars},
                Modality.NUMERIC: {"type": "number"},
                Modality.CATEGORICAL: {"type": "string"},
            }.get(m, {"type": "string", "format": "binary"})
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
    async def predict_form(request: Request) -> Response:
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
        return await answer([values], form=True)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, plus the JSON body's models (the endpoint parses the body itself, with orjson)."""
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            body = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(body.pop("$defs", {}))
            schemas["PredictRequest"] = body
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
        batching = {"max_batch_size": config.max_batch_size, "max_wait_ms": config.max_wait_ms,
                    "max_queue": config.max_queue}  # fmt: skip
        return {**about, "limits": config.limits(), "batching": batching, "polymodal_version": __version__}

    add_probes(app, state, metrics)

    # ---- the page, served from here (no CDN) ----------------------------------------------------------------
    page = render_page(about, config.max_text_chars, api_key is not None, config.max_audio_seconds)
    add_page(app, page, ("page.js", PAGE_JS), PAGE_CSS, CSP)

    def shed(path: str) -> QueueFull | None:
        """Refuse a prediction before any work when not even one more row would be admitted."""
        batcher = state.batcher
        return batcher.refusal() if path in PREDICT_PATHS and batcher is not None else None

    # The hot endpoint is answered past FastAPI's routing, dependencies and request objects (a third of the
    # framework's time per request); the route above documents it and answers the same.
    fast = {("POST", "/v1/predict"): answer_errors(predict_body)}
    guard(app, metrics, config.max_body_bytes, api_key, public_docs=config.public_docs, shed=shed, routes=fast)
    app.state.serving = state
    app.state.service = service
    return app


def app_from_env() -> FastAPI:
    """App factory for worker processes (`--workers N`): the settings come from the environment."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
