"""Structured logs: one JSON object per line (access log and server events), easy to ship and query."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

ACCESS = "polymodal.access"
SERVER = "polymodal.serving"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: int = logging.INFO) -> None:
    """Send the access log and server events to stderr as JSON lines (idempotent)."""
    for name in (ACCESS, SERVER):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(getattr(h, "_polymodal", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            handler._polymodal = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
        logger.propagate = False
