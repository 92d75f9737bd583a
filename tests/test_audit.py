"""The hash-chained audit log on both storage adapters."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agentidp_server.audit.log import GENESIS, event_hash, verify_chain
from agentidp_server.runtime import runtime
from agentidp_server.testkit import admin_headers, make_agent, make_org, token


async def _activity(client, idp) -> dict:
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    agent, credential = await make_agent(client, headers)
    for _ in range(3):
        await token(client, credential["client_id"], credential["client_secret"])
    return {"org": org, "headers": headers, "agent": agent, "credential": credential}


@contextmanager
def counted_transactions(idp) -> Iterator[list[None]]:
    """Count the transactions the database opens inside the block (one item each)."""
    opened: list[None] = []
    transaction = idp.db.transaction

    def counting(*args, **kwargs):
        opened.append(None)
        return transaction(*args, **kwargs)

    idp.db.transaction = counting
    try:
        yield opened
    finally:
        del idp.db.transaction


async def _events(idp, org_id: str) -> list[dict]:
    return await idp.db.fetch("SELECT * FROM audit_events WHERE org_id = $1 ORDER BY seq", org_id)


async def test_activity_forms_one_intact_chain(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    events = await _events(agentidp_idp, state["org"]["org_id"])
    actions = [e["action"] for e in events]
    # admin token, agent created, credential created, three agent tokens
    assert actions == ["token.issued", "agent.created", "credential.created"] + ["token.issued"] * 3
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["prev_hash"] == GENESIS
    for before, after in itertools.pairwise(events):
        assert after["prev_hash"] == before["hash"]
    for event in events:
        assert event_hash(event) == event["hash"]
    report = await verify_chain(agentidp_idp.db, state["org"]["org_id"])
    assert report.intact
    assert report.events == len(events)


async def test_issued_token_event_records_the_grant_and_no_secret(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    events = await _events(agentidp_idp, state["org"]["org_id"])
    issued = events[-1]
    details = json.loads(issued["details"])
    assert issued["actor_agent_id"] == state["agent"]["agent_id"]
    assert issued["actor_client_id"] == state["credential"]["client_id"]
    assert details["grant_type"] == "client_credentials"
    assert details["scope"] == "read write"
    assert issued["request_id"]
    everything = json.dumps(events)
    assert state["credential"]["client_secret"] not in everything
    assert state["org"]["client_secret"] not in everything
    assert "eyJ" not in everything  # no token is ever stored


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("UPDATE audit_events SET outcome = 'failure' WHERE org_id = $1 AND seq = 3", "edited"),
        ("DELETE FROM audit_events WHERE org_id = $1 AND seq = 3", "deleted"),
    ],
)
async def test_tampering_is_reported_at_the_exact_seq(
    agentidp_client, agentidp_idp, tamper, reason
):
    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    await agentidp_idp.db.execute(tamper, org_id)
    report = await verify_chain(agentidp_idp.db, org_id)
    assert not report.intact
    assert report.first_broken_seq == 3
    assert reason in report.reason


async def test_swapped_events_are_reported(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    db = agentidp_idp.db
    # Swap positions 2 and 3 while keeping each row's own hash valid for its new seq is
    # impossible without the chain noticing: move the rows and recompute their hashes.
    rows = {e["seq"]: e for e in await _events(agentidp_idp, org_id)}
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM audit_events WHERE org_id = $1 AND seq IN (2, 3)", org_id)
        for seq, source in ((2, rows[3]), (3, rows[2])):
            moved = {**source, "seq": seq}
            moved["hash"] = event_hash(moved)
            columns = list(moved)
            await conn.execute(
                f"INSERT INTO audit_events ({', '.join(columns)}) VALUES "
                f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
                *[moved[c] for c in columns],
            )
    report = await verify_chain(db, org_id)
    assert not report.intact
    assert report.first_broken_seq == 2
    assert "inserted or reordered" in report.reason


async def test_inserted_event_is_reported(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    db = agentidp_idp.db
    rows = await _events(agentidp_idp, org_id)
    async with db.transaction() as conn:
        # Shift events 4.. up by one and forge a new event 4 with a valid own hash.
        for row in reversed(rows[3:]):
            await conn.execute(
                "UPDATE audit_events SET seq = $1 WHERE org_id = $2 AND seq = $3",
                row["seq"] + 1, org_id, row["seq"],
            )  # fmt: skip
        forged = {**rows[3], "event_id": "forged", "action": "agent.deleted", "seq": 4}
        forged["prev_hash"] = rows[2]["hash"]
        forged["hash"] = event_hash(forged)
        columns = list(forged)
        await conn.execute(
            f"INSERT INTO audit_events ({', '.join(columns)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))})",
            *[forged[c] for c in columns],
        )
    report = await verify_chain(db, org_id)
    assert not report.intact
    assert report.first_broken_seq == 5  # the original event 4 no longer follows its predecessor


async def test_audit_api_lists_filters_and_verifies(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    headers = state["headers"]
    response = await agentidp_client.get(
        "/api/v1/audit?action=token.issued&limit=2", headers=headers
    )
    body = await response.get_json()
    assert response.status_code == 200
    assert [e["action"] for e in body["data"]] == ["token.issued", "token.issued"]
    assert body["next_cursor"] is not None
    rest = await agentidp_client.get(
        f"/api/v1/audit?action=token.issued&cursor={body['next_cursor']}", headers=headers
    )
    # 5 tokens were issued so far: 2 on the first page, the rest on the second.
    assert len((await rest.get_json())["data"]) == 2
    by_agent = await agentidp_client.get(
        f"/api/v1/audit?agent_id={state['agent']['agent_id']}", headers=headers
    )
    assert {e["action"] for e in (await by_agent.get_json())["data"]} == {
        "agent.created",
        "token.issued",
    }
    verify = await agentidp_client.get("/api/v1/audit/verify", headers=headers)
    assert (await verify.get_json())["intact"] is True
    other = await make_org(agentidp_idp, "Other")
    other_headers = await admin_headers(agentidp_client, other)
    foreign = await agentidp_client.get("/api/v1/audit", headers=other_headers)
    org_ids = {e["org_id"] for e in (await foreign.get_json())["data"]}
    assert org_ids == {other["org_id"]}


async def test_failed_authentication_is_audited(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    response = await agentidp_client.post(
        "/api/v1/token",
        form={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + __import__("base64").b64encode(
            f"{state['credential']['client_id']}:wrong".encode()).decode()},
    )  # fmt: skip
    assert response.status_code == 401
    events = await _events(agentidp_idp, state["org"]["org_id"])
    assert events[-1]["action"] == "client.authentication_failed"
    assert events[-1]["outcome"] == "failure"
    assert "wrong" not in json.dumps(events[-1])


async def test_signed_checkpoint_catches_a_truncated_tail_even_with_the_head_rewritten(
    agentidp_client, agentidp_idp
):
    from agentidp_server.audit.checkpoints import checkpoint_all

    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    idp = agentidp_idp
    assert await checkpoint_all(idp) >= 1
    assert await checkpoint_all(idp) == 0  # nothing moved since
    last = await idp.db.fetchval("SELECT MAX(seq) FROM audit_events WHERE org_id = $1", org_id)
    report = await verify_chain(idp.db, org_id, idp.keys)
    assert report.intact
    # An attacker deletes the last two events and rewinds the head to match.
    kept = await idp.db.fetchrow(
        "SELECT seq, hash FROM audit_events WHERE org_id = $1 AND seq = $2", org_id, last - 2
    )
    await idp.db.execute(
        "DELETE FROM audit_events WHERE org_id = $1 AND seq > $2", org_id, last - 2
    )
    await idp.db.execute(
        "UPDATE audit_heads SET seq = $1, hash = $2 WHERE org_id = $3",
        kept["seq"], kept["hash"], org_id,
    )  # fmt: skip
    assert (await verify_chain(idp.db, org_id)).intact  # without the checkpoint it looks fine
    report = await verify_chain(idp.db, org_id, idp.keys)
    assert not report.intact
    assert report.first_broken_seq == last - 1
    assert "truncated" in report.reason


async def test_forged_checkpoint_is_refused(agentidp_client, agentidp_idp):
    from agentidp_server.audit.checkpoints import checkpoint_all

    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    await checkpoint_all(agentidp_idp)
    await agentidp_idp.db.execute(
        "UPDATE audit_checkpoints SET hash = $1 WHERE org_id = $2", "f" * 64, org_id
    )
    report = await verify_chain(agentidp_idp.db, org_id, agentidp_idp.keys)
    assert not report.intact
    assert "does not match its signature" in report.reason


async def test_retention_prunes_and_leaves_a_verifiable_chain(agentidp_client, agentidp_idp):
    from agentidp_server.audit.checkpoints import prune

    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    idp = agentidp_idp
    # Age the first three events past a one-day retention.
    await idp.db.execute(
        "UPDATE audit_events SET occurred_at = occurred_at - $1 WHERE org_id = $2 AND seq <= 3",
        3 * 86_400_000, org_id,
    )  # fmt: skip
    idp.settings.set("AUDIT_RETENTION_DAYS", 1)
    # Editing occurred_at broke those events' hashes; pruning removes exactly them.
    assert await prune(idp) >= 3
    remaining = await idp.db.fetchval("SELECT MIN(seq) FROM audit_events WHERE org_id = $1", org_id)
    assert remaining == 4
    report = await verify_chain(idp.db, org_id, idp.keys)
    assert report.intact, report
    # Deleting the retention checkpoint makes the cut unexplained.
    await idp.db.execute("DELETE FROM audit_checkpoints WHERE org_id = $1", org_id)
    report = await verify_chain(idp.db, org_id, idp.keys)
    assert not report.intact
    assert "event 1 was deleted" in report.reason


async def test_plugins_can_resume_from_a_sequence_number(agentidp_client, agentidp_idp):
    state = await _activity(agentidp_client, agentidp_idp)
    org_id = state["org"]["org_id"]
    first = await agentidp_idp.audit.read(org_id, 0, limit=2)
    assert [e["seq"] for e in first] == [1, 2]
    rest = await agentidp_idp.audit.read(org_id, first[-1]["seq"])
    assert [e["seq"] for e in rest] == list(range(3, 7))
    assert rest[0]["action"] == "credential.created"


async def test_concurrent_records_share_commits_and_keep_each_chain_whole(agentidp_idp):
    idp = agentidp_idp
    with counted_transactions(idp) as opened:
        events = await asyncio.gather(
            *(
                idp.audit.record(
                    idp.db, org_id=f"org-{i % 2}", action="token.issued", target_id=str(i)
                )
                for i in range(60)
            )
        )
    # Every caller got its own committed event; the commits were shared.
    assert len(opened) < 60
    for org in ("org-0", "org-1"):
        mine = sorted(e["seq"] for e in events if e["org_id"] == org)
        assert mine == list(range(1, 31))
        report = await verify_chain(idp.db, org, idp.keys)
        assert report.intact, report
        assert report.events == 30


async def test_one_organisations_batch_is_one_statement_and_any_details_chain(
    agentidp_idp, agentidp_backend
):
    """On PostgreSQL the database hashes the chain (audit_pg); the bytes it hashes
    must be those event_hash hashes, for plain and non-ASCII details alike, and a
    details value that mimics the position mark still chains (the slow way)."""
    idp = agentidp_idp
    details = [
        {"scope": "read write", "exp": 1_800_000_000},
        {"name": "Zoë \u2028 \U0001f600", "quote": '"prev_hash":"x"', "nested": {"seq": 1}},
        {"seq": 2**53 - 1},  # the position mark itself, under another object
        {},
    ]
    with counted_transactions(idp) as opened:
        for round_ in range(2):  # the first round creates the chain head
            events = await asyncio.gather(
                *(
                    idp.audit.record(idp.db, org_id="org-x", action="agent.changed", details=d)
                    for d in details
                )
            )
            assert [e["seq"] for e in events] == list(range(1 + 4 * round_, 5 + 4 * round_))
    if agentidp_backend == "postgres":
        # Only the batch holding the mimicking value took a transaction.
        assert len(opened) == 2
    stored = await _events(idp, "org-x")
    assert [json.loads(e["details"]) for e in stored] == details * 2
    for event, row in zip(events, stored[4:], strict=True):
        assert event["hash"] == row["hash"] == event_hash(row)
    report = await verify_chain(idp.db, "org-x", idp.keys)
    assert report.intact, report
    assert report.events == 8


async def test_a_failed_group_commit_fails_only_the_bad_caller_and_half_writes_nothing(
    agentidp_idp, monkeypatch
):
    idp = agentidp_idp
    chain = idp.audit._chain

    async def failing_for_org_b(conn, org, drafts):
        if org == "org-b":
            raise RuntimeError("disk full")
        await chain(conn, org, drafts)

    chain_pg = idp.audit._chain_pg

    async def pg_failing_for_org_b(conn, org, drafts):
        if org == "org-b":
            raise RuntimeError("disk full")
        return await chain_pg(conn, org, drafts)

    monkeypatch.setattr(idp.audit, "_chain", failing_for_org_b)
    # A batch of one organisation takes PostgreSQL's one-statement path instead.
    monkeypatch.setattr(idp.audit, "_chain_pg", pg_failing_for_org_b)
    results = await asyncio.gather(
        idp.audit.record(idp.db, org_id="org-a", action="token.issued"),
        idp.audit.record(idp.db, org_id="org-b", action="token.issued"),
        return_exceptions=True,
    )
    # The batch's transaction rolled back; each event was then written alone (storage/batching.py),
    # so org-b's failure is its caller's only (issue 25 item 2).
    assert results[0]["seq"] == 1
    assert str(results[1]) == "disk full"
    assert await idp.db.fetchval("SELECT COUNT(*) FROM audit_events WHERE org_id = 'org-a'") == 1
    assert await idp.db.fetchval("SELECT COUNT(*) FROM audit_events WHERE org_id = 'org-b'") == 0
    monkeypatch.undo()
    # The writer recovers: the next event continues the chain.
    event = await idp.audit.record(idp.db, org_id="org-a", action="token.issued")
    assert event["seq"] == 2


@pytest.fixture
async def standalone(agentidp_settings):
    """An IdP over a migrated store with no background tasks (no app holding leases)."""
    from agentidp_server.app import build_idp
    from agentidp_server.storage.migrations import migrate

    idp = build_idp(agentidp_settings)
    idp._hooks.metrics(idp, idp.registry)
    await runtime(idp).open_storage()
    await migrate(idp.db, runtime(idp).migration_sets())
    await idp.keys.load(idp.db)
    try:
        yield idp
    finally:
        await runtime(idp).close_storage()


async def _chain_of(idp, org_id: str, events: int) -> None:
    for i in range(events):
        await idp.audit.record(idp.db, org_id=org_id, action="agent.changed", target_id=str(i))


async def test_truncated_tail_is_reported_and_gauge_turns_zero(standalone, caplog):
    from agentidp_server.audit.integrity import IntegrityWatch

    idp = standalone
    org_id = "org-c"
    gauge = "agentidp_audit_chain_integrity"
    await _chain_of(idp, org_id, 6)
    watch = IntegrityWatch(idp)
    assert await watch.round() is True
    assert idp.registry.get_sample_value(gauge) == 1
    await idp.db.execute("DELETE FROM audit_events WHERE org_id = $1 AND seq >= 5", org_id)
    report = await verify_chain(idp.db, org_id)
    assert not report.intact
    assert report.first_broken_seq == 5
    assert "truncated" in report.reason
    logger = logging.getLogger("agentidp.audit")
    logger.addHandler(caplog.handler)  # configure_logging stops propagation to root
    try:
        assert await watch.round() is False
    finally:
        logger.removeHandler(caplog.handler)
    assert idp.registry.get_sample_value(gauge) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        f"audit chain of {org_id} broken at seq 5: "
        "events after this position were deleted (truncated)"
    ) in errors


async def test_background_check_sweeps_in_bounded_slices_and_holds_a_break(standalone):
    from agentidp_server.audit.integrity import IntegrityWatch

    idp = standalone
    gauge = "agentidp_audit_chain_integrity"
    await _chain_of(idp, "org-s", 30)
    idp.settings.set("AUDIT_VERIFY_BATCH", 10)
    watch = IntegrityWatch(idp)
    assert await watch.round() is True
    assert watch.sweeps["org-s"].seq == 10  # one slice, not the whole chain
    await idp.db.execute(
        "UPDATE audit_events SET outcome = 'failure' WHERE org_id = 'org-s' AND seq = 25"
    )
    assert await watch.round() is True  # the sweep is at 11..20: not there yet
    assert await watch.round() is False  # 21..30 finds it
    assert idp.registry.get_sample_value(gauge) == 0
    # Broken chains are verified in full from then on: the gauge does not flip back.
    assert await watch.round() is False
    assert await watch.round() is False
    await idp.db.execute(
        "UPDATE audit_events SET outcome = 'success' WHERE org_id = 'org-s' AND seq = 25"
    )
    assert await watch.round() is True
    assert idp.registry.get_sample_value(gauge) == 1


async def test_background_check_sees_a_cut_tail_whatever_the_sweep_position(standalone):
    from agentidp_server.audit.integrity import IntegrityWatch

    idp = standalone
    await _chain_of(idp, "org-t", 30)
    idp.settings.set("AUDIT_VERIFY_BATCH", 10)
    watch = IntegrityWatch(idp)
    assert await watch.round() is True
    await idp.db.execute("DELETE FROM audit_events WHERE org_id = 'org-t' AND seq > 28")
    assert await watch.round() is False  # the head check runs every round


async def test_background_check_keeps_up_with_a_growing_chain(standalone):
    from agentidp_server.audit.integrity import IntegrityWatch

    idp = standalone
    await _chain_of(idp, "org-g", 5)
    idp.settings.set("AUDIT_VERIFY_BATCH", 4)
    watch = IntegrityWatch(idp)
    assert await watch.round() is True
    await _chain_of(idp, "org-g", 20)  # grows faster than one slice
    assert await watch.round() is True
    # The slice widened to twice the growth, so the sweep reached the head and starts over.
    assert "org-g" not in watch.sweeps


async def test_one_process_runs_the_background_check(standalone):
    from agentidp_server.app import build_idp
    from agentidp_server.audit.integrity import IntegrityWatch

    gauge = "agentidp_audit_chain_integrity"
    await _chain_of(standalone, "org-l", 3)
    other = build_idp(standalone.settings)  # a second process, with its own metrics
    other._hooks.metrics(other, other.registry)
    await runtime(other).open_storage()
    try:
        first, second = IntegrityWatch(standalone), IntegrityWatch(other)
        assert await first.round() is True
        assert await second.round() is None  # another process holds the lease...
        assert other.registry.get_sample_value(gauge) == 1  # ...and it exports its result
        await standalone.db.execute(
            "UPDATE audit_events SET reason = 'x' WHERE org_id = 'org-l' AND seq = 2"
        )
        assert await first.round() is False
        assert await second.round() is None
        assert other.registry.get_sample_value(gauge) == 0
    finally:
        await runtime(other).close_storage()
