"""The FastAPI app of `polymodal serve`, built from a model folder.

No `from __future__ import annotations` here: the request model is made at run time from the model's schema,
and FastAPI reads the endpoint annotations as real objects.
"""

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from polymodal.data.schema import Modality
from polymodal.serving.batcher import MicroBatcher
from polymodal.serving.common import UNAUTHORIZED, add_page, add_probes, auth_dependencies, guard, new_app
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
from polymodal.serving.logs import SERVER
from polymodal.serving.logs import configure as configure_logs
from polymodal.serving.metrics import Metrics
from polymodal.serving.page import CSP, PAGE_CSS, PAGE_JS, render_page
from polymodal.serving.search import create_search_app
from polymodal.serving.service import ModelService
from polymodal.version import __version__

log = logging.getLogger(SERVER)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: UNAUTHORIZED,
    413: {"model": ErrorResponse, "description": "A limit was exceeded (body, instances, pixels, seconds, text)"},
    422: {"model": ErrorResponse, "description": "Invalid input: wrong type, unknown field, corrupt file"},
    429: {"model": ErrorResponse, "description": "Too many rows waiting for the model; retry shortly"},
}
INLINE_CHECK_BYTES = 256 * 1024


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


def create_app(config: ServeConfig, service: ModelService | None = None) -> FastAPI:
    """Build the app for `config.model` (or for an already loaded `service`)."""
    from polymodal.retrieval.retriever import is_aligned_folder

    if service is None and is_aligned_folder(config.model):  # an aligned model: search its index instead
        return create_search_app(config)
    configure_logs()
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
    app = new_app(
        f"polymodal: predict {schema.label!r}",
        f"Serving the {service.predictor.fusion}-fusion model `{Path(config.model).name}`. Images and "
        f"audio are sent by value (base64 in JSON, or as uploads), never as paths{auth}.",
        lambda errors: from_validation_errors(errors, schema, config),
        lifespan=lifespan,
    )
    security = auth_dependencies(api_key)

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

    add_probes(app, state, metrics)

    # ---- the page, served from here (no CDN) ----------------------------------------------------------------
    page = render_page(about, config.max_text_chars, api_key_required=api_key is not None)
    add_page(app, page, ("page.js", PAGE_JS), PAGE_CSS, CSP)

    guard(app, metrics, config.max_body_bytes, api_key, public_docs=config.public_docs)
    app.state.serving = state
    app.state.service = service
    return app


def app_from_env() -> FastAPI:
    """App factory for worker processes (`--workers N`): the settings come from the environment."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
