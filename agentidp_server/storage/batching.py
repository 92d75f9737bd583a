"""Group concurrent calls into one store round trip (group commit, pipelining).

Under load most of a request's cost on the hot path is the system calls of
its store round trips, not the work the store does. A `Batcher` sends the
calls that arrive while one batch is in flight together in the next batch:
an idle server answers at once (a batch of one), a busy one pays one round
trip per batch instead of one per request. Every caller still waits for the
outcome of its own call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from agentidp_server.storage.errors import StorageUnavailable

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """At most one batch in flight per event loop; the rest queue for the next.

    `run(items)` performs one batch and returns one outcome per item, in
    order: a result, or an exception raised to that item's caller alone. When
    `run` itself raises for a batch of several items, its halves are run again
    (down to single items), so that one bad item fails only its own caller; a
    store that is unavailable fails the whole batch at once (no item is to blame).
    """

    def __init__(
        self, run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], max_size: int
    ) -> None:
        self._run = run
        self._max_size = max_size
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, done))
        # A sender bound to another (closed) loop cannot serve this one: tests and
        # the CLI run several loops in one process.
        if self._sender is None or self._sender.done() or self._sender.get_loop() is not loop:
            self._sender = loop.create_task(self._send())
        return await done

    async def _send(self) -> None:
        while self._waiting:
            size = self._max_size
            batch, self._waiting = self._waiting[:size], self._waiting[size:]
            try:
                outcomes = await self._outcomes([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, done in batch:
                    done.cancel()
                raise
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue  # its caller was cancelled; the work is done all the same
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

    async def _outcomes(self, items: list[T]) -> Sequence[R | BaseException]:
        try:
            return await self._run(items)
        except StorageUnavailable as error:
            # The store is down: one try per item would multiply the wait for nothing.
            return [error] * len(items)
        except Exception as error:
            if len(items) == 1:
                return [error]
        # One poisoned item must not fail the callers batched with it (issue 25 item 2):
        # halves, so it is found in about 2·log2(n) runs rather than n in a row.
        middle = len(items) // 2
        return [*await self._outcomes(items[:middle]), *await self._outcomes(items[middle:])]
