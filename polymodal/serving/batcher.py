"""Micro-batching: concurrent requests are grouped into one forward pass, run off the event loop.

A batch closes when it holds `max_batch_size` rows or when its oldest request has waited `max_wait_ms`,
whichever comes first; requests that arrive while the model is busy form the next batch. One model thread
runs the batches one after another, so the model is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """More rows are waiting than `max_queue`: the caller should answer 429 rather than queue without bound."""


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
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        on_batch: Callable[[int, int, float], None] | None = None,
    ):
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.max_queue, self.on_batch = max_queue, on_batch
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-model")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="polymodal-batcher")

    async def submit(self, payload: Sequence[Any]) -> Any:
        if self._closing:
            raise RuntimeError("the batcher is shutting down")
        if self._queued_rows + len(payload) > self.max_queue and self._pending:
            raise QueueFull(f"{self._queued_rows} rows are already waiting (limit {self.max_queue})")
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
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, payloads)

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

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Wait for more requests until the batch is full or its oldest request has waited max_wait.
            while self._queued_rows < self.max_batch_size and not self._closing:
                remaining = self._pending[0].enqueued + self.max_wait - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [it.payload for it in batch])
            except Exception as e:  # `run` isolates bad requests itself; this is a last resort
                results = [e] * len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), sum(len(it.payload) for it in batch), time.perf_counter() - started)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
