"""Supervised background tasks: restarted with backoff, cancelled within a bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("agentidp.background")


@dataclass(frozen=True)
class BackgroundTask:
    """A coroutine function run for the life of the server.

    It should loop until cancelled; if it returns it is not restarted, and if
    it raises it is restarted after a backoff (1 s doubling to 60 s).
    """

    name: str
    run: Callable[[], Awaitable[None]]
    plugin: str = ""


class TaskSupervisor:
    def __init__(self, tasks: list[BackgroundTask]) -> None:
        self._tasks = tasks
        self._running: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._running = [
            asyncio.create_task(self._supervise(t), name=f"agentidp:{t.name}") for t in self._tasks
        ]

    async def _supervise(self, task: BackgroundTask) -> None:
        delay = 1.0
        while True:
            try:
                await task.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "background task %s (plugin %s) failed; restarting in %.0f s",
                    task.name,
                    task.plugin or "core",
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def stop(self, timeout: float) -> None:
        for running in self._running:
            running.cancel()
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=timeout)
            for task in pending:
                log.warning(
                    "background task %s did not stop within %.1f s", task.get_name(), timeout
                )
        self._running = []
