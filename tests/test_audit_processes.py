"""The audit chain under several real server processes sharing PostgreSQL and Redis.

Slow: each test starts real `agentidp serve` processes on free ports on 127.0.0.1
against a database of its own (created and dropped here) and its own Redis key
prefix, creates an organisation with `agentidp orgs create`, and then hammers
POST /api/v1/token.

* Four processes, one organisation, for AGENTIDP_AUDIT_SOAK_SECONDS (default 8,
  the CI scale; set it to 30 for the full soak the issue asks for): every 200
  has exactly one `token.issued` event, the chain verifies, `seq` has no gap and
  the head points at the last event.
* SIGKILL of a whole server (master and workers) under load: every token whose
  response arrived has its committed `token.issued` event, and the chain
  verifies from a fresh connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from agentidp_server.audit.log import verify_chain
from agentidp_server.storage.db import Database, open_database
from agentidp_server.testing import DEFAULT_PG, services_required
from tests import test_lifecycle as lifecycle

pytestmark = pytest.mark.slow

AGENTIDP = lifecycle.AGENTIDP
free_port = lifecycle.free_port
SOAK_SECONDS = float(os.environ.get("AGENTIDP_AUDIT_SOAK_SECONDS", "8"))
CONCURRENCY = 16
REQUEST_TIMEOUT = 30.0
KILL_AFTER = 2.0
UNLIMITED = str(10**9)


def jwt_payload(token: str) -> dict[str, Any]:
    """The claims of a JWT, not verified (the test only needs its `jti`)."""
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


class Server(lifecycle.Server):
    """A lifecycle server in its own process group, killable as a whole."""

    def __init__(self, tmp_path: Path, env: dict[str, str], workers: int) -> None:
        super().__init__(tmp_path, workers, env, new_session=True)

    def kill_group(self) -> None:
        """SIGKILL the master and every worker at once: no drain, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=40)
        # Whatever is left of the group (the master gone, a worker stuck) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self._log.close()


