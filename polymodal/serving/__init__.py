"""`polymodal serve`: a REST service for a model folder (FastAPI + uvicorn) with micro-batching, request limits,
Prometheus metrics, JSON access logs and a page to try the model. Imports FastAPI, so it is imported lazily by the CLI.
"""

from polymodal.serving.app import create_app
from polymodal.serving.config import ServeConfig
from polymodal.serving.run import resolve_host, serve

__all__ = ["ServeConfig", "create_app", "resolve_host", "serve"]
