"""Each worker's client-lookup cache: it may only answer what a fresh read would.

The behaviour tests run on both adapters (SQLite keeps no cache, so they check
the same answers without one); the notification tests need PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from agentidp_server.directory import agents, credentials
from agentidp_server.oauth import client_cache
from agentidp_server.oauth.client_cache import CHANNEL, ClientCache
from agentidp_server.oauth.client_lookup import ClientLookup
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org

FORM = {"grant_type": "client_credentials"}
LISTENER = f"agentidp-listen-{CHANNEL}"


async def _status(client: Any, client_id: str, secret: str) -> int:
    response = await client.post("/api/v1/token", form=FORM, headers=basic(client_id, secret))
    return int(response.status_code)


async def _eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.01)


def _cache(idp: Any) -> ClientCache:
    return ClientLookup.of(idp).cache


async def _cached_agent(client: Any, idp: Any) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """An agent whose lookup this worker has cached (on PostgreSQL), with its credential."""
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    agent, credential = await make_agent(client, headers)
    if idp.db.dialect == "postgresql":
        await _eventually(lambda: _cache(idp).live)
        await idp.settle_client_changes()  # the creation's notifications are behind us
    assert await _status(client, credential["client_id"], credential["client_secret"]) == 200
    return agent, credential, headers


async def test_cache_is_live_on_postgresql_only(agentidp_client, agentidp_idp):
    agent, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    cached = _cache(agentidp_idp).get(credential["client_id"])
    if agentidp_idp.db.dialect == "postgresql":
        assert cached is not None
        assert cached[0]["agent_id"] == agent["agent_id"]
        assert [s["credential_id"] for s in cached[1]] == [credential["credential_id"]]
    else:
        assert not _cache(agentidp_idp).live
        assert cached is None


async def test_cached_client_is_answered_without_a_query(
    agentidp_client, agentidp_idp, monkeypatch
):
    _, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    lookups: list[str] = []
    original = agents.get_clients_for_secret

    async def counting(db: Any, client_ids: list[str]) -> Any:
        lookups.extend(client_ids)
        return await original(db, client_ids)

    monkeypatch.setattr(agents, "get_clients_for_secret", counting)
    client_id, secret = credential["client_id"], credential["client_secret"]
    for _ in range(3):
        assert await _status(agentidp_client, client_id, secret) == 200
    expected = [] if agentidp_idp.db.dialect == "postgresql" else [credential["client_id"]] * 3
    assert lookups == expected


def _late_notifications(idp: Any) -> None:
    """Deliver every notification 50 ms late (in order): without `settle()` the writer's
    next request would still meet the cached client."""
    cache = _cache(idp)
    deliver = cache.changed

    def late(payload: str) -> None:
        asyncio.get_running_loop().call_later(0.05, deliver, payload)

    cache.changed = late  # type: ignore[method-assign]


async def test_revoked_by_the_api_is_refused_on_the_next_request(agentidp_client, agentidp_idp):
    _late_notifications(agentidp_idp)
    for _ in range(5):
        agent, credential, headers = await _cached_agent(agentidp_client, agentidp_idp)
        path = f"/api/v1/agents/{agent['agent_id']}/credentials/{credential['credential_id']}"
        assert (await agentidp_client.delete(path, headers=headers)).status_code == 204
        assert (
            await _status(agentidp_client, credential["client_id"], credential["client_secret"])
            == 401
        )


async def test_suspended_and_deleted_agents_are_refused_at_once(agentidp_client, agentidp_idp):
    _late_notifications(agentidp_idp)
    agent, credential, headers = await _cached_agent(agentidp_client, agentidp_idp)
    path = f"/api/v1/agents/{agent['agent_id']}"
    response = await agentidp_client.patch(path, json={"status": "suspended"}, headers=headers)
    assert response.status_code == 200
    assert (
        await _status(agentidp_client, credential["client_id"], credential["client_secret"]) == 401
    )
    response = await agentidp_client.patch(path, json={"status": "active"}, headers=headers)
    assert (
        await _status(agentidp_client, credential["client_id"], credential["client_secret"]) == 200
    )
    assert (await agentidp_client.delete(path, headers=headers)).status_code == 204
    assert (
        await _status(agentidp_client, credential["client_id"], credential["client_secret"]) == 401
    )


async def test_a_secret_made_elsewhere_works_on_first_use(agentidp_client, agentidp_idp):
    """A cache that has not heard of a new secret reads again rather than refuse it."""
    agent, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    before = await agents.get_clients_for_secret(agentidp_idp.db, [credential["client_id"]])
    created = await credentials.create_secret(
        agentidp_idp.db, agent, agentidp_idp.settings.CREDENTIAL_PEPPER, None
    )
    cache = _cache(agentidp_idp)
    if cache.live:
        await agentidp_idp.settle_client_changes()
        # Put back the answer from before the new secret, as if its notification were late.
        cache.put(credential["client_id"], before[credential["client_id"]], cache.generation)
        assert len(cache.get(credential["client_id"])[1]) == 1
    assert await _status(agentidp_client, credential["client_id"], created["client_secret"]) == 200
    assert (
        await _status(agentidp_client, credential["client_id"], credential["client_secret"]) == 200
    )
    wrong = await _status(
        agentidp_client, credential["client_id"], "not-" + credential["client_secret"]
    )
    assert wrong == 401


# PostgreSQL: changes made by another process -------------------------------------------


# LISTEN/NOTIFY is PostgreSQL's; SQLite keeps no cache.
pg_only = pytest.mark.parametrize("agentidp_backend", ["postgres"])


async def _other_process(idp: Any, sql: str, *args: Any) -> None:
    """A writer the app knows nothing of: its own connection, hand-written SQL."""
    conn = await asyncpg.connect(idp.settings.DATABASE_URL)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


@pg_only
async def test_hand_edits_in_sql_reach_the_cache(agentidp_client, agentidp_idp):
    _agent, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    client_id, secret = credential["client_id"], credential["client_secret"]
    cache = _cache(agentidp_idp)

    await _other_process(
        agentidp_idp, "UPDATE credentials SET status = 'revoked' WHERE credential_id = $1",
        credential["credential_id"],
    )  # fmt: skip
    await _eventually(lambda: cache.get(client_id) is None)
    assert await _status(agentidp_client, client_id, secret) == 401

    # settle(): once it returns, this worker has applied a change committed before it.
    _again, credential3, _ = await _cached_agent(agentidp_client, agentidp_idp)
    await agentidp_idp.db.execute(
        "UPDATE credentials SET status = 'revoked' WHERE credential_id = $1",
        credential3["credential_id"],
    )
    await agentidp_idp.settle_client_changes()
    assert cache.get(credential3["client_id"]) is None

    # The organisation's tier: every cached client of the organisation is dropped.
    second, credential2, _ = await _cached_agent(agentidp_client, agentidp_idp)
    assert cache.get(credential2["client_id"]) is not None
    await _other_process(
        agentidp_idp, "UPDATE tenant_tiers SET tier = 'pro' WHERE org_id = $1", second["org_id"]
    )
    await _eventually(lambda: cache.get(credential2["client_id"]) is None)
    assert (
        await _status(agentidp_client, credential2["client_id"], credential2["client_secret"])
        == 200
    )
    assert cache.get(credential2["client_id"])[2] == "pro"

    # TRUNCATE fires no row trigger: its statement trigger empties the cache.
    assert len(cache) > 0
    await _other_process(agentidp_idp, "TRUNCATE agents CASCADE")
    await _eventually(lambda: len(cache) == 0)
    assert (
        await _status(agentidp_client, credential2["client_id"], credential2["client_secret"])
        == 401
    )


@pg_only
async def test_lost_notifications_turn_the_cache_off_until_reconnected(
    agentidp_client, agentidp_idp
):
    _, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    client_id, secret = credential["client_id"], credential["client_secret"]
    cache = _cache(agentidp_idp)
    assert cache.get(client_id) is not None
    await _other_process(
        agentidp_idp,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        LISTENER,
    )
    await _eventually(lambda: not cache.live, within=2.0)
    assert len(cache) == 0
    # While it is off, every answer is read afresh: a change made now is seen.
    await _other_process(
        agentidp_idp, "UPDATE credentials SET status = 'revoked' WHERE credential_id = $1",
        credential["credential_id"],
    )  # fmt: skip
    assert await _status(agentidp_client, client_id, secret) == 401
    # The supervisor reconnects (1 s backoff), and the cache fills again.
    await _eventually(lambda: cache.live, within=10.0)
    _, fresh, _ = await _cached_agent(agentidp_client, agentidp_idp)
    assert cache.get(fresh["client_id"]) is not None


@pg_only
@pytest.mark.parametrize("agentidp_overrides", [{"CLIENT_CACHE_TTL": 0}])
async def test_ttl_zero_turns_the_cache_off(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    for _ in range(2):
        assert await _status(agentidp_client, org["client_id"], org["client_secret"]) == 200
    await asyncio.sleep(0.5)
    assert not _cache(agentidp_idp).live
    assert _cache(agentidp_idp).get(org["client_id"]) is None
    assert await _listeners(agentidp_idp) == 0  # it never even connected


async def _listeners(idp: Any) -> int:
    count: int = await idp.db.fetchval(
        "SELECT COUNT(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        LISTENER,
    )
    return count


@pytest.fixture
def fast_proofs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove delivery every 50 ms instead of every 5 s (before the app starts)."""
    monkeypatch.setattr(client_cache, "PING_INTERVAL", 0.05)
    monkeypatch.setattr(client_cache, "RETRY_MIN", 0.05)


