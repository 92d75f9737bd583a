"""The kernel's clock (agentidp_server/util/clock.py): a stopped test clock, and the kernel
reading it everywhere a test would otherwise sleep."""

from __future__ import annotations

import random
import time

import pytest

import agentidp_server
from agentidp_server.server.leases import Lease
from agentidp_server.util import clock as kernel_clock
from agentidp_server.util.clock import SYSTEM, TestClock, install, monotonic, now, now_ms, now_s


def test_the_system_clock_is_the_default_and_reads_the_wall_clock():
    assert kernel_clock.current() is SYSTEM
    before = int(time.time() * 1000)
    read = now_ms()
    assert before <= read <= int(time.time() * 1000)
    assert abs(now() - time.time()) < 1
    assert now_s() == int(now()) or now_s() == int(now()) - 1


def test_a_test_clock_stands_still_until_moved(clock: TestClock):
    assert kernel_clock.current() is clock
    start, start_monotonic = now_ms(), monotonic()
    time.sleep(0.01)
    assert (now_ms(), monotonic()) == (start, start_monotonic)
    assert clock.advance(1.5) == start + 1500
    assert now_ms() == start + 1500
    assert clock.advance(ms=7) == start + 1507
    assert monotonic() - start_monotonic == pytest.approx(1.507)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(ms=-1)
    clock.set_ms(start)  # a wall clock may step back; the monotonic one does not
    assert now_ms() == start
    assert monotonic() - start_monotonic == pytest.approx(1.507)


def test_a_test_clock_reads_exact_milliseconds_and_seconds():
    """int(time() * 1000) must give the clock's ms back despite float rounding."""
    test_clock = TestClock(0)
    previous = install(test_clock)
    try:
        rng = random.Random(16)
        for ms in [0, 999, 1000, 1_700_000_000_999, 253_402_300_799_000] + [
            rng.randrange(0, 2**48) for _ in range(2000)
        ]:
            test_clock.set_ms(ms)
            assert (now_ms(), now_s()) == (ms, ms // 1000), ms
    finally:
        install(previous)
    assert kernel_clock.current() is previous


def test_plugins_read_the_clock_from_the_package_root(clock: TestClock):
    assert agentidp_server.now_ms() == clock.now_ms()
    assert agentidp_server.now_s() == clock.now_ms() // 1000


async def test_a_lease_renews_after_a_third_of_it_on_the_kernel_clock(agentidp_idp, clock):
    lease = Lease(agentidp_idp, "clock-test", ttl_ms=3000)
    assert await lease.acquire()
    expires = "SELECT expires_at FROM leases WHERE name = 'clock-test'"
    first = await agentidp_idp.db.fetchval(expires)
    assert first == clock.now_ms() + 3000
    clock.advance(0.999)
    assert await lease.keep()
    assert await agentidp_idp.db.fetchval(expires) == first  # not yet a third: no write
    clock.advance(ms=1)
    assert await lease.keep()
    assert await agentidp_idp.db.fetchval(expires) == clock.now_ms() + 3000
    # Past its end, another holder takes it, and the first is fenced off.
    other = Lease(agentidp_idp, "clock-test", ttl_ms=3000)
    assert not await other.acquire()
    clock.advance(3.001)
    assert await other.acquire()
    async with agentidp_idp.db.transaction() as conn:
        assert not await lease.held_in(conn)
        assert await other.held_in(conn)


async def test_a_lease_never_acquired_is_not_kept_by_a_fresh_clock(agentidp_idp, clock):
    """keep() before any acquire() must take the lease, whatever the clock reads."""
    holder = Lease(agentidp_idp, "clock-fresh", ttl_ms=3000)
    assert await holder.acquire()
    newcomer = Lease(agentidp_idp, "clock-fresh", ttl_ms=3000)
    assert not await newcomer.keep()  # held by another: keep() asks the database
