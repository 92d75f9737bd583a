"""Plugin delivery of audit events across processes: the audit table is the outbox.

Each `IdP` built here stands for one server process (its own plugin state, its
own dispatcher) sharing one database, as workers and pods do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from agentidp_hello import state

from agentidp_server import hookimpl
from agentidp_server.app import build_idp
from agentidp_server.audit.dispatch import AuditDispatcher
from agentidp_server.runtime import runtime
from agentidp_server.settings import load_settings
from agentidp_server.storage.migrations import migrate

ORGS = ("org-a", "org-b")


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True, "AUDIT_DISPATCH_INTERVAL": 0.05}


@pytest.fixture
async def processes(agentidp_settings: Any) -> AsyncIterator[list[Any]]:
    """Three IdPs over one migrated database, none with background tasks running."""
    idps = [build_idp(agentidp_settings) for _ in range(3)]
    for idp in idps:
        await runtime(idp).open_storage()
    await migrate(idps[0].db, runtime(idps[0]).migration_sets())
    try:
        yield idps
    finally:
        for idp in idps:
            await runtime(idp).close_storage()


async def append(idp: Any, org_id: str, count: int) -> None:
    """Commit events the way the CLI does: no in-process nudge reaches the server."""
    for _ in range(count):
        async with idp.db.transaction() as conn:
            await idp.audit.append(conn, org_id=org_id, action="agent.changed", target_id="x")


def delivered(idp: Any) -> list[tuple[str, int]]:
    return [(e["org_id"], e["seq"]) for e in state(idp)["audit"]]


async def test_one_process_delivers_in_chain_order_and_resumes_from_its_cursor(processes):
    writer, first, second = processes
    await append(writer, "org-a", 3)
    await append(writer, "org-b", 2)
    await append(writer, "org-a", 2)

    assert await first.audit.dispatcher.deliver_pending() == 7
    # The lease is held: another process delivers nothing, so nothing is doubled.
    assert await second.audit.dispatcher.deliver_pending() == 0
    assert delivered(second) == []
    assert [seq for org, seq in delivered(first) if org == "org-a"] == [1, 2, 3, 4, 5]
    assert [seq for org, seq in delivered(first) if org == "org-b"] == [1, 2]
    # Each event arrives whole, as the audit API shows it.
    event = state(first)["audit"][0]
    assert (event["action"], event["target_id"], event["hash"]) == (
        "agent.changed",
        "x",
        await writer.db.fetchval(
            "SELECT hash FROM audit_events WHERE org_id = 'org-a' AND seq = 1"
        ),
    )

    # A clean shutdown hands the lease on; the next holder starts at the cursor.
    await first.audit.dispatcher.drain(timeout=5)
    await append(writer, "org-b", 1)
    assert await second.audit.dispatcher.deliver_pending() == 1
    assert delivered(second) == [("org-b", 3)]


async def test_a_crashed_holder_is_replaced_once_its_lease_expires(processes, clock):
    writer, crashed, survivor = processes
    crashed.audit.dispatcher.lease_ms = 300
    survivor.audit.dispatcher.lease_ms = 300
    await append(writer, "org-a", 2)
    assert await crashed.audit.dispatcher.deliver_pending() == 2
    # It dies holding the lease (no drain); events keep committing meanwhile.
    await append(writer, "org-a", 2)
    assert await survivor.audit.dispatcher.deliver_pending() == 0
    clock.advance(0.3)  # the lease's last millisecond: still held
    assert await survivor.audit.dispatcher.deliver_pending() == 0
    clock.advance(ms=1)
    assert await survivor.audit.dispatcher.deliver_pending() == 2
    assert delivered(survivor) == [("org-a", 3), ("org-a", 4)]


async def test_a_stalled_holder_cannot_move_the_cursor_after_losing_its_lease(processes, clock):
    writer, stalled, successor = processes
    stalled.audit.dispatcher.lease_ms = 300
    await append(writer, "org-a", 2)
    assert await stalled.audit.dispatcher.acquire()
    (hello,) = stalled.audit.dispatcher.consumers()
    await stalled.audit.dispatcher._register(hello)
    assert await hello.lease.acquire()
    clock.advance(0.301)
    assert await successor.audit.dispatcher.acquire()
    # The stalled process wakes up: its cursor writes are fenced off by the leases.
    assert not await stalled.audit.dispatcher._advance("org-a", 2)
    assert await successor.audit.dispatcher.deliver_pending() == 2
    assert not await stalled.audit.dispatcher._advance_consumer(hello, "org-a", 2)
    assert delivered(successor) == [("org-a", 1), ("org-a", 2)]


async def test_without_listeners_the_cursor_skips_ahead(
    agentidp_settings, agentidp_storage, tmp_path
):
    overrides = {**agentidp_storage, "DATA_DIR": str(tmp_path), "HELLO_ENABLED": False}
    quiet = build_idp(load_settings(env="test", overrides=overrides, environ={}))
    listener = build_idp(agentidp_settings)
    for idp in (quiet, listener):
        await runtime(idp).open_storage()
    try:
        await migrate(listener.db, runtime(listener).migration_sets())
        await append(quiet, "org-a", 3)
        # No plugin listens: nothing is read, the cursor moves to the head.
        assert await quiet.audit.dispatcher.deliver_pending() == 0
        await quiet.audit.dispatcher.drain(timeout=5)
        await append(quiet, "org-a", 1)
        # A plugin enabled later receives what committed from then on.
        assert await listener.audit.dispatcher.deliver_pending() == 1
        assert delivered(listener) == [("org-a", 4)]
    finally:
        for idp in (quiet, listener):
            await runtime(idp).close_storage()


async def test_the_server_delivers_events_written_by_another_process(agentidp_app, processes):
    server = agentidp_app.app.extensions["agentidp"]
    writer = processes[0]
    await append(writer, "org-a", 3)
    deadline = asyncio.get_running_loop().time() + 5
    while len(delivered(server)) < 3:
        assert asyncio.get_running_loop().time() < deadline, delivered(server)
        await asyncio.sleep(0.05)
    assert delivered(server) == [("org-a", 1), ("org-a", 2), ("org-a", 3)]


def test_dispatcher_holders_are_distinct(agentidp_settings):
    idp = build_idp(agentidp_settings)
    assert AuditDispatcher(idp).holder != AuditDispatcher(idp).holder


# One cursor, lease, timeout and retry per consumer ---------------------------


class Recorder:
    """A second consumer beside hello: accepts every event at once."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    @hookimpl
    def audit_event(self, event: Mapping[str, Any]) -> None:
        self.seen.append((event["org_id"], event["seq"]))