@pg_only
async def test_a_disabled_trigger_turns_the_cache_off(fast_proofs, agentidp_client, agentidp_idp):
    """Without its triggers (migration not applied, or disabled by hand) no change
    would reach the cache: it must not serve."""
    _, credential, _ = await _cached_agent(agentidp_client, agentidp_idp)
    cache = _cache(agentidp_idp)
    assert await _listeners(agentidp_idp) == 1
    await _other_process(
        agentidp_idp, "ALTER TABLE credentials DISABLE TRIGGER credentials_client_changed"
    )
    await _eventually(lambda: not cache.live, within=2.0)
    await _other_process(
        agentidp_idp, "UPDATE credentials SET status = 'revoked' WHERE credential_id = $1",
        credential["credential_id"],
    )  # fmt: skip
    assert (
        await _status(agentidp_client, credential["client_id"], credential["client_secret"]) == 401
    )
    await asyncio.sleep(0.3)
    assert not cache.live
    await _other_process(
        agentidp_idp, "ALTER TABLE credentials ENABLE TRIGGER credentials_client_changed"
    )
    await _eventually(lambda: cache.live, within=5.0)


# The cache's own rules, without a server ---------------------------------------------


def _record(agent_id: str = "a1", org_id: str = "o1", expires_at: int | None = None) -> Any:
    agent = {
        "agent_id": agent_id,
        "org_id": org_id,
        "scopes": ["read"],
        "metadata": {"team": {"name": "core"}},
        "status": "active",
    }
    return agent, [{"credential_id": "c1", "secret_hash": "h", "expires_at": expires_at}], "free"


