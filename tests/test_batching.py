"""The Batcher groups concurrent calls; each caller still gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from agentidp_server.storage.batching import Batcher
from agentidp_server.storage.errors import StorageUnavailable


class Recorder:
    def __init__(self, fail_run: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_run = fail_run
        self.release = asyncio.Event()

    async def run(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        if self.fail_run:
            raise RuntimeError("store down")
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_calls_made_while_a_batch_is_in_flight_go_out_together() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=100)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)  # the first batch is now in flight, holding item 1
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 10
    assert [await task for task in rest] == [20, 30, 40, 50, 60]
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]


async def test_an_item_error_reaches_only_its_caller() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=100)
    outcomes = await asyncio.gather(
        *(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True
    )
    assert outcomes[0] == 10
    assert outcomes[2] == 30
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "bad -2"


async def test_a_failed_run_fails_every_caller_of_its_batch_and_the_next_batch_runs() -> None:
    recorder = Recorder(fail_run=True)
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=100)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in (1, 2)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    recorder.fail_run = False
    assert await batcher.submit(3) == 30


async def test_batches_are_capped_at_max_size() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=2)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert recorder.batches == [[0, 1], [2, 3], [4]]


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=100)
    first = asyncio.create_task(batcher.submit(1))
    second = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    first.cancel()
    recorder.release.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == 20


def test_a_new_event_loop_gets_a_new_sender() -> None:
    # The CLI and tests run several loops in one process; a sender of a closed loop is dead.
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=100)

    async def once(item: int) -> int:
        recorder.release.set()
        result = await batcher.submit(item)
        recorder.release = asyncio.Event()
        return result

    assert asyncio.run(once(1)) == 10
    assert asyncio.run(once(2)) == 20


class Poisoned:
    """A run that raises for a whole batch holding a negative item (one bad row fails a query)."""

    def __init__(self, error: Exception) -> None:
        self.batches: list[list[int]] = []
        self.error = error
        self.release = asyncio.Event()

    async def run(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        if any(i < 0 for i in items):
            raise self.error
        return [i * 10 for i in items]


async def test_a_failed_run_is_retried_in_halves_so_one_bad_item_fails_only_itself() -> None:
    poisoned = Poisoned(RuntimeError("invalid byte sequence"))
    batcher: Batcher[int, int] = Batcher(poisoned.run, max_size=100)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)  # the first batch is in flight: the rest go out together
    rest = [asyncio.create_task(batcher.submit(i)) for i in (1, -2, 3)]
    await asyncio.sleep(0)
    poisoned.release.set()
    outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
    assert outcomes[:2] == [0, 10]
    assert isinstance(outcomes[2], RuntimeError)
    assert outcomes[3] == 30
    assert poisoned.batches == [[0], [1, -2, 3], [1], [-2, 3], [-2], [3]]


async def test_one_bad_item_in_a_large_batch_costs_logarithmic_reruns() -> None:
    # A failed group commit of 64 must not become 64 transactions in a row.
    poisoned = Poisoned(RuntimeError("invalid byte sequence"))
    poisoned.release.set()
    batcher: Batcher[int, int] = Batcher(poisoned.run, max_size=100)
    items = [i + 1 for i in range(64)]
    items[41] = -42
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, RuntimeError)] == [outcomes[41]]
    assert [o for i, o in enumerate(outcomes) if i != 41] == [i * 10 for i in items if i > 0]
    assert len(poisoned.batches) <= 1 + 2 * 6  # the batch, then two halves per level


async def test_an_unavailable_store_fails_the_batch_at_once_without_retries() -> None:
    poisoned = Poisoned(StorageUnavailable("database", "timeout"))
    poisoned.release.set()
    batcher: Batcher[int, int] = Batcher(poisoned.run, max_size=100)
    outcomes = await asyncio.gather(
        *(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True
    )
    assert all(isinstance(o, StorageUnavailable) for o in outcomes)
    assert poisoned.batches == [[1, -2, 3]]