def with_recorder(idp: Any) -> Recorder:
    recorder = Recorder()
    idp._hooks.pm.register(recorder, name="recorder")
    return recorder


def sample(idp: Any, name: str, consumer: str) -> float | None:
    value: float | None = idp.registry.get_sample_value(name, {"consumer": consumer})
    return value


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


async def test_a_failing_consumer_is_retried_in_order_and_holds_up_no_other(processes, caplog):
    writer, server, _ = processes
    server.settings.set("AUDIT_CONSUMER_RETRY_MIN", 0)  # retry at the next round
    server._hooks.metrics(server, server.registry)
    recorder = with_recorder(server)
    state(server)["audit_failures"] = 2
    await append(writer, "org-a", 3)
    caplog.set_level(logging.WARNING, "agentidp.audit")

    # hello refuses event 1: its cursor stays put; the recorder takes all three.
    assert await server.audit.dispatcher.deliver_pending() == 3
    assert recorder.seen == [("org-a", 1), ("org-a", 2), ("org-a", 3)]
    assert delivered(server) == []
    assert sample(server, "agentidp_audit_consumer_lag", "hello") == 3
    assert sample(server, "agentidp_audit_consumer_lag", "recorder") == 0
    assert await server.audit.dispatcher.deliver_pending() == 0
    # The third attempt is accepted: each event once, in chain order, none skipped.
    assert await server.audit.dispatcher.deliver_pending() == 3
    assert delivered(server) == [("org-a", 1), ("org-a", 2), ("org-a", 3)]
    assert state(server)["audit_attempts"] == [("org-a", s) for s in (1, 1, 1, 2, 3)]
    assert recorder.seen == [("org-a", 1), ("org-a", 2), ("org-a", 3)]
    assert await server.audit.dispatcher.deliver_pending() == 0
    assert sample(server, "agentidp_audit_consumer_lag", "hello") == 0
    assert sample(server, "agentidp_audit_consumer_failures_total", "hello") == 2
    # A stuck consumer is visible: one line per failed attempt, naming it and the event.
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == [
        f"audit consumer hello failed on event org-a/1 (agent.changed, attempt {n}): "
        "RuntimeError: hello refuses this audit event on purpose; retrying in 0s"
        for n in (1, 2)
    ]


