"""The kv port on both adapters: in-process memory and Redis.

The Redis cases use the key prefix the `agentidp_storage` fixture hands out, so
they only touch this test's keys on the shared server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from agentidp_server.storage import StorageUnavailable, open_kv
from agentidp_server.storage.kv import KV, Counter, Guard

REDIS_ONLY = pytest.mark.parametrize("agentidp_backend", ["postgres"])


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
async def kv(agentidp_storage: dict[str, Any]) -> AsyncIterator[KV]:
    store = await open_kv(
        agentidp_storage["REDIS_URL"],
        timeout=2.0,
        prefix=agentidp_storage.get("REDIS_KEY_PREFIX", ""),
    )
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def raw_redis(agentidp_storage: dict[str, Any]) -> AsyncIterator[Any]:
    client = redis.Redis.from_url(
        agentidp_storage["REDIS_URL"], decode_responses=True, socket_timeout=2.0
    )
    try:
        yield client
    finally:
        await client.aclose()


async def wait_gone(kv: KV, key: str, timeout: float = 3.0) -> float:
    """Poll until `key` no longer exists; return the seconds it took (bounded)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not await kv.exists(key):
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{key} still exists after {timeout}s")


async def test_description_and_ping(kv: KV, agentidp_backend: str) -> None:
    expected = "in-process memory" if agentidp_backend == "sqlite" else "Redis at 127.0.0.1:6379"
    assert kv.description == expected
    await kv.ping()


async def test_get_set_round_trip(kv: KV) -> None:
    assert await kv.get("missing") is None
    assert await kv.set("k", "v1") is True
    assert await kv.get("k") == "v1"
    assert await kv.set("k", "v2 ✓") is True
    assert await kv.get("k") == "v2 ✓"
    assert await kv.set("empty", "") is True
    assert await kv.get("empty") == ""
    assert await kv.exists("empty") is True


async def test_set_nx_only_when_absent(kv: KV) -> None:
    assert await kv.set("once", "first", nx=True) is True
    assert await kv.set("once", "second", nx=True) is False
    assert await kv.get("once") == "first"
    assert await kv.pttl("once") is None  # the refused write set no expiry either
    assert await kv.set("once", "third", nx=True, ttl_ms=60_000) is False
    assert await kv.pttl("once") is None


async def test_set_nx_with_ttl(kv: KV) -> None:
    assert await kv.set("lock", "me", nx=True, ttl_ms=60_000) is True
    ttl = await kv.pttl("lock")
    assert ttl is not None
    assert 50_000 < ttl <= 60_000


async def test_set_ttl_and_overwrite_clears_it(kv: KV) -> None:
    await kv.set("t", "v", ttl_ms=120_000)
    ttl = await kv.pttl("t")
    assert ttl is not None
    assert 110_000 < ttl <= 120_000
    await kv.set("t", "w")  # a plain SET drops the expiry, as Redis does
    assert await kv.pttl("t") is None
    assert await kv.get("t") == "w"


async def test_delete_and_exists(kv: KV) -> None:
    await kv.set("a", "1")
    await kv.set("b", "2")
    assert await kv.exists("a") is True
    assert await kv.exists("nope") is False
    assert await kv.delete() == 0
    assert await kv.delete("a", "b", "nope") == 2
    assert await kv.exists("a") is False
    assert await kv.get("b") is None
    assert await kv.delete("a") == 0


async def test_pttl(kv: KV) -> None:
    assert await kv.pttl("missing") is None
    await kv.set("forever", "x")
    assert await kv.pttl("forever") is None
    await kv.set("soon", "x", ttl_ms=30_000)
    ttl = await kv.pttl("soon")
    assert ttl is not None
    assert 20_000 < ttl <= 30_000


async def test_expiry_really_happens(kv: KV) -> None:
    await kv.set("short", "v", ttl_ms=150)
    await kv.set("long", "v", ttl_ms=60_000)
    assert await kv.get("short") == "v"
    await wait_gone(kv, "short")
    assert await kv.get("short") is None
    assert await kv.pttl("short") is None
    assert await kv.get("long") == "v"
    # an expired key counts as absent for nx
    assert await kv.set("short", "again", nx=True) is True


async def test_incr_counts_from_one(kv: KV) -> None:
    assert await kv.incr("n") == 1
    assert await kv.incr("n") == 2
    assert await kv.incr("n") == 3
    assert await kv.get("n") == "3"
    assert await kv.pttl("n") is None  # no expiry asked for


async def test_incr_ttl_only_when_new(kv: KV) -> None:
    assert await kv.incr("rate", ttl_ms=100_000) == 1
    first = await kv.pttl("rate")
    assert first is not None
    assert 90_000 < first <= 100_000
    # later increments neither extend nor shorten the window
    assert await kv.incr("rate", ttl_ms=1_000_000) == 2
    assert await kv.incr("rate", ttl_ms=10) == 3
    later = await kv.pttl("rate")
    assert later is not None
    assert 90_000 < later <= first
    assert await kv.incr("rate") == 4
    assert await kv.pttl("rate") is not None  # an increment without ttl keeps the expiry