def test_a_fill_that_raced_a_change_is_not_kept():
    cache = ClientCache(ttl=60, size=10)
    cache.set_live(True)
    generation = cache.generation
    cache.changed("agent:someone-else")
    cache.put("client", _record(), generation)
    assert cache.get("client") is None
    cache.put("client", _record(), cache.generation)
    assert cache.get("client") is not None


def test_entries_expire_and_expired_secrets_are_left_out():
    cache = ClientCache(ttl=0.05, size=10)
    cache.set_live(True)
    past = int(time.time() * 1000) - 1
    cache.put("client", _record(expires_at=past), cache.generation)
    agent, secrets, tier = cache.get("client")
    assert agent["agent_id"] == "a1"
    assert tier == "free"
    assert secrets == []
    time.sleep(0.06)
    assert cache.get("client") is None


def test_callers_get_copies_and_the_oldest_fill_leaves_first():
    cache = ClientCache(ttl=60, size=2)
    cache.set_live(True)
    for n in range(3):
        cache.put(f"client{n}", _record(agent_id=f"a{n}"), cache.generation)
    assert cache.get("client0") is None
    first = cache.get("client1")
    first[0]["scopes"].append("admin")
    first[0]["status"] = "suspended"
    first[0]["metadata"]["team"]["name"] = "changed"
    first[1][0]["secret_hash"] = "changed"
    again = cache.get("client1")
    assert again[0]["scopes"] == ["read"]
    assert again[0]["status"] == "active"
    assert again[0]["metadata"] == {"team": {"name": "core"}}
    assert again[1][0]["secret_hash"] == "h"
    cache.changed("agent:a1")
    assert cache.get("client1") is None
    assert cache.get("client2") is not None
    cache.changed("org:o1")
    assert len(cache) == 0


