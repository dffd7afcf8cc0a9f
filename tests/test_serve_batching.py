"""The micro-batcher: concurrent requests share batches; a full queue is refused at once; timeouts free slots."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from skulens.serve.batching import MicroBatcher, QueueFullError


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_results_stay_in_order() -> None:
    sizes: list[int] = []
    threads: set[str] = set()

    def square(items: list[int]) -> list[int]:
        sizes.append(len(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.02)
        return [i * i for i in items]

    async def main() -> list[int]:
        b = MicroBatcher(square, max_batch=8, max_wait_s=0.05, queue_size=100)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(i) for i in range(40)))
        finally:
            await b.stop()

    assert _run(main()) == [i * i for i in range(40)]
    assert max(sizes) == 8 and sum(sizes) == 40 and len(sizes) <= 6
    assert threads and all(t.startswith("skulens-infer") for t in threads)  # never on the event loop


def test_max_batch_one_runs_one_at_a_time() -> None:
    sizes: list[int] = []

    async def main() -> None:
        b = MicroBatcher(lambda xs: sizes.append(len(xs)) or xs, max_batch=1, max_wait_s=0.01)
        await b.start()
        await asyncio.gather(*(b.submit(i) for i in range(5)))
        await b.stop()

    _run(main())
    assert sizes == [1] * 5


def test_a_lone_request_waits_at_most_max_wait() -> None:
    async def main() -> float:
        b = MicroBatcher(lambda xs: xs, max_batch=64, max_wait_s=0.05)
        await b.start()
        t0 = time.perf_counter()
        await b.submit(1)
        dt = time.perf_counter() - t0
        await b.stop()
        return dt

    assert _run(main()) < 0.5


def test_full_queue_raises_at_once() -> None:
    gate = threading.Event()

    def blocked(xs: list[int]) -> list[int]:
        gate.wait(5)
        return xs

    async def main() -> None:
        b = MicroBatcher(blocked, max_batch=1, max_wait_s=0.0, queue_size=2)
        await b.start()
        first = asyncio.ensure_future(b.submit(0))  # taken by the worker, blocks it
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]  # fill the queue
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError):
            await b.submit(3)
        assert time.perf_counter() - t0 < 0.1
        gate.set()
        assert await first == 0 and [await q for q in queued] == [1, 2]
        await b.stop()

    _run(main())


def test_timeout_cancels_and_the_worker_skips_it() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        seen.extend(xs)
        gate.wait(5)
        return xs

    async def main() -> None:
        b = MicroBatcher(slow, max_batch=1, max_wait_s=0.0, queue_size=4)
        await b.start()
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await b.submit(1, timeout=0.05)  # still queued behind the blocked batch when it gives up
        gate.set()
        assert await first == 0
        assert await b.submit(2) == 2
        await b.stop()

    _run(main())
    assert 1 not in seen


def test_an_exception_reaches_every_caller_of_the_batch_and_the_worker_survives() -> None:
    def flaky(xs: list[int]) -> list[int]:
        if -1 in xs:
            raise ValueError("bad batch")
        return xs

    async def main() -> None:
        b = MicroBatcher(flaky, max_batch=4, max_wait_s=0.05)
        await b.start()
        results = await asyncio.gather(b.submit(-1), b.submit(5), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await b.submit(7) == 7
        await b.stop()

    _run(main())


def test_submit_before_start_and_after_stop_is_an_error() -> None:
    async def main() -> None:
        b = MicroBatcher(lambda xs: xs)
        with pytest.raises(RuntimeError):
            await b.submit(1)
        await b.start()
        await b.stop()
        with pytest.raises(RuntimeError):
            await b.submit(1)

    _run(main())
