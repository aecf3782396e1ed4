"""Dynamic batching: group the texts of concurrent requests into one encoder call.

A :class:`DynamicBatcher` lives on an asyncio event loop. A request submits its
texts under a key and awaits its rows. Texts with different keys (for example
embeddings at two different tiers) never share a batch. One worker task takes
the oldest queued request, waits until ``max_batch_size`` texts of its key are
queued or that request has waited ``max_wait_ms``, then runs the batch function
once in a worker thread and hands each request its own rows. While one batch
runs, the next one fills, so under load batches grow instead of requests
queueing one by one.

:class:`DirectRunner` has the same interface and runs each request on its own,
for comparison and for callers that want no added wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import AegisRouterError

logger = logging.getLogger(__name__)

BatchFunction = Callable[[Hashable, list[Any]], Sequence[Any]]
"""Runs one batch: takes the key and the texts, returns one result per text, in order."""


class BatcherClosedError(AegisRouterError, RuntimeError):
    """The batcher is shutting down and accepts no new work."""


class Runner(Protocol):
    """Interface of a batcher as the service uses it: start, submit texts under a key, close."""

    batches: int

    def start(self) -> None: ...

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]: ...

    async def aclose(self) -> None: ...

    @property
    def queued_items(self) -> int: ...


@dataclass(eq=False)
class _Job:
    key: Hashable
    items: list[Any]
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    """Collects submissions into batches of up to ``max_batch_size`` items and runs them one at a time.

    ``run_batch`` runs in a single worker thread, so it never runs twice at
    once. A submission larger than ``max_batch_size`` is split into chunks that
    may go into different batches. Call :meth:`start` on the event loop before
    the first :meth:`submit`, and :meth:`aclose` to finish queued work.
    """

    def __init__(
        self,
        run_batch: BatchFunction,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        name: str = "batcher",
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int of at least 1, got {max_batch_size!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms!r}")

        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self.name = name
        self.batches = 0
        """Batches run successfully since the batcher started."""
        self.items = 0
        """Items in those batches."""

        self._run_batch = run_batch
        self._pending: deque[_Job] = deque()
        self._queued_by_key: Counter[Hashable] = Counter()
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queued_items(self) -> int:
        """Items waiting for a batch, not counting the batch that is running."""
        return sum(self._queued_by_key.values())

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is not None:
            raise RuntimeError(f"{self.name} is already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"aegis-{self.name}")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"aegis-{self.name}")

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """Queue ``items`` under ``key`` and return their results in order once their batches ran.

        Raises :class:`BatcherClosedError` once :meth:`aclose` was called, and
        the batch function's exception if a batch with these items failed.
        """
        if self._worker is None or self._wakeup is None:
            raise RuntimeError(f"{self.name} is not started: call start() on the event loop first")
        if self._closing:
            raise BatcherClosedError(f"{self.name} is shutting down and accepts no new requests")
        items = list(items)
        if not items:
            return []

        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(items), self.max_batch_size):
            chunk = items[start : start + self.max_batch_size]
            job = _Job(key, chunk, loop.create_future(), loop.time())
            self._pending.append(job)
            self._queued_by_key[key] += len(chunk)
            futures.append(job.future)
        self._wakeup.set()

        # return_exceptions keeps a failure in one chunk from leaving the others'
        # exceptions unretrieved; the first one is raised below.
        parts = await asyncio.gather(*futures, return_exceptions=True)
        results: list[Any] = []
        for part in parts:
            if isinstance(part, BaseException):
                raise part
            results.extend(part)
        return results

    async def aclose(self) -> None:
        """Reject new submissions, run every queued batch without further waiting, then stop."""
        if self._worker is None or self._wakeup is None:
            return
        self._closing = True
        self._wakeup.set()
        try:
            await self._worker
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
        logger.debug("%s closed after %d batches of %d items", self.name, self.batches, self.items)

    async def __aenter__(self) -> DynamicBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._oldest_live_job()
            if first is None:
                if self._closing:
                    return
                await self._wait_for_wakeup(None)
                continue

            await self._fill(first, loop)
            batch = self._take(first.key)
            if batch:
                await self._execute(first.key, batch, loop)

    def _oldest_live_job(self) -> _Job | None:
        # Requests cancelled while queued (a client that disconnected) are dropped unrun.
        while self._pending and self._pending[0].future.done():
            self._forget(self._pending.popleft())
        return self._pending[0] if self._pending else None

    async def _fill(self, first: _Job, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until a full batch of ``first``'s key is queued or ``first`` has waited ``max_wait_ms``."""
        deadline = first.enqueued + self.max_wait_ms / 1000
        while not self._closing and self._queued_by_key[first.key] < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await self._wait_for_wakeup(remaining)

    async def _wait_for_wakeup(self, timeout: float | None) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            pass

    def _take(self, key: Hashable) -> list[_Job]:
        """Remove the oldest jobs of ``key`` that fit into one batch, keeping the order of the rest."""
        batch: list[_Job] = []
        still_pending: deque[_Job] = deque()
        size = 0
        full = False
        for job in self._pending:
            if job.future.done():
                self._forget(job)
            elif job.key != key or full:
                still_pending.append(job)
            elif batch and size + len(job.items) > self.max_batch_size:
                # Later jobs of this key wait too, so requests run in arrival order.
                full = True
                still_pending.append(job)
            else:
                batch.append(job)
                size += len(job.items)
                self._forget(job)
        self._pending = still_pending
        return batch

    def _forget(self, job: _Job) -> None:
        self._queued_by_key[job.key] -= len(job.items)
        if self._queued_by_key[job.key] <= 0:
            del self._queued_by_key[job.key]

    async def _execute(self, key: Hashable, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        items = [item for job in batch for item in job.items]
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, key, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            # The error goes to every request of the batch, which reports it.
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return

        self.batches += 1
        self.items += len(items)
        offset = 0
        for job in batch:
            part = list(results[offset : offset + len(job.items)])
            offset += len(job.items)
            if not job.future.done():
                job.future.set_result(part)


class DirectRunner:
    """Runs each submission on its own, at once, in the event loop's default thread pool.

    This is the no-batching mode: concurrent requests run in parallel threads
    and never share an encoder call.
    """

    def __init__(self, run_batch: BatchFunction) -> None:
        self._run_batch = run_batch
        self._closing = False
        self.batches = 0
        self.items = 0

    @property
    def queued_items(self) -> int:
        """Always 0: nothing waits for a batch."""
        return 0

    def start(self) -> None:
        self._closing = False

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """Run the batch function on ``items`` in a worker thread and return its results."""
        if self._closing:
            raise BatcherClosedError("the runner is shutting down and accepts no new requests")
        items = list(items)
        if not items:
            return []
        results = await asyncio.to_thread(self._run_batch, key, items)
        if len(results) != len(items):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        self.batches += 1
        self.items += len(items)
        return list(results)

    async def aclose(self) -> None:
        """Reject new submissions; calls already running finish in their threads."""
        self._closing = True
