"""Prometheus metrics of one app. With several worker processes (`--workers N`) prometheus-client's multiprocess
mode is used (PROMETHEUS_MULTIPROC_DIR, set by `serve`), and /metrics adds up all workers."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        # Each app gets its own registry (several apps can live in one process, as in the tests); in multiprocess
        # mode the values live in files and /metrics collects them from there.
        self.registry = CollectorRegistry()
        reg = None if multiprocess_dir() else self.registry
        self.requests = Counter(
            "polymodal_requests", "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"], registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "polymodal_request_latency_seconds", "Time from request to response, by endpoint", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_flight = Gauge(
            "polymodal_requests_in_flight", "Requests being handled now", registry=reg, multiprocess_mode="livesum"
        )
        self.batch_rows = Histogram(
            "polymodal_batch_size", "Rows per forward pass (micro-batch)", buckets=BATCH_BUCKETS, registry=reg
        )
        self.batch_requests = Histogram(
            "polymodal_batch_requests", "Requests per forward pass (micro-batch)", buckets=BATCH_BUCKETS, registry=reg
        )
        self.batch_seconds = Histogram(
            "polymodal_batch_seconds", "Time of one micro-batch: decoding, preprocessing and forward pass",
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.instances = Counter("polymodal_instances", "Instances predicted", registry=reg)

    def observe_batch(self, n_requests: int, n_rows: int, seconds: float) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_rows.observe(n_rows)
        self.batch_seconds.observe(seconds)
        self.instances.inc(n_rows)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_dir():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def worker_exit(pid: int) -> None:
        """Drop a stopped worker's live gauges (multiprocess mode only)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)
