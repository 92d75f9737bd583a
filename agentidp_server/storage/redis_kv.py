"""Redis adapter (redis.asyncio) with bounded command and connect timeouts."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentidp_server.storage.batching import Batcher
from agentidp_server.storage.errors import StorageUnavailable, log_outage
from agentidp_server.storage.kv import CommandObserver, Counter, Guard

T = TypeVar("T")

try:  # hiredis (the `fast` extra) packs commands in C; redis.asyncio only parses with it
    from redis.connection import HiredisRespSerializer
    from redis.utils import HIREDIS_AVAILABLE
except ImportError:  # pragma: no cover - a redis-py without the serializer
    HIREDIS_AVAILABLE = False


class _HiredisPacking:
    """redis-py's own hiredis serializer for the asyncio connection classes. A batch's
    script call has hundreds of arguments, and the pure-Python packer joins its
    buffer once per argument."""

    # redis-py 8 leaves its constructor unannotated.
    _packer = HiredisRespSerializer() if HIREDIS_AVAILABLE else None  # type: ignore[no-untyped-call]

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)  # type: ignore[union-attr]
        return packed


class _Connection(_HiredisPacking, redis.Connection):
    pass


class _SSLConnection(_HiredisPacking, redis.SSLConnection):
    pass


def _connection_class(scheme: str) -> dict[str, Any]:
    if not HIREDIS_AVAILABLE or scheme not in ("redis", "rediss"):
        return {}
    return {"connection_class": _SSLConnection if scheme == "rediss" else _Connection}


BATCH_MAX = 512  # steps per script run
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)

# DECR keeps the key's expiry; a missing (expired) key must not come back without one.
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0
"""

# INCR and its expiry in one step, so a crash between them cannot leave a
# counter that never expires.
_INCR_EXPIRE = """
local value = redis.call('INCR', KEYS[1])
if value == 1 then
  if ARGV[1] == 'px' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  elseif ARGV[1] == 'pxat' then
    redis.call('PEXPIREAT', KEYS[1], ARGV[2])
  end
end
return value
"""


# Concurrent incr_many steps in one script run. ARGV[1] is the number of steps;
# per step, ARGV holds its number of counters, the guard's limit, then (mode,
# expiry, limit) per counter, and KEYS holds the guard ('' for none), then one
# key per counter. Each step is atomic (the whole run is); an error ends only
# its own step, whose reply is then the error's text instead of an array.
_INCR_STEPS = """
local function step(guard_key, guard_limit, k, a, n)
  local guarded = 0
  if guard_key ~= '' then
    guarded = tonumber(redis.call('GET', guard_key) or '0') or 0
    if guard_limit > 0 and guarded >= guard_limit then
      return {guarded}
    end
  end
  local result = {guarded}
  for i = 0, n - 1 do
    local key, base = KEYS[k + i], a + i * 3
    local value = redis.call('INCR', key)
    if value == 1 then
      if ARGV[base] == 'px' then
        redis.call('PEXPIRE', key, ARGV[base + 1])
      elseif ARGV[base] == 'pxat' then
        redis.call('PEXPIREAT', key, ARGV[base + 1])
      end
    end
    result[#result + 1] = value
    local limit = tonumber(ARGV[base + 2])
    if limit > 0 and value > limit then
      break
    end
  end
  return result
end

local replies, k, a = {}, 1, 2
for s = 1, tonumber(ARGV[1]) do
  local n, guard_limit, guard_key = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), KEYS[k]
  local ok, reply = pcall(step, guard_key, guard_limit, k + 1, a + 2, n)
  if ok then
    replies[s] = reply
  else
    replies[s] = tostring(type(reply) == 'table' and reply.err or reply)
  end
  k, a = k + 1 + n, a + 2 + n * 3
end
return replies
"""


# Circuit breaker (issue 25 item 6; docs/operations.md): after this many failed
# commands in a row the adapter fails fast for BREAKER_COOLDOWN seconds, so a Redis
# that accepts connections but never answers costs no request a timeout.
BREAKER_FAILURES = 3
BREAKER_COOLDOWN = 2.0


class Breaker:
    """Closed, open (every call fails fast) or half-open (one call probes Redis, the
    others still fail fast; the probe's outcome closes or reopens the circuit)."""

    def __init__(self, failures: int = BREAKER_FAILURES, cooldown: float = BREAKER_COOLDOWN):
        self.failures = failures
        self.cooldown = cooldown
        self._failed = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def admit(self) -> bool:
        """Whether a call may go to Redis; True for exactly one caller once cooled down."""
        if self._opened_at is None:
            return True
        if self._probing or time.monotonic() - self._opened_at < self.cooldown:
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failed = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failed += 1
        if self._probing or self._failed >= self.failures:
            self._opened_at = time.monotonic()
        self._probing = False

    def abandoned(self) -> None:
        """A call ended without an answer either way (cancelled): free the probe slot."""
        self._probing = False


