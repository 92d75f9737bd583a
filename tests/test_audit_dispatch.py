"""Plugin delivery of audit events across processes: the audit table is the outbox.

Each `IdP` built here stands for one server process (its own plugin state, its
own dispatcher) sharing one database, as workers and pods do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agentidp_hello import state

from agentidp_server.app import build_idp
from agentidp_server.audit_dispatch import AuditDispatcher
from agentidp_server.migrations import migrate
from agentidp_server.settings import load_settings

ORGS = ("org-a", "org-b")


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True, "AUDIT_DISPATCH_INTERVAL": 0.05}


@pytest.fixture
async def processes(agentidp_settings: Any) -> AsyncIterator[list[Any]]:
    """Three IdPs over one migrated database, none with background tasks running."""
    idps = [build_idp(agentidp_settings) for _ in range(3)]
    for idp in idps:
        await idp.open_storage()
    await migrate(idps[0].db, idps[0].migration_sets())
    try:
        yield idps
    finally:
        for idp in idps:
            await idp.close_storage()


async def append(idp: Any, org_id: str, count: int) -> None:
    """Commit events the way the CLI does: no in-process nudge reaches the server."""
    for _ in range(count):
        async with idp.db.transaction() as conn:
            await idp.audit.append(conn, org_id=org_id, action="agent.updated", target_id="x")


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
        "agent.updated",
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


async def test_a_crashed_holder_is_replaced_once_its_lease_expires(processes):
    writer, crashed, survivor = processes
    crashed.audit.dispatcher.lease_ms = 300
    survivor.audit.dispatcher.lease_ms = 300
    await append(writer, "org-a", 2)
    assert await crashed.audit.dispatcher.deliver_pending() == 2
    # It dies holding the lease (no drain); events keep committing meanwhile.
    await append(writer, "org-a", 2)
    assert await survivor.audit.dispatcher.deliver_pending() == 0
    await asyncio.sleep(0.4)
    assert await survivor.audit.dispatcher.deliver_pending() == 2
    assert delivered(survivor) == [("org-a", 3), ("org-a", 4)]


async def test_a_stalled_holder_cannot_move_the_cursor_after_losing_its_lease(processes):
    writer, stalled, successor = processes
    stalled.audit.dispatcher.lease_ms = 300
    await append(writer, "org-a", 2)
    assert await stalled.audit.dispatcher.acquire()
    await asyncio.sleep(0.4)
    assert await successor.audit.dispatcher.acquire()
    # The stalled process wakes up: its cursor write is fenced off by the lease.
    assert not await stalled.audit.dispatcher._advance("org-a", 2)
    assert await successor.audit.dispatcher.deliver_pending() == 2
    assert delivered(successor) == [("org-a", 1), ("org-a", 2)]


async def test_without_listeners_the_cursor_skips_ahead(
    agentidp_settings, agentidp_storage, tmp_path
):
    overrides = {**agentidp_storage, "DATA_DIR": str(tmp_path), "HELLO_ENABLED": False}
    quiet = build_idp(load_settings(env="test", overrides=overrides, environ={}))
    listener = build_idp(agentidp_settings)
    for idp in (quiet, listener):
        await idp.open_storage()
    try:
        await migrate(listener.db, listener.migration_sets())
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
            await idp.close_storage()


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
