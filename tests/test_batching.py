from __future__ import annotations

import asyncio
import threading
import time

import pytest

from aegis_router.batching import BatcherClosedError, DirectRunner, DynamicBatcher


class RecordingBatchFunction:
    """Doubles each item and records every batch it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, list[int]]] = []
        self.threads: set[str] = set()

    def __call__(self, key, items):
        self.calls.append((key, list(items)))
        self.threads.add(threading.current_thread().name)
        if key == "fail":
            raise ValueError("batch function failed on purpose")
        return [item * 2 for item in items]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_submissions_share_batch():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=64, max_wait_ms=50) as batcher:
            results = await asyncio.gather(*(batcher.submit("k", [value]) for value in range(10)))
            return results, batcher.batches, batcher.items

    results, batches, items = run(main())
    assert results == [[value * 2] for value in range(10)]
    assert len(function.calls) == 1
    assert sorted(function.calls[0][1]) == list(range(10))
    assert batches == 1
    assert items == 10


def test_large_submission_split_by_max_batch_size():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=4, max_wait_ms=0) as batcher:
            return await batcher.submit("k", list(range(10)))

    assert run(main()) == [value * 2 for value in range(10)]
    assert [len(items) for _, items in function.calls] == [4, 4, 2]


def test_batch_size_never_exceeds_limit():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=5, max_wait_ms=20) as batcher:
            return await asyncio.gather(*(batcher.submit("k", [value, value]) for value in range(6)))

    results = run(main())
    assert results == [[value * 2, value * 2] for value in range(6)]
    sizes = [len(items) for _, items in function.calls]
    assert max(sizes) <= 5
    assert sum(sizes) == 12


def test_keys_never_share_batch():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=64, max_wait_ms=20) as batcher:
            submissions = [batcher.submit("a" if value % 2 else "b", [value]) for value in range(8)]
            return await asyncio.gather(*submissions)

    results = run(main())
    assert results == [[value * 2] for value in range(8)]
    for key, items in function.calls:
        expected_parity = 1 if key == "a" else 0
        assert all(item % 2 == expected_parity for item in items), (key, items)
    assert len(function.calls) == 2


def test_batch_function_runs_in_one_worker_thread():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=2, max_wait_ms=0, name="unit") as batcher:
            await asyncio.gather(*(batcher.submit("k", [value]) for value in range(6)))

    run(main())
    assert len(function.threads) == 1
    assert next(iter(function.threads)).startswith("aegis-unit")
    assert threading.current_thread().name not in function.threads


def test_failure_reaches_only_its_batch():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_batch_size=64, max_wait_ms=10) as batcher:
            return await asyncio.gather(
                batcher.submit("fail", [1]), batcher.submit("ok", [2]), return_exceptions=True
            )

    failed, succeeded = run(main())
    assert isinstance(failed, ValueError)
    assert succeeded == [4]


def test_wrong_result_count_is_an_error():
    async def main():
        async with DynamicBatcher(lambda key, items: items[:-1], max_wait_ms=0) as batcher:
            await batcher.submit("k", [1, 2, 3])

    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        run(main())


def test_lone_request_waits_max_wait():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_wait_ms=40) as batcher:
            started = time.perf_counter()
            await batcher.submit("k", [1])
            return time.perf_counter() - started

    assert run(main()) >= 0.035


def test_aclose_runs_queued_work_without_waiting():
    function = RecordingBatchFunction()

    async def main():
        batcher = DynamicBatcher(function, max_wait_ms=10_000)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit("k", [value])) for value in range(3)]
        await asyncio.sleep(0.01)
        assert batcher.queued_items == 3

        started = time.perf_counter()
        await batcher.aclose()
        closed_after = time.perf_counter() - started
        results = await asyncio.gather(*pending)
        with pytest.raises(BatcherClosedError):
            await batcher.submit("k", [4])
        return results, closed_after, batcher.queued_items

    results, closed_after, queued = run(main())
    assert results == [[0], [2], [4]]
    assert closed_after < 1.0
    assert queued == 0


def test_cancelled_request_is_not_run():
    function = RecordingBatchFunction()

    async def main():
        async with DynamicBatcher(function, max_wait_ms=50) as batcher:
            cancelled = asyncio.create_task(batcher.submit("k", [100]))
            kept = asyncio.create_task(batcher.submit("k", [1]))
            await asyncio.sleep(0.005)
            cancelled.cancel()
            return await kept

    assert run(main()) == [2]
    assert [items for _, items in function.calls] == [[1]]


def test_submit_before_start_raises():
    batcher = DynamicBatcher(RecordingBatchFunction())
    with pytest.raises(RuntimeError, match="not started"):
        run(batcher.submit("k", [1]))


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"max_batch_size": 2.5}, {"max_batch_size": True}, {"max_wait_ms": -1.0}],
)
def test_invalid_options_rejected(options):
    with pytest.raises(ValueError):
        DynamicBatcher(RecordingBatchFunction(), **options)


def test_direct_runner_runs_each_submission_alone():
    function = RecordingBatchFunction()

    async def main():
        runner = DirectRunner(function)
        runner.start()
        results = await asyncio.gather(*(runner.submit("k", [value]) for value in range(5)))
        await runner.aclose()
        with pytest.raises(BatcherClosedError):
            await runner.submit("k", [1])
        return results, runner.batches

    results, batches = run(main())
    assert results == [[value * 2] for value in range(5)]
    assert batches == 5
    assert len(function.calls) == 5