def _expiry_args(ttl_ms: int | None, expire_at_ms: int | None) -> list[Any]:
    if ttl_ms is not None:
        return ["px", ttl_ms]
    if expire_at_ms is not None:
        return ["pxat", expire_at_ms]
    return ["none", 0]


class RedisKV:
    def __init__(
        self, client: Any, prefix: str, observer: CommandObserver | None, description: str
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._observer = observer
        self._incr = client.register_script(_INCR_EXPIRE)
        self._incr_steps = client.register_script(_INCR_STEPS)
        self._give_back = client.register_script(_GIVE_BACK)
        # Concurrent counter steps share one script run: one command per batch,
        # while each step stays atomic and fails alone.
        self._counting: Batcher[tuple[list[str], list[Any]], Any] = Batcher(
            self._incr_batch, BATCH_MAX
        )
        self.description = description
        self.breaker = Breaker()

    @classmethod
    async def open(
        cls, url: str, *, timeout: float, prefix: str, observer: CommandObserver | None
    ) -> RedisKV:
        parts = urlsplit(url)
        description = f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"
        # redis-py waits forever by default (PITFALLS.md): bound every command.
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
            decode_responses=True,
            retry_on_timeout=False,
            **_connection_class(parts.scheme),
        )
        return cls(client, prefix, observer, description)

    async def _call(self, command: str, call: Callable[[], Awaitable[T]]) -> T:
        breaker = self.breaker
        if not breaker.admit():
            error = StorageUnavailable("kv", "circuit open after repeated failures")
            log_outage(error)
            raise error
        started = time.perf_counter()
        try:
            result = await call()
        except _UNAVAILABLE as error:
            breaker.failed()
            unavailable = StorageUnavailable("kv", type(error).__name__)
            log_outage(unavailable)
            raise unavailable from error
        except ResponseError:
            breaker.succeeded()  # Redis answered; the command itself was refused
            raise
        except BaseException:
            breaker.abandoned()
            raise
        finally:
            if self._observer is not None:
                self._observer(command, time.perf_counter() - started)
        breaker.succeeded()
        return result

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> str | None:
        value: str | None = await self._call("get", lambda: self._client.get(self._k(key)))
        return value

    async def get_many(self, *keys: str) -> list[str | None]:
        names = [self._k(key) for key in keys]
        values: list[str | None] = await self._call("mget", lambda: self._client.mget(names))
        return values

    async def set(
        self, key: str, value: str, *, ttl_ms: int | None = None, nx: bool = False
    ) -> bool:
        result = await self._call(
            "set", lambda: self._client.set(self._k(key), value, px=ttl_ms, nx=nx)
        )
        return bool(result)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        count: int = await self._call("del", lambda: self._client.delete(*map(self._k, keys)))
        return count

    async def exists(self, key: str) -> bool:
        return bool(await self._call("exists", lambda: self._client.exists(self._k(key))))

    async def incr(
        self, key: str, *, ttl_ms: int | None = None, expire_at_ms: int | None = None
    ) -> int:
        args = _expiry_args(ttl_ms, expire_at_ms)
        try:
            value = await self._call("incr", lambda: self._incr(keys=[self._k(key)], args=args))
        except ResponseError as error:
            # The same error as the memory adapter's, not a Redis-specific one.
            if "not an integer" in str(error):
                raise ValueError("value is not an integer or out of range") from error
            raise
        return int(value)

    async def give_back(self, *keys: str) -> None:
        if keys:
            names = [self._k(key) for key in keys]
            await self._call("give_back", lambda: self._give_back(keys=names))

    async def incr_many(
        self, counters: Sequence[Counter], guard: Guard | None = None
    ) -> tuple[int, list[int]]:
        keys = [self._k(guard.key) if guard is not None else ""]
        args: list[Any] = [guard.limit if guard is not None else 0]
        for counter in counters:
            keys.append(self._k(counter.key))
            args += [*_expiry_args(counter.ttl_ms, counter.expire_at_ms), counter.limit]
        try:
            result = await self._counting.submit((keys, args))
        except ResponseError as error:
            if "not an integer" in str(error):
                raise ValueError("value is not an integer or out of range") from error
            raise
        return int(result[0]), [int(v) for v in result[1:]]

    async def _incr_batch(self, steps: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run the steps in one script run; each outcome is its own."""
        keys: list[str] = []
        args: list[Any] = [len(steps)]
        for step_keys, step_args in steps:
            keys += step_keys
            args += [len(step_keys) - 1, *step_args]
        # The Script object reloads the script after NOSCRIPT (a flush or a restart).
        replies = await self._call("incr_many", lambda: self._incr_steps(keys=keys, args=args))
        return [ResponseError(r) if isinstance(r, str) else r for r in replies]

    async def pttl(self, key: str) -> int | None:
        value: int = await self._call("pttl", lambda: self._client.pttl(self._k(key)))
        return value if value >= 0 else None

    async def ping(self) -> None:
        await self._call("ping", self._client.ping)

    async def close(self) -> None:
        await self._client.aclose()
