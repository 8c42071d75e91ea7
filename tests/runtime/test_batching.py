"""DynamicBatcher and plan_runs, through their public interfaces, on a real event loop.

Handlers are real functions on the batcher's worker threads; a handler that must
stay busy waits on a threading.Event the test sets, so no test depends on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from joules.errors import BatcherClosedError, ConfigError, DeadlineExceededError, QueueFullError
from joules.runtime.batching import Batch, BatchingConfig, DynamicBatcher, plan_runs


class Recorder:
    """Doubles each item; records every batch; optionally holds until released."""

    def __init__(self, hold: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, items: Batch[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        self.entered.set()
        self.release.wait(30)
        return [
            ValueError(f"bad item {x}") if x < 0 else x * 2  # per-item errors
            for x in items
        ]


async def until(predicate, timeout: float = 30.0) -> None:
    """Wait for a condition that other threads make true (bounded, polling the loop)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def run(coro):
    return asyncio.run(coro)


# (max_batch_size, window_rows): the handler gets up to the window's rows (the server's runner
# then cuts them into model calls of at most max_batch_size), so both take 8 rows at a time.
@pytest.mark.parametrize(("max_batch_size", "window_rows"), [(8, 0), (4, 8)])
def test_idle_dispatches_at_once_then_batches_what_queued_meanwhile(max_batch_size: int, window_rows: int) -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        config = BatchingConfig(max_batch_size=max_batch_size, window_rows=window_rows, max_queue_delay_ms=60_000)
        b = DynamicBatcher(h, config)
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        # The model is idle: the first request runs alone at once, without waiting the (huge) delay.
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        assert h.batches == [[1]]
        rest = [asyncio.ensure_future(b.submit(x)) for x in range(2, 12)]
        await until(lambda: b.depth == 10)
        h.release.set()
        assert await first == 2
        assert await asyncio.gather(*rest) == [x * 2 for x in range(2, 12)]
        # Queued while the first ran: taken in order, at most 8 rows per handler call.
        assert h.batches[1:] == [list(range(2, 10)), [10, 11]]
        await b.close()

    run(main())


def test_each_caller_gets_its_own_result_or_error() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=16))
        b.start()
        blocker = asyncio.ensure_future(b.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        items = [5, -1, 7, -2, 9]
        futs = [asyncio.ensure_future(b.submit(x)) for x in items]
        await until(lambda: b.depth == len(items))
        h.release.set()
        results = await asyncio.gather(*futs, return_exceptions=True)
        await blocker
        assert results[0] == 10 and results[2] == 14 and results[4] == 18
        assert isinstance(results[1], ValueError) and "bad item -1" in str(results[1])
        assert isinstance(results[3], ValueError) and "bad item -2" in str(results[3])
        assert h.batches[1] == items  # one call served all five
        await b.close()

    run(main())


def test_a_handler_that_fails_the_whole_batch_is_split_down_to_the_failing_item() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def handler(items: Batch[str]) -> list[str]:
        calls.append(list(items))
        gate.wait(30)
        if "poison" in items:
            raise RuntimeError("cannot run a batch holding poison")
        return [s.upper() for s in items]

    async def main() -> None:
        b = DynamicBatcher(handler, BatchingConfig(max_batch_size=8))
        b.start()
        first = asyncio.ensure_future(b.submit("a"))
        await until(lambda: b.running == 1)
        futs = [asyncio.ensure_future(b.submit(s)) for s in ("b", "poison", "c")]
        await until(lambda: b.depth == 3)
        gate.set()
        results = await asyncio.gather(first, *futs, return_exceptions=True)
        assert results[0] == "A" and results[1] == "B" and results[3] == "C"
        assert isinstance(results[2], RuntimeError)
        # Halves, then halves of the half that still fails (isolation.isolate).
        assert calls[1] == ["b", "poison", "c"] and calls[2:] == [["b"], ["poison", "c"], ["poison"], ["c"]]
        await b.close()

    run(main())


def test_rows_count_towards_the_batch_size_and_a_big_request_runs_alone() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=4, window_rows=0))  # window: max_batch_size
        b.start()
        first = asyncio.ensure_future(b.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        futs = [asyncio.ensure_future(b.submit(x, rows=r)) for x, r in ((1, 3), (2, 2), (3, 9), (4, 1))]
        await until(lambda: b.depth == 4)
        h.release.set()
        await asyncio.gather(first, *futs)
        assert h.batches[1:] == [[1], [2], [3], [4]]  # 3+2 > 4; 9 > 4 goes alone; order is kept
        await b.close()

    run(main())


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=1, max_queue=3))
        b.start()
        running = asyncio.ensure_future(b.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        queued = [asyncio.ensure_future(b.submit(x)) for x in (1, 2, 3)]
        await until(lambda: b.depth == 3)
        with pytest.raises(QueueFullError) as e:
            await b.submit(4)
        assert e.value.retry_after_s >= 1 and "queue is full" in str(e.value)
        h.release.set()
        assert await asyncio.gather(running, *queued) == [0, 2, 4, 6]
        assert await b.submit(5) == 10  # accepts again once drained
        await b.close()

    run(main())


def test_deadline_passed_in_the_queue_costs_no_model_call() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=8))
        b.start()
        running = asyncio.ensure_future(b.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        with pytest.raises(DeadlineExceededError):
            await b.submit(2, deadline=time.monotonic() - 1)  # already past
        assert b.depth == 0
        h.release.set()
        await running
        assert await b.submit(3) == 6
        assert [x for batch in h.batches for x in batch] == [1, 3]  # 2 never reached the model
        await b.close()

    run(main())


def test_cancelled_caller_is_removed_from_the_queue_and_costs_no_model_call() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=8))
        b.start()
        running = asyncio.ensure_future(b.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        gone = asyncio.ensure_future(b.submit(2))
        stays = asyncio.ensure_future(b.submit(3))
        await until(lambda: b.depth == 2)
        gone.cancel()  # what a client disconnect does to its request
        await asyncio.gather(gone, return_exceptions=True)
        assert b.depth == 1
        h.release.set()
        assert await running == 2 and await stays == 6
        assert h.batches == [[1], [3]]
        await b.close()

    run(main())


def test_handler_sees_which_callers_gave_up() -> None:
    seen: list[list[bool]] = []
    gate = threading.Event()
    entered = threading.Event()

    def handler(items: Batch[int]) -> list[int]:
        entered.set()
        gate.wait(30)
        seen.append([items.abandoned(i) for i in range(len(items))])
        return list(items)

    async def main() -> None:
        b = DynamicBatcher(handler, BatchingConfig(max_batch_size=8))
        b.start()
        a = asyncio.ensure_future(b.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        gate.set()
        await b.close()
        assert seen == [[True]]

    run(main())


def test_a_handler_can_answer_an_item_before_the_batch_is_done() -> None:
    gate = threading.Event()

    def handler(items: Batch[int]) -> list[int]:
        items.deliver(0, items[0] * 10)  # the first item's rows are done
        gate.wait(30)  # ... while the rest of the batch still computes
        return [x * 10 for x in items]

    async def main() -> None:
        b = DynamicBatcher(handler, BatchingConfig(max_batch_size=8))
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        assert await first == 10  # answered although the handler has not returned
        assert b.running == 1
        second = asyncio.ensure_future(b.submit(2))
        gate.set()
        assert await second == 20
        await b.close()

    run(main())


def test_queue_delay_is_spent_only_while_another_call_runs() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        # Two instances: while one call runs, a request for the free instance waits for company.
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=3, max_queue_delay_ms=60_000, instances=2))
        b.start()
        first = asyncio.ensure_future(b.submit(1))
        await until(lambda: b.running == 1)
        second = asyncio.ensure_future(b.submit(2))
        await until(lambda: b.depth == 1)
        assert b.running == 1  # waits (the delay is a minute) instead of taking the free instance
        more = [asyncio.ensure_future(b.submit(x)) for x in (3, 4)]
        await until(lambda: b.running == 2)  # a full batch goes at once
        assert b.depth == 0
        h.release.set()
        assert await asyncio.gather(first, second, *more) == [2, 4, 6, 8]
        assert sorted(map(tuple, h.batches)) == [(1,), (2, 3, 4)]
        await b.close()

    run(main())


