"""polymodal serve: a model over HTTP (JSON and form endpoints, metrics, a page to try it)."""

from __future__ import annotations

import typer

from polymodal.cli.base import _run, err
from polymodal.cli.options import ModelFolder, Runtime


def serve(
    model: ModelFolder,
    host: str | None = typer.Option(None, help="Address to bind (default: 127.0.0.1, or 0.0.0.0 with an API key)"),
    port: int = typer.Option(8000),
    workers: int = typer.Option(1, help="Processes sharing the port, each with its own copy of the model"),
    threads: int = typer.Option(1, help="Intra-op threads of the model in each worker"),
    max_batch_size: int = typer.Option(32, help="Rows per forward pass at most (1: micro-batching off)"),
    max_wait_ms: float = typer.Option(
        0.0,
        help="0: adaptive batching (a batch is what queued while the model was busy; a lone request runs at "
        "once); more: also wait this long for others to share a batch",
    ),
    api_key_env: str | None = typer.Option(
        None,
        help="Environment variable holding the API key; every endpoint but /health and /ready then needs "
        "'Authorization: Bearer <key>'",
    ),
    public_docs: bool = typer.Option(
        False,
        help="With an API key: leave the page, /docs, /openapi.json and /metrics open to anyone (they show "
        "the model's columns and traffic); /v1 still needs the key",
    ),
    max_body_mb: float = typer.Option(16.0, help="Largest request body, in MiB"),
    max_instances: int = typer.Option(64, help="Instances per request at most"),
    max_image_pixels: int = typer.Option(16_777_216, help="Largest image (width x height), checked before decoding"),
    max_audio_seconds: float = typer.Option(60.0, help="Longest audio clip"),
    max_text_chars: int = typer.Option(10_000, help="Longest text value"),
    max_queue: int = typer.Option(
        256, help="Rows admitted at most (being decoded, waiting or in a pass); beyond it 503 + Retry-After at once"
    ),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
    runtime: Runtime = "torch",
    trace: bool = typer.Option(
        True,
        help="PyTorch runtime: a faster forward pass where it gives the network's outputs (BatchNorm folded; the "
        "network exported in memory to ONNX Runtime with the onnx extra, else traced); --no-trace: the network as is",
    ),
) -> None:
    """Serve a model over HTTP: JSON and form prediction endpoints, metrics, and a page to try it at /."""
    from polymodal.serving import ServeConfig, resolve_host
    from polymodal.serving import serve as run_server

    def go():
        config = ServeConfig(
            model=str(model), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_env=api_key_env,
            max_body_bytes=int(max_body_mb * 1024 * 1024), max_instances=max_instances,
            max_image_pixels=max_image_pixels, max_audio_seconds=max_audio_seconds, max_text_chars=max_text_chars,
            max_queue=max_queue, public_docs=public_docs, runtime=runtime, threads=threads, trace=trace,
        )  # fmt: skip
        bind, notice = resolve_host(host, api_key_env is not None)
        err.print(f"polymodal serve: {notice}; http://{bind}:{port}/", highlight=False)
        run_server(config, bind, port, workers, log_level)

    _run(go)
