"""Micro-batching: requests that arrive together share one forward pass, off the event loop.

A bounded queue in front of one worker. The worker takes the first waiting item, waits up to
`max_wait_s` for more (or until `max_batch`), runs `fn(items)` on a dedicated thread and resolves each
caller's future. A full queue raises :class:`QueueFullError` at once (the service answers 503 with
Retry-After) instead of letting latency grow without bound; a caller that gives up (timeout,
disconnect) cancels its future and the worker skips it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "QueueFullError"]

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(RuntimeError):
    """More requests are waiting than the queue holds."""


class MicroBatcher(Generic[T, R]):
    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 16, max_wait_s: float = 0.01,
                 queue_size: int = 256, on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or queue_size < 1:
            raise ValueError("max_batch and queue_size must be >= 1")
        self.fn, self.max_batch, self.max_wait_s, self.queue_size = fn, max_batch, max_wait_s, queue_size
        self.on_batch = on_batch
        self._pending: collections.deque[tuple[T, asyncio.Future[R]]] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the model already uses every core for one batch; two batches would only contend.
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.items = 0

    @property
    def depth(self) -> int:
        """Items waiting (not counting the batch being computed)."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skulens-infer")
        self._task = asyncio.create_task(self._work(), name="skulens-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            _, fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(RuntimeError("service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, item: T, *, timeout: float | None = None) -> R:
        """The result of `fn` for `item`; QueueFullError when full, TimeoutError after `timeout` seconds."""
        if not self.running or self._wakeup is None:
            raise RuntimeError("batcher is not running")
        if len(self._pending) >= self.queue_size:
            raise QueueFullError(f"{len(self._pending)} requests already waiting (queue_size={self.queue_size})")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if not fut.done():  # timed out or the caller went away: let the worker skip it
                fut.cancel()

    async def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        n = min(self.max_batch, len(self._pending))
        return [self._pending.popleft() for _ in range(n)]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(item, fut) for item, fut in await self._next_batch() if not fut.done()]
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the failed batch
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
