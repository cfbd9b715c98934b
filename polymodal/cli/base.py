"""What every verb shares: the typer app and its --debug callback, the consoles, error handling, and the helpers that
turn flags into config settings. Light imports only: `polymodal --help` loads this."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and use fused multimodal models.")
# Wide enough for the metric tables when output goes to a file or a pipe (rich would default to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEBUG_ENV = "POLYMODAL_DEBUG"


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help=f"Print the traceback of internal errors (or {DEBUG_ENV}=1)"),
) -> None:
    """Train, evaluate and use fused multimodal models."""
    import os

    if debug:
        os.environ[DEBUG_ENV] = "1"


def _modalities(**columns: list[str] | None) -> dict[str, str] | None:
    """The column -> modality overrides given with --text/--image/--audio/--numeric/--categorical."""
    return {c: modality for modality, cols in columns.items() for c in cols or []} or None


def _settings(**flags: object) -> dict[str, object]:
    """The flags the user gave (None: not given, so the config file or the default stands)."""
    return {k: v for k, v in flags.items() if v is not None and v != []}


def _set_options(sets: list[str] | None) -> dict[str, object]:
    """--set PATH=VALUE pairs as {dotted path: value of the setting's type}."""
    from polymodal.config import ConfigError, parse_value

    out: dict[str, object] = {}
    for item in sets or []:
        path, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set takes PATH=VALUE (e.g. train.lr=3e-4), not {item!r}")
        out[path.strip()] = parse_value(path.strip(), text.strip())
    return out


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _run(fn: Callable[[], Any]) -> Any:
    """Errors a user can fix (`UserError`: bad rows, unknown columns, bad options; a missing file) become a message
    and exit code 2. Anything else is a bug: say so, keep the traceback in a file, and exit with code 3."""
    import click

    from polymodal.errors import UserError

    try:
        return fn()
    except (UserError, FileNotFoundError) as e:
        _fail(str(e))
    except (typer.Exit, click.exceptions.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the last resort: report the bug instead of a bare traceback
        _internal_error(e)


def _internal_error(e: Exception) -> NoReturn:
    """Report an unexpected exception as a bug: one line, the traceback in a file (and on screen with --debug)."""
    import os
    import tempfile
    import time
    import traceback

    trace = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    fd, path = tempfile.mkstemp(prefix=f"polymodal-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(f"polymodal {' '.join(sys.argv[1:])}\n\n{trace}")
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        err.print(trace, highlight=False, markup=False)
    err.print(
        f"[bold red]internal error (a bug in polymodal):[/] {type(e).__name__}: {e}\n"
        f"traceback written to {path} (shown here with --debug or {DEBUG_ENV}=1); please report it with that file.",
        highlight=False,
    )
    raise typer.Exit(code=3)