def test_close_drains_queued_requests_then_refuses() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=2))
        b.start()
        futs = [asyncio.ensure_future(b.submit(x)) for x in range(5)]
        await until(lambda: b.running == 1)
        closing = asyncio.ensure_future(b.close())
        await until(lambda: b.closed)
        with pytest.raises(BatcherClosedError):
            await b.submit(9)
        h.release.set()
        await closing
        assert await asyncio.gather(*futs) == [0, 2, 4, 6, 8]

    run(main())


def test_wrong_number_of_results_is_an_error_for_every_caller() -> None:
    async def main() -> None:
        b = DynamicBatcher(lambda items: [], BatchingConfig())
        b.start()
        with pytest.raises(RuntimeError, match="returned 0 results for 1 requests"):
            await b.submit(1)
        await b.close()

    run(main())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_batch_size": 0},
        {"max_queue": 0},
        {"instances": 0},
        {"max_queue_delay_ms": -1},
        {"max_batch_tokens": 0},
        {"window_rows": -1},
    ],
)
def test_config_is_validated(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BatchingConfig(**kwargs)


def test_plan_runs_keeps_short_rows_away_from_long_ones() -> None:
    lengths = [10, 120, 12, 11, 118, 9, 125, 10]
    runs = plan_runs(lengths, 8, call_overhead=20)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    assert [sorted(lengths[i] for i in r) for r in runs] == [[9, 10, 10, 11, 12], [118, 120, 125]]


def test_plan_runs_batches_similar_rows_and_respects_limits() -> None:
    runs = plan_runs([20] * 10, 4, call_overhead=20)
    assert len(runs) == 3 and all(len(r) <= 4 for r in runs)  # as few calls as the row limit allows
    assert len(plan_runs([20] * 8, 8, call_overhead=20)) == 1  # one call beats eight
    runs = plan_runs([128] * 8, 8, max_tokens=300)
    assert all(len(r) * 128 <= 300 for r in runs) and sum(map(len, runs)) == 8
    assert plan_runs([500, 3], 8, max_tokens=100) == [[1], [0]]  # a row over the budget goes alone
    assert plan_runs([], 8) == []


def test_close_returns_when_every_queued_request_expired() -> None:
    async def main() -> None:
        h = Recorder(hold=True)
        b = DynamicBatcher(h, BatchingConfig(max_batch_size=4))
        b.start()
        running = asyncio.ensure_future(b.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, h.entered.wait, 30)
        late = asyncio.ensure_future(b.submit(2, deadline=time.monotonic() + 0.05))
        with pytest.raises(DeadlineExceededError):
            await late
        h.release.set()
        await running
        await asyncio.wait_for(b.close(), 30)
        assert h.batches == [[1]]

    run(main())
