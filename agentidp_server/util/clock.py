"""The one clock the kernel reads "now" from, replaceable in tests.

Every kernel read of the current time (token `iat`/`exp` and their check, key
stages, leases, rate windows, audit checkpoints, credential expiry) goes through
`now_ms`, `now_s` or `monotonic` here, so a test installs a `TestClock` and moves
time forward instead of sleeping. Plugins read the same clock: `now_ms` is
exported from the package root.

What the clock does not move: time kept by another process. Redis expires keys
by its own clock (a frozen app clock never expires a TTL there), PostgreSQL's
`now()`, servers started by a test in a subprocess, and `asyncio.sleep`/timeouts
(the event loop's clock). Rate windows are keyed by the window number computed
from this clock (`rate:<client_id>:<window>`), so advancing it past a window's
end starts a new window; the daily tier counters' key names carry no day (the
runbook's), so their reset at midnight still waits for Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """A source of "now"; `SystemClock` in production, `TestClock` in tests."""

    def time(self) -> float:
        """Unix time in seconds, as `time.time()`."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals (as `time.monotonic()`)."""
        ...


class SystemClock:
    """The operating system's clocks."""

    # `install` binds these builtins themselves, so the system clock adds no call.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class TestClock:
    """A clock that stands still until a test moves it, with a resolution of 1 ms.

    Starts at the real time (whole milliseconds) unless given `start_ms`, so
    absolute expiry times handed to Redis stay near Redis's own clock.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, start_ms: int | None = None) -> None:
        self._ms = int(time.time() * 1000) if start_ms is None else start_ms
        self._monotonic_ms = int(time.monotonic() * 1000)  # as far from 0 as the real one

    def time(self) -> float:
        # The middle of the current millisecond: int(time() * 1000) is then exactly
        # `now_ms()` despite float rounding, and int(time()) the right second.
        return (self._ms + 0.5) / 1000

    def monotonic(self) -> float:
        return (self._monotonic_ms + 0.5) / 1000

    def now_ms(self) -> int:
        return self._ms

    def advance(self, seconds: float = 0, *, ms: int = 0) -> int:
        """Move forward by `seconds` plus `ms`; returns the new unix ms."""
        step = round(seconds * 1000) + ms
        if step < 0:
            raise ValueError("a test clock moves forward only; use set_ms to jump back")
        self._ms += step
        self._monotonic_ms += step
        return self._ms

    def set_ms(self, unix_ms: int) -> None:
        """Jump to `unix_ms` (a wall clock can step back; the monotonic clock stays)."""
        self._ms = unix_ms


SYSTEM = SystemClock()

_clock: Clock = SYSTEM
# The bound reads, kept as module globals: `now_ms()` then costs one global lookup
# more than `int(time.time() * 1000)` did, no method dispatch (see bench/clock.py).
_time: Callable[[], float] = time.time
_monotonic: Callable[[], float] = time.monotonic


def now_ms() -> int:
    """Unix time in milliseconds (the kernel's timestamps)."""
    return int(_time() * 1000)


def now() -> float:
    """Unix time in seconds with its fraction, as `time.time()`."""
    return _time()


def now_s() -> int:
    """Unix time in whole seconds (JWT NumericDate, RFC 7519 §2)."""
    return int(_time())


def monotonic() -> float:
    """Seconds for measuring intervals (lease renewal pacing)."""
    return _monotonic()


def current() -> Clock:
    return _clock


def install(clock: Clock) -> Clock:
    """Make `clock` the process's clock; returns the one it replaces (to restore it)."""
    global _clock, _time, _monotonic
    previous = _clock
    _clock, _time, _monotonic = clock, clock.time, clock.monotonic
    return previous