async def test_incr_on_existing_key_sets_no_expiry(kv: KV) -> None:
    await kv.set("plain", "5")
    assert await kv.incr("plain", ttl_ms=1_000) == 6
    assert await kv.pttl("plain") is None


async def test_incr_expire_at_only_when_new(kv: KV) -> None:
    deadline = now_ms() + 50_000
    assert await kv.incr("window", expire_at_ms=deadline) == 1
    ttl = await kv.pttl("window")
    assert ttl is not None
    assert 40_000 < ttl <= 50_000
    assert await kv.incr("window", expire_at_ms=now_ms() + 500_000) == 2
    later = await kv.pttl("window")
    assert later is not None
    assert later <= ttl


async def test_incr_ttl_wins_over_expire_at(kv: KV) -> None:
    assert await kv.incr("both", ttl_ms=20_000, expire_at_ms=now_ms() + 500_000) == 1
    ttl = await kv.pttl("both")
    assert ttl is not None
    assert 10_000 < ttl <= 20_000


async def test_incr_expire_at_in_the_past_is_already_expired(kv: KV) -> None:
    assert await kv.incr("past", expire_at_ms=now_ms() - 1_000) == 1
    assert await kv.exists("past") is False
    assert await kv.get("past") is None


async def test_incr_restarts_after_expiry(kv: KV) -> None:
    assert await kv.incr("w", ttl_ms=150) == 1
    assert await kv.incr("w", ttl_ms=150) == 2
    await wait_gone(kv, "w")
    assert await kv.incr("w", ttl_ms=60_000) == 1
    ttl = await kv.pttl("w")
    assert ttl is not None
    assert ttl > 50_000


async def test_incr_non_integer_is_value_error(kv: KV) -> None:
    await kv.set("text", "abc")
    with pytest.raises(ValueError, match="not an integer"):
        await kv.incr("text")
    assert await kv.get("text") == "abc"


