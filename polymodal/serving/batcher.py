"""Adaptive micro-batching: concurrent requests share one forward pass, run off the event loop, and a request
never waits for company it may not get.

One model thread runs the batches one after another (the model is never used from two threads at once). When it
is free, whatever is queued (up to `max_batch_size` rows) goes at once: a lone request at light load runs
immediately, and under load the requests that arrived during a pass form the next one, so batches grow with the
load by themselves. `max_wait_ms` > 0 adds a fixed wait for a fuller batch (rarely worth its latency).
`run_inline` lets the caller run a request that has the server to itself on its own thread: with nothing queued,
nothing running and the previous request more than a pass ago (light load), there is no batch to form, and the
two thread hops cost more than a small model's pass. Under heavy load requests arrive closer together than that,
so they keep forming batches (inline passes there halved the saturation throughput and, in a flood, blocked the
event loop while the model thread idled).

Admission is bounded: `reserve` counts the rows of every request from parsing to its answer (decoding, waiting,
in a pass) and refuses one that would take the count above `max_queue`, so the caller can answer 503 at once
instead of letting a flood pile up into timeouts.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

NOT_RUN = object()  # run_inline's answer when the model is busy or requests are queued


class QueueFull(Exception):
    """More rows are admitted than `max_queue`: answer 503 with Retry-After rather than queue without bound."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Item:
    payload: Sequence[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """`await submit(rows)` -> `run([rows, rows, ...])[i]`. `run` returns one result (or exception) per request."""

    def __init__(
        self,
        run: Callable[[list[Sequence[Any]]], list[Any]],
        max_batch_size: int = 32,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0  # rows waiting for a pass
        self.admitted = 0  # rows reserved: from parsing to the answer
        self._rows_per_s = 0.0  # recent model throughput, for Retry-After
        self._arrived = asyncio.Event()
        self._busy = False  # a pass is running (model thread, warm-up or inline)
        self._last_arrival = 0.0  # when the latest request was admitted or refused
        self._gap = 0.0  # seconds between the latest request and the one before
        self._pass_s = 0.0  # recent seconds per pass
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-model")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="polymodal-batcher")

    # ---- admission -----------------------------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until the rows admitted now are answered, at the recent pace; at least one."""
        return max(1, round(self.admitted / self._rows_per_s)) if self._rows_per_s > 0 else 1

    def refusal(self, rows: int = 1) -> QueueFull | None:
        """Why a request of `rows` rows may not be admitted now, or None. A request alone is always admitted
        (however many rows it has, the instance limit bounds it)."""
        if self.admitted and self.admitted + rows > self.max_queue:
            self._arrived_now()
            return QueueFull(f"{self.admitted} rows are already admitted (limit {self.max_queue})", self.retry_after())
        return None

    def _arrived_now(self) -> None:
        now = time.perf_counter()
        self._gap, self._last_arrival = now - self._last_arrival, now

    def reserve(self, rows: int) -> None:
        """Admit a request of `rows` rows, or raise QueueFull."""
        if (refused := self.refusal(rows)) is not None:
            raise refused
        self._arrived_now()
        self.admitted += rows

    def release(self, rows: int) -> None:
        self.admitted -= rows

    # ---- batching --------------------------------------------------------------------------------------------
    async def submit(self, payload: Sequence[Any]) -> Any:
        if self._closing:
            raise RuntimeError("the batcher is shutting down")
        item = _Item(payload, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._queued_rows += len(payload)
        self._arrived.set()
        result = await item.future
        if isinstance(result, BaseException):
            raise result
        return result

    async def run_now(self, payloads: list[Sequence[Any]]) -> list[Any]:
        """Run on the model thread without waiting to batch (warm-up)."""
        self._busy = True
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, payloads)
        finally:
            self._busy = False

    def run_inline(self, payload: Sequence[Any]) -> Any:
        """Run one request now, on the calling thread, if the model is idle and nothing is queued; else return
        `NOT_RUN` (then `submit` it). Called from the event loop, which cannot start a batch meanwhile."""
        if self._busy or self._pending or self._closing or self.max_wait > 0:  # a set wait asks for company
            return NOT_RUN
        if self._gap < self._pass_s:  # requests are coming faster than passes: let them batch
            return NOT_RUN
        self._busy = True
        started = time.perf_counter()
        try:
            (result,) = self.run([payload])
        finally:
            self._busy = False
            # Requests that arrived while this pass held the loop are read right after it, close together: they
            # must not look spaced out (gaps are counted from here), or every one of them would run inline too.
            self._last_arrival = time.perf_counter()
        self._observe(1, len(payload), time.perf_counter() - started)
        if isinstance(result, BaseException):
            raise result
        return result

    def _observe(self, requests: int, rows: int, seconds: float) -> None:
        self._pass_s = seconds if not self._pass_s else 0.8 * self._pass_s + 0.2 * seconds  # from the first pass
        self._rows_per_s = 0.8 * self._rows_per_s + 0.2 * rows / max(seconds, 1e-6)
        if self.on_batch is not None:
            self.on_batch(requests, rows, seconds)

    async def close(self) -> None:
        """Answer everything already queued, then stop (graceful shutdown)."""
        self._closing = True
        self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    def _take(self) -> list[_Item]:
        batch, rows = [], 0
        while self._pending:
            item = self._pending[0]
            if batch and rows + len(item.payload) > self.max_batch_size:
                break
            self._pending.popleft()
            self._queued_rows -= len(item.payload)
            if item.future.done():  # the client went away while it waited
                continue
            batch.append(item)
            rows += len(item.payload)
        return batch

    async def _fill(self) -> None:
        """With `max_wait_ms` > 0: wait for more requests until the batch is full or its oldest request has
        waited that long."""
        while self._queued_rows < self.max_batch_size and not self._closing:
            remaining = self._pending[0].enqueued + self.max_wait - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.max_wait > 0:
                await self._fill()
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            self._busy = True
            try:
                results = await loop.run_in_executor(self._executor, self.run, [it.payload for it in batch])
            except Exception as e:  # `run` isolates bad requests itself; this is a last resort
                results = [e] * len(batch)
            finally:
                self._busy = False
            self._observe(len(batch), sum(len(it.payload) for it in batch), time.perf_counter() - started)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