def test_the_filling_caller_keeps_its_own_copy():
    cache = ClientCache(ttl=60, size=10)
    cache.set_live(True)
    record = _record()
    cache.put("client", record, cache.generation)
    record[0]["metadata"]["team"]["name"] = "changed"
    record[0]["scopes"].append("admin")
    record[1][0]["secret_hash"] = "changed"
    agent, secrets, _ = cache.get("client")
    assert agent["metadata"] == {"team": {"name": "core"}}
    assert agent["scopes"] == ["read"]
    assert secrets[0]["secret_hash"] == "h"


def test_nothing_is_kept_or_served_while_not_listening():
    cache = ClientCache(ttl=60, size=10)
    cache.put("client", _record(), cache.generation)
    assert len(cache) == 0
    cache.set_live(True)
    cache.put("client", _record(), cache.generation)
    cache.set_live(False)
    assert cache.get("client") is None
    assert len(cache) == 0


def test_an_entry_costs_its_size_not_a_serialiser_buffer():
    """orjson's result keeps a 4 KiB buffer; 100,000 of them were 800 MB per worker."""
    import tracemalloc

    cache = ClientCache(ttl=60, size=5000)
    cache.set_live(True)
    records = [_record(agent_id=f"a{n}") for n in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, record in enumerate(records):
            cache.put(f"client{n}", record, cache.generation)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    finally:
        tracemalloc.stop()
    assert len(cache) == 2000
    assert per_entry < 1000, per_entry


# Client ids as ids.new_client_id makes them: the lookup refuses any other shape.
MISS_1, MISS_2, HIT = "1" * 32, "2" * 32, "3" * 32


async def test_hits_travel_with_the_misses_and_alone_send_no_query(monkeypatch):
    """A hit is answered with the lookup batch it joins, so hits and misses go on to the
    Redis and audit batches together; a batch of hits alone queries nothing."""
    from types import SimpleNamespace

    queries: list[list[str]] = []
    gates: list[asyncio.Event] = []

    async def lookup(db: Any, client_ids: list[str]) -> dict[str, Any]:
        queries.append(client_ids)
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return {c: _record(agent_id=f"agent-{c}") for c in client_ids}

    monkeypatch.setattr(agents, "get_clients_for_secret", lookup)
    settings = SimpleNamespace(CLIENT_CACHE_TTL=60, CLIENT_CACHE_SIZE=10)
    clients = ClientLookup(SimpleNamespace(settings=settings, db=None))  # type: ignore[arg-type]
    clients.cache.set_live(True)
    clients.cache.put(HIT, _record(agent_id="agent-hit"), clients.cache.generation)

    first = asyncio.create_task(clients.for_secret(MISS_1))
    await asyncio.sleep(0)  # its batch is in flight
    hit = asyncio.create_task(clients.for_secret(HIT))
    second = asyncio.create_task(clients.for_secret(MISS_2))
    await asyncio.sleep(0.01)
    assert not hit.done()  # waits for the batch in flight, then joins the next
    gates[0].set()
    await first
    await asyncio.sleep(0.01)
    assert queries == [[MISS_1], [MISS_2]]  # the hit is not queried
    assert not hit.done()  # answered with the misses of its batch
    gates[1].set()
    (agent, _, _), cached = await hit
    assert cached
    assert agent["agent_id"] == "agent-hit"
    assert (await second)[1] is False

    alone = await asyncio.wait_for(clients.for_secret(HIT), 1.0)
    assert alone[1] is True
    assert queries == [[MISS_1], [MISS_2]]