async def test_a_failed_event_waits_for_its_backoff_and_other_chains_go_on(processes):
    writer, server, _ = processes
    server.settings.set("AUDIT_CONSUMER_RETRY_MIN", 60)
    state(server)["audit_failures"] = 1
    await append(writer, "org-a", 2)
    assert await server.audit.dispatcher.deliver_pending() == 0
    await append(writer, "org-b", 2)
    # org-a backs off for a minute; org-b's chain is not held up by it.
    assert await server.audit.dispatcher.deliver_pending() == 2
    assert delivered(server) == [("org-b", 1), ("org-b", 2)]
    assert state(server)["audit_attempts"] == [("org-a", 1), ("org-b", 1), ("org-b", 2)]


async def test_a_call_past_the_timeout_is_retried(processes):
    writer, server, _ = processes
    server.settings.set("AUDIT_CONSUMER_TIMEOUT", 0.2)
    server.settings.set("AUDIT_CONSUMER_RETRY_MIN", 0)
    state(server)["audit_gate"] = asyncio.Event()  # never set: the call hangs
    await append(writer, "org-a", 2)
    assert await server.audit.dispatcher.deliver_pending() == 0
    assert state(server)["audit_attempts"] == [("org-a", 1)]
    state(server)["audit_gate"] = None
    assert await server.audit.dispatcher.deliver_pending() == 2
    assert delivered(server) == [("org-a", 1), ("org-a", 2)]


async def test_a_slow_consumer_keeps_its_lease_while_it_works(processes):
    writer, slow, other = processes
    for idp in (slow, other):
        idp.audit.dispatcher.lease_ms = 300
    gate = state(slow)["audit_gate"] = asyncio.Event()
    await append(writer, "org-a", 2)
    round_ = asyncio.create_task(slow.audit.dispatcher.deliver_pending())
    await until(lambda: state(slow)["audit_attempts"] == [("org-a", 1)])
    await asyncio.sleep(0.6)  # twice the lease: only renewal keeps it
    # Another process cannot take the consumer over while the handler works.
    assert await other.audit.dispatcher.deliver_pending() == 0
    assert delivered(other) == []
    gate.set()
    assert await round_ == 2
    assert delivered(slow) == [("org-a", 1), ("org-a", 2)]


async def test_a_blocked_consumer_does_not_hold_up_the_others_while_serving(processes):
    writer, server, _ = processes
    recorder = with_recorder(server)
    gate = state(server)["audit_gate"] = asyncio.Event()
    runner = asyncio.create_task(server.audit.dispatcher.run_forever())
    try:
        await append(writer, "org-a", 3)
        await until(lambda: len(recorder.seen) == 3)
        assert delivered(server) == []
        gate.set()
        await until(lambda: len(delivered(server)) == 3)
        assert delivered(server) == [("org-a", 1), ("org-a", 2), ("org-a", 3)]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_two_processes_share_delivery_to_each_consumer(processes):
    writer, *servers = processes
    recorders = [with_recorder(idp) for idp in servers]
    runners = [asyncio.create_task(idp.audit.dispatcher.run_forever()) for idp in servers]
    expected = [(org, seq) for org in ORGS for seq in range(1, 11)]
    try:
        for _ in range(5):
            for org in ORGS:
                await append(writer, org, 2)
            await asyncio.sleep(0.02)

        def seen(trace: Callable[[Any, Recorder], list[tuple[str, int]]]) -> list[tuple[str, int]]:
            return [e for idp, rec in zip(servers, recorders, strict=True) for e in trace(idp, rec)]

        def hello_seen(idp: Any, _: Recorder) -> list[tuple[str, int]]:
            return delivered(idp)

        def recorder_seen(_: Any, rec: Recorder) -> list[tuple[str, int]]:
            return rec.seen

        for trace in (hello_seen, recorder_seen):
            await until(lambda t=trace: set(seen(t)) == set(expected))  # type: ignore[misc]
            # No lease changed hands, so at least once here is exactly once, each in order.
            assert sorted(seen(trace)) == expected
            for idp, rec in zip(servers, recorders, strict=True):
                for org in ORGS:
                    mine = [s for o, s in trace(idp, rec) if o == org]
                    assert mine == sorted(mine)
    finally:
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