async def test_concurrent_incr_loses_no_update(kv: KV) -> None:
    results = await asyncio.gather(*(kv.incr("c", ttl_ms=60_000) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await kv.get("c") == "50"


@REDIS_ONLY
async def test_prefix_is_applied(kv: KV, raw_redis: Any, agentidp_storage: dict[str, Any]) -> None:
    prefix = agentidp_storage["REDIS_KEY_PREFIX"]
    assert prefix
    key = f"revoked:{uuid.uuid4().hex}"
    await kv.set(key, "1", ttl_ms=60_000)
    assert await raw_redis.get(prefix + key) == "1"
    assert await raw_redis.exists(key) == 0
    ttl = await raw_redis.pttl(prefix + key)
    assert 50_000 < ttl <= 60_000
    await kv.incr(key + ":n", ttl_ms=60_000)
    assert await raw_redis.get(prefix + key + ":n") == "1"
    assert await raw_redis.pttl(prefix + key + ":n") > 50_000
    # reads go through the prefix too
    await raw_redis.set(prefix + "written-raw", "yes", px=60_000)
    assert await kv.get("written-raw") == "yes"
    assert await kv.delete(key, key + ":n", "written-raw") == 3
    assert await raw_redis.exists(prefix + key, prefix + key + ":n", prefix + "written-raw") == 0


@REDIS_ONLY
async def test_two_prefixes_do_not_see_each_other(
    agentidp_storage: dict[str, Any], raw_redis: Any
) -> None:
    prefix = agentidp_storage["REDIS_KEY_PREFIX"]
    url = agentidp_storage["REDIS_URL"]
    one = await open_kv(url, prefix=prefix + "one:")
    two = await open_kv(url, prefix=prefix + "two:")
    try:
        await one.set("k", "from one", ttl_ms=60_000)
        assert await two.get("k") is None
        assert await two.incr("k", ttl_ms=60_000) == 1
        assert await one.get("k") == "from one"
    finally:
        await one.close()
        await two.close()
    assert await raw_redis.get(prefix + "two:k") == "1"


async def test_closed_port_is_unavailable() -> None:
    store = await open_kv("redis://127.0.0.1:1/0", timeout=1.0, prefix="x:")
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            await store.ping()
        with pytest.raises(StorageUnavailable):
            await store.get("k")
        with pytest.raises(StorageUnavailable):
            await store.incr("k", ttl_ms=1_000)
        assert info.value.component == "kv"
        assert time.monotonic() - started < 5.0
    finally:
        await store.close()


async def test_silent_server_times_out() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = await open_kv(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await store.get("k")
        assert time.monotonic() - started < 3.0
    finally:
        await store.close()
        for writer in writers:
            writer.close()
        server.close()


async def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await open_kv("memcached://127.0.0.1:11211")


async def test_incr_many_counts_in_order_and_stops_over_a_limit(kv: KV) -> None:
    deadline = now_ms() + 50_000
    counters = [
        Counter("rate", ttl_ms=100_000, limit=2),
        Counter("daily", expire_at_ms=deadline, limit=0),
    ]
    assert await kv.incr_many(counters) == (0, [1, 1])
    assert await kv.incr_many(counters) == (0, [2, 2])
    # "rate" goes over its limit: it is counted, "daily" after it is not.
    assert await kv.incr_many(counters) == (0, [3])
    assert await kv.get("daily") == "2"
    rate_ttl, daily_ttl = await kv.pttl("rate"), await kv.pttl("daily")
    assert rate_ttl is not None
    assert 90_000 < rate_ttl <= 100_000
    assert daily_ttl is not None
    assert 40_000 < daily_ttl <= 50_000


async def test_incr_many_guard_at_its_limit_counts_nothing(kv: KV) -> None:
    counters = [Counter("rate", ttl_ms=10_000)]
    assert await kv.incr_many(counters, Guard("failures", 2)) == (0, [1])
    await kv.set("failures", "1")
    assert await kv.incr_many(counters, Guard("failures", 2)) == (1, [2])
    await kv.incr("failures")
    assert await kv.incr_many(counters, Guard("failures", 2)) == (2, [])
    assert await kv.get("rate") == "2"


async def test_incr_many_refuses_a_non_integer(kv: KV) -> None:
    await kv.set("word", "abc")
    with pytest.raises(ValueError, match="not an integer"):
        await kv.incr_many([Counter("word")])


async def test_get_many_reads_in_order_with_none_for_missing(kv: KV) -> None:
    await kv.set("a", "1")
    await kv.set("gone", "x", ttl_ms=1)
    await asyncio.sleep(0.01)
    assert await kv.get_many("a", "missing", "gone") == ["1", None, None]


async def test_concurrent_incr_many_steps_each_count_once(kv: KV) -> None:
    # Redis runs concurrent steps together in one script run: every step must
    # still be its own atomic increment, and a bad key fails only its own step.
    await kv.set("word", "abc")

    async def step(index: int) -> tuple[int, list[int]]:
        key = "word" if index == 7 else "shared"
        return await kv.incr_many([Counter(key, ttl_ms=60_000), Counter(f"own-{index}")])

    outcomes = await asyncio.gather(*(step(i) for i in range(50)), return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], ValueError)
    counted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert sorted(values[0] for _, values in counted) == list(range(1, 50))
    assert all(values[1] == 1 for _, values in counted)
    assert await kv.get("shared") == "49"


@REDIS_ONLY
async def test_incr_many_survives_a_script_flush(kv: KV, raw_redis: Any) -> None:
    assert await kv.incr_many([Counter("after-flush")]) == (0, [1])
    await raw_redis.script_flush()
    # The batch meets NOSCRIPT; it is run again with the script loaded.
    outcomes = await asyncio.gather(*(kv.incr_many([Counter("after-flush")]) for _ in range(5)))
    assert sorted(values[0] for _, values in outcomes) == [2, 3, 4, 5, 6]


def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them():
    """The hiredis packer must send what redis-py's own asyncio packer would."""
    from redis.asyncio.connection import Connection

    from agentidp_server.storage.redis_kv import _Connection

    args = ("EVALSHA", "f" * 40, 2, "rate:é", b"\x00raw", 60000, "px", -1, "x" * 7000)
    ours = b"".join(_Connection().pack_command(*args))
    assert ours == b"".join(Connection().pack_command(*args))
    assert type(_Connection()._packer).__name__ == "HiredisRespSerializer"


def test_breaker_opens_fails_fast_then_lets_one_probe_through() -> None:
    import time as _time

    from agentidp_server.storage.redis_kv import Breaker

    breaker = Breaker(failures=3, cooldown=0.05)
    for _ in range(2):
        assert breaker.admit()
        breaker.failed()
    assert not breaker.is_open
    assert breaker.admit()
    breaker.succeeded()  # an answer resets the count: failures must be in a row
    for _ in range(3):
        assert breaker.admit()
        breaker.failed()
    assert breaker.is_open
    assert not breaker.admit()
    _time.sleep(0.06)
    assert breaker.admit()  # the probe
    assert not breaker.admit()  # only one at a time
    breaker.failed()  # a failed probe reopens at once
    assert not breaker.admit()
    _time.sleep(0.06)
    assert breaker.admit()
    breaker.abandoned()  # a cancelled probe frees the slot
    assert breaker.admit()
    breaker.succeeded()
    assert not breaker.is_open
    assert breaker.admit()
    assert breaker.admit()


async def test_give_back_decrements_existing_counters_only(kv: KV) -> None:
    """A refused token's count is given back: the expiry stays, a missing key is not
    created (it would never expire), and a counter never goes below zero."""
    assert await kv.incr("gb:a", ttl_ms=60_000) == 1
    assert await kv.incr("gb:a", ttl_ms=60_000) == 2
    await kv.set("gb:zero", "0", ttl_ms=60_000)
    await kv.give_back("gb:a", "gb:missing", "gb:zero")
    assert await kv.get("gb:a") == "1"
    left = await kv.pttl("gb:a")
    assert left is not None
    assert 0 < left <= 60_000
    assert await kv.exists("gb:missing") is False
    assert await kv.get("gb:zero") == "0"
