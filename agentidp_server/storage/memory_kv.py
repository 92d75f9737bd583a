"""In-process kv: the embedded default. One process only; nothing survives a restart."""

from __future__ import annotations

import time
from collections.abc import Sequence

from agentidp_server.storage.kv import Counter, Guard


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryKV:
    description = "in-process memory"

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._values: dict[str, str] = {}
        self._expiry: dict[str, int] = {}
        self._ops = 0

    def _live(self, key: str) -> bool:
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= _now_ms():
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        self._ops += 1
        if self._ops % 10_000 == 0:
            self._sweep()
        return key in self._values

    def _sweep(self) -> None:
        now = _now_ms()
        for key in [k for k, d in self._expiry.items() if d <= now]:
            self._values.pop(key, None)
            self._expiry.pop(key, None)

    async def get(self, key: str) -> str | None:
        key = self._prefix + key
        return self._values[key] if self._live(key) else None

    async def get_many(self, *keys: str) -> list[str | None]:
        return [await self.get(key) for key in keys]

    async def set(
        self, key: str, value: str, *, ttl_ms: int | None = None, nx: bool = False
    ) -> bool:
        key = self._prefix + key
        if nx and self._live(key):
            return False
        self._values[key] = value
        if ttl_ms is not None:
            self._expiry[key] = _now_ms() + ttl_ms
        else:
            self._expiry.pop(key, None)
        return True

    async def delete(self, *keys: str) -> int:
        count = 0
        for key in keys:
            key = self._prefix + key
            if self._live(key):
                count += 1
            self._values.pop(key, None)
            self._expiry.pop(key, None)
        return count

    async def exists(self, key: str) -> bool:
        return self._live(self._prefix + key)

    async def incr(
        self, key: str, *, ttl_ms: int | None = None, expire_at_ms: int | None = None
    ) -> int:
        key = self._prefix + key
        if not self._live(key):
            self._values[key] = "0"
            if ttl_ms is not None:
                self._expiry[key] = _now_ms() + ttl_ms
            elif expire_at_ms is not None:
                self._expiry[key] = expire_at_ms
        try:
            value = int(self._values[key]) + 1
        except ValueError as error:
            raise ValueError("value is not an integer or out of range") from error
        self._values[key] = str(value)
        return value

    async def give_back(self, *keys: str) -> None:
        for key in keys:
            key = self._prefix + key
            if self._live(key) and int(self._values[key]) > 0:
                self._values[key] = str(int(self._values[key]) - 1)

    async def incr_many(
        self, counters: Sequence[Counter], guard: Guard | None = None
    ) -> tuple[int, list[int]]:
        # One process, no await inside: as atomic as the Redis script.
        guarded = 0
        if guard is not None:
            raw = await self.get(guard.key)
            guarded = int(raw) if raw is not None else 0
            if guard.limit > 0 and guarded >= guard.limit:
                return guarded, []
        values: list[int] = []
        for counter in counters:
            value = await self.incr(
                counter.key, ttl_ms=counter.ttl_ms, expire_at_ms=counter.expire_at_ms
            )
            values.append(value)
            if counter.limit > 0 and value > counter.limit:
                break
        return guarded, values

    async def pttl(self, key: str) -> int | None:
        key = self._prefix + key
        if not self._live(key) or key not in self._expiry:
            return None
        return max(self._expiry[key] - _now_ms(), 0)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._values.clear()
        self._expiry.clear()
