"""The kv port: counters with expiry, keys with TTL, a short cache."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

CommandObserver = Callable[[str, float], None]


class KV(Protocol):
    """Keys are the runbook's (`revoked:<jti>`, `rate:<client_id>:<window>`, ...)."""

    description: str

    async def get(self, key: str) -> str | None: ...
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
