"""Run the server with uvicorn: one process, or `workers` processes sharing the port."""

from __future__ import annotations

import os
import shutil
import tempfile

from polymodal.errors import UserError
from polymodal.serving.config import CONFIG_ENV, ServeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRACEFUL_SECONDS = 30


def resolve_host(host: str | None, api_key_required: bool) -> tuple[str, str]:
    """The address to bind and a line saying why. Without an API key the default is loopback only."""
    if host is None:
        if api_key_required:
            return "0.0.0.0", "API key required on /v1; listening on all interfaces (0.0.0.0)"
        return "127.0.0.1", "no API key (--api-key-env): listening on 127.0.0.1 only, this machine alone can connect"
    if not api_key_required and host not in LOOPBACK:
        return host, f"WARNING: no API key and listening on {host}: anyone who can reach it can use the model"
    required = " (API key required on all but /health and /ready)" if api_key_required else ""
    return host, f"listening on {host}{required}"


def serve(config: ServeConfig, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish in-flight requests (up to 30 s) and exit."""
    import uvicorn

    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    options = dict(
        host=host, port=port, log_level=log_level, access_log=False, server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )  # fmt: skip
    if workers == 1:
        from polymodal.serving.app import create_app

        uvicorn.run(create_app(config), **options)
        return
    # Several processes: uvicorn starts each by import string, so the settings travel in the environment,
    # and the Prometheus metrics of all workers are added up through files in a private folder.
    metrics_dir = tempfile.mkdtemp(prefix="polymodal-metrics-")
    os.environ[CONFIG_ENV] = config.to_json()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("polymodal.serving.app:app_from_env", factory=True, workers=workers, **options)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
