"""The kv port: counters with expiry, keys with TTL, a short cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

CommandObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Counter:
    """One counter of an `incr_many` step: its expiry (set when new) and its limit."""

    key: str
    ttl_ms: int | None = None
    expire_at_ms: int | None = None
    limit: int = 0  # 0: no limit; over it, later counters are left alone


@dataclass(frozen=True)
class Guard:
    """A counter that is read, not incremented: at `limit` or over, nothing is counted."""

    key: str
    limit: int


class KV(Protocol):
    """Keys are the runbook's (`revoked:<jti>`, `rate:<client_id>:<window>`, ...)."""

    description: str

    async def get(self, key: str) -> str | None: ...
    async def get_many(self, *keys: str) -> list[str | None]:
        """Several values in one round trip, in order (None for a missing key)."""
        ...

    async def set(
        self, key: str, value: str, *, ttl_ms: int | None = None, nx: bool = False
    ) -> bool:
        """Store a value; with `nx`, only if the key is absent. True if it was stored."""
        ...

    async def delete(self, *keys: str) -> int: ...
    async def exists(self, key: str) -> bool: ...
    async def incr(
        self, key: str, *, ttl_ms: int | None = None, expire_at_ms: int | None = None
    ) -> int:
        """Increment and, when the key is new, set its expiry: one atomic step."""
        ...

    async def incr_many(
        self, counters: Sequence[Counter], guard: Guard | None = None
    ) -> tuple[int, list[int]]:
        """One atomic step (one round trip) over several counters.

        Returns the guard's value and the new values of the counters that were
        incremented: none if the guard is at its limit; otherwise each in
        order, stopping after the first that went over its own limit.
        """
        ...

    async def give_back(self, *keys: str) -> None:
        """Decrement each existing counter above zero by one, keeping its expiry; a
        missing key is not created. For a count taken for what then did not happen."""
        ...

    async def pttl(self, key: str) -> int | None:
        """Milliseconds left; None for a missing key or one without expiry."""
        ...

    async def ping(self) -> None: ...
    async def close(self) -> None: ...


async def open_kv(
    url: str, *, timeout: float = 2.0, prefix: str = "", observer: CommandObserver | None = None
) -> KV:
    """Open the adapter a URL names: `redis://`, `rediss://`, `unix://` or `memory://`."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from agentidp_server.storage.redis_kv import RedisKV

        return await RedisKV.open(url, timeout=timeout, prefix=prefix, observer=observer)
    if url.startswith("memory://"):
        from agentidp_server.storage.memory_kv import MemoryKV

        return MemoryKV(prefix=prefix)
    raise ValueError(f"unsupported REDIS_URL scheme: {url.split(':', 1)[0]}")
