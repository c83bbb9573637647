"""The live check-in inference pool: a few threads shared by every /ws/identify/ connection of a
process, served round-robin.

Each connection already has at most one frame in flight and keeps only its newest unanalysed frame
(older ones are dropped and counted in the next ``faces`` reply). Without a shared pool each
connection's frame ran in the event loop's default executor (up to cores + 4 threads at once), so
K streams ran K analyses at once on two cores: every frame got slower together, and a busy stream's
frames took CPU from the others and from the HTTP API in the same process. Here at most
``CHECKIN_INFERENCE_WORKERS`` frames are analysed at once; connections wait for a turn in the
order they asked (FIFO), and a connection asks again only after its frame is done, so when the
pool is saturated each of K connections gets one turn in K: a flooding stream cannot take more.
A connection picks its frame when its turn comes (checkin.consumers), so the frame analysed is
the newest it has, not the one it had when it joined the queue.

``CHECKIN_INFERENCE_WORKERS = 0`` switches the pool off (the previous behaviour, kept to measure
against: BENCHMARKS.md, "Kiosk capacity").
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class FairPool:
    """At most ``workers`` calls at once, granted first come first served (0 = no bound: the event
    loop's default executor). One instance per process; safe across event loops (each loop has its
    own queue of waiters, e.g. one per test)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="checkin-inference") if workers > 0 else None
        self._queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _queue(self) -> _LoopQueue:
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _LoopQueue(self.workers)
        return queue

    def turn(self) -> _Turn:
        """``async with pool.turn():`` waits for a free worker, in arrival order."""
        return _Turn(self._queue())

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in one of the pool's threads (call inside ``turn()``)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def waiting(self) -> int:
        return sum(len(q.waiters) for q in list(self._queues.values()))


class _LoopQueue:
    def __init__(self, workers: int):
        self.free = workers if workers > 0 else None  # None: unbounded
        self.waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        if self.free is None:
            return
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over by resolving this
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as the connection went away: pass the slot on
            else:
                self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self.free is None:
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Turn:
    def __init__(self, queue: _LoopQueue):
        self.queue = queue

    async def __aenter__(self) -> None:
        await self.queue.acquire()

    async def __aexit__(self, *exc) -> None:
        self.queue.release()


_pool: FairPool | None = None


def inference_pool() -> FairPool:
    """The process's pool, sized by CHECKIN_INFERENCE_WORKERS (rebuilt if the setting changes, for tests)."""
    from django.conf import settings

    global _pool
    workers = settings.CHECKIN_INFERENCE_WORKERS
    if _pool is None or _pool.workers != workers:
        _pool = FairPool(workers)
    return _pool