class Stack:
    """A database and Redis prefix of one test, and the servers sharing them."""

    def __init__(self, tmp_path: Path, database_url: str, redis_url: str, prefix: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.redis_url = redis_url
        self.prefix = prefix
        # One issuer for every process: a token one process minted is valid at the others.
        self.issuer = f"http://127.0.0.1:{free_port()}"
        self.servers: list[Server] = []

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
            and k not in ("DATABASE_URL", "REDIS_URL", "PORT", "HOST", "WORKERS")
        }
        env.update(
            PYTHONUNBUFFERED="1",
            AGENTIDP_ENV="development",
            AGENTIDP_DATA_DIR=str(self.tmp_path),
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            AGENTIDP_REDIS_KEY_PREFIX=self.prefix,
            AGENTIDP_ISSUER=self.issuer,
            AGENTIDP_ACCESS_LOG="false",
            AGENTIDP_RATE_LIMIT_MAX=UNLIMITED,
            AGENTIDP_TIER_FREE_DAILY_CALLS=UNLIMITED,
            AGENTIDP_TIER_FREE_DAILY_TOKENS=UNLIMITED,
            # Each worker's pool: enough for its share of the concurrent requests.
            AGENTIDP_DB_POOL_MAX_SIZE="20",
        )
        return env

    def start(self, workers: int = 1) -> Server:
        server = Server(self.tmp_path, self.env(), workers)
        self.servers.append(server)
        return server

    def create_org(self, name: str) -> dict[str, Any]:
        result = subprocess.run(
            [str(AGENTIDP), "orgs", "create", name, "--tier", "enterprise"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp_path,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        org: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return org

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _admin_url(database: str | None = None) -> str:
    url = os.environ.get("AGENTIDP_TEST_DATABASE_URL", DEFAULT_PG)
    if database is None:
        return url
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _create_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_url(), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_url(), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_keys(redis_url: str, prefix: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def stack(agentidp_services: Any, tmp_path: Path) -> Iterator[Stack]:
    if agentidp_services.error:
        if services_required():
            pytest.fail(agentidp_services.error)
        pytest.skip(agentidp_services.error)
    # A database of this test's own: the servers migrate it, nothing else touches it.
    database = f"agentidp_audit_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    prefix = f"agentidp-audit-processes:{uuid.uuid4().hex[:12]}:"
    asyncio.run(_create_database(database))
    stack = Stack(tmp_path, _admin_url(database), agentidp_services.redis_url, prefix)
    try:
        yield stack
    finally:
        stack.close()
        asyncio.run(_drop_database(database))
        asyncio.run(_delete_keys(agentidp_services.redis_url, prefix))


@pytest.fixture
async def fresh_db(stack: Stack) -> AsyncIterator[Any]:
    """A connection pool of the test's own, opened only when asked for (after the load)."""
    pools: list[Database] = []

    async def open_() -> Database:
        db = await open_database(stack.database_url, min_size=1, max_size=2)
        pools.append(db)
        return db

    yield open_
    for db in pools:
        await db.close()


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def _register_agent(url: str, org: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An agent with a client secret, through the management API as its operator would."""
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        response = await client.post(
            "/api/v1/token",
            data={"grant_type": "client_credentials"},
            headers=_basic(org["client_id"], org["client_secret"]),
        )
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
        response = await client.post(
            "/api/v1/agents",
            json={"name": "soak", "deployment_env": "production", "scopes": ["read", "write"]},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        agent: dict[str, Any] = response.json()
        response = await client.post(
            f"/api/v1/agents/{agent['agent_id']}/credentials",
            json={"type": "client_secret"},
            headers=headers,
        )
        assert response.status_code == 201, response.text
        credential: dict[str, Any] = response.json()
    return agent, credential


class Load:
    """Concurrent token requests; what came back."""

    def __init__(self) -> None:
        self.jtis: list[str] = []
        self.per_url: dict[str, int] = {}
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}

    def ok(self, url: str, token: str) -> None:
        self.jtis.append(jwt_payload(token)["jti"])
        self.per_url[url] = self.per_url.get(url, 0) + 1


async def _hammer(
    urls: list[str],
    credential: dict[str, Any],
    *,
    seconds: float,
    stop: asyncio.Event | None = None,
) -> Load:
    """CONCURRENCY requesters, round-robin over `urls`, until `seconds` pass or `stop`."""
    load = Load()
    headers = _basic(credential["client_id"], credential["client_secret"])
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)
    stopped = stop or asyncio.Event()

    async def requester(client: httpx.AsyncClient, index: int) -> None:
        n = index
        while time.monotonic() < deadline and not stopped.is_set():
            url = urls[n % len(urls)]
            n += 1
            try:
                response = await client.post(
                    f"{url}/api/v1/token", data={"grant_type": "client_credentials"}
                )
            except httpx.TransportError as error:
                name = type(error).__name__
                load.errors[name] = load.errors.get(name, 0) + 1
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(0.05)
                continue
            load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                load.ok(url, response.json()["access_token"])

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT, limits=limits, headers=headers) as client:
        await asyncio.wait_for(
            asyncio.gather(*(requester(client, i) for i in range(CONCURRENCY))),
            timeout=seconds + REQUEST_TIMEOUT + 10,
        )
    return load


async def _check_chain(db: Database, org_id: str, agent_id: str, jtis: list[str]) -> list[str]:
    """The chain is intact, gapless, its head at the end; return the agent's issued jtis."""
    report = await verify_chain(db, org_id)
    assert report.intact, report.as_dict()
    rows = await db.fetch("SELECT seq FROM audit_events WHERE org_id = $1 ORDER BY seq", org_id)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap in seq"
    assert report.events == len(seqs)
    head = await db.fetchrow("SELECT seq, hash FROM audit_heads WHERE org_id = $1", org_id)
    assert head is not None
    assert head["seq"] == seqs[-1]
    last = await db.fetchval(
        "SELECT hash FROM audit_events WHERE org_id = $1 AND seq = $2", org_id, seqs[-1]
    )
    assert head["hash"] == last
    rows = await db.fetch(
        "SELECT target_id FROM audit_events WHERE org_id = $1 AND action = 'token.issued' "
        "AND actor_agent_id = $2",
        org_id,
        agent_id,
    )
    issued = [r["target_id"] for r in rows]
    assert len(issued) == len(set(issued)), "one jti recorded twice"
    assert len(jtis) == len(set(jtis)), "one jti issued twice"
    return issued


async def test_four_processes_issue_tokens_for_one_org_on_one_intact_chain(stack, fresh_db):
    first = stack.start()
    await asyncio.to_thread(first.wait_until_listening)  # it migrates the database
    others = [stack.start() for _ in range(3)]
    for server in others:
        await asyncio.to_thread(server.wait_until_listening)
    org = await asyncio.to_thread(stack.create_org, "Soak")
    agent, credential = await _register_agent(first.url, org)
    urls = [s.url for s in stack.servers]

    started = time.monotonic()
    load = await _hammer(urls, credential, seconds=SOAK_SECONDS)
    elapsed = time.monotonic() - started
    print(
        f"\n{len(load.jtis)} tokens in {elapsed:.1f} s over {len(urls)} processes "
        f"({len(load.jtis) / elapsed:.0f}/s); per process {sorted(load.per_url.values())}; "
        f"statuses {load.statuses}; transport errors {load.errors}"
    )
    assert load.statuses.get(200, 0) == len(load.jtis) > 0
    assert set(load.statuses) == {200}, load.statuses
    assert not load.errors, load.errors
    # Every process served its share (the chain really was contended across processes).
    assert len(load.per_url) == len(urls), load.per_url
    assert min(load.per_url.values()) > 0, load.per_url

    db = await fresh_db()
    issued = await _check_chain(db, org["org_id"], agent["agent_id"], load.jtis)
    assert len(issued) == len(load.jtis)
    assert set(issued) == set(load.jtis)
    for server in stack.servers:
        assert "Traceback" not in server.output(), server.output()


async def test_sigkill_under_load_loses_no_event_of_a_delivered_token(stack, fresh_db):
    server = stack.start(workers=2)
    await asyncio.to_thread(server.wait_until_listening)
    org = await asyncio.to_thread(stack.create_org, "Killed")
    agent, credential = await _register_agent(server.url, org)

    stop = asyncio.Event()

    async def kill_later() -> float:
        await asyncio.sleep(KILL_AFTER)
        at = time.monotonic()
        await asyncio.to_thread(server.kill_group)
        stop.set()
        return at

    started = time.monotonic()
    killer = asyncio.create_task(kill_later())
    load = await _hammer([server.url], credential, seconds=KILL_AFTER + 10, stop=stop)
    killed_at = await killer
    print(
        f"\n{len(load.jtis)} tokens delivered in {killed_at - started:.1f} s before SIGKILL; "
        f"statuses {load.statuses}; transport errors {load.errors}"
    )
    assert server.process.returncode == -signal.SIGKILL
    assert len(load.jtis) > 0
    assert set(load.statuses) == {200}, load.statuses

    db = await fresh_db()
    issued = await _check_chain(db, org["org_id"], agent["agent_id"], load.jtis)
    missing = set(load.jtis) - set(issued)
    assert not missing, f"{len(missing)} delivered tokens have no token.issued event"
    # Events of tokens minted but never delivered (in flight at the kill) are allowed.
    assert len(issued) >= len(load.jtis)
