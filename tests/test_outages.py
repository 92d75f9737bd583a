"""Outages seen through a fault proxy (issue 25): a PostgreSQL blackhole, a stalled or
cut Redis. The servers are never touched; tests/faultproxy.py stands between."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentidp_server.app import create_app
from agentidp_server.oauth.rfc9068 import SYNC_MARKER, access_token_claims
from agentidp_server.settings import load_settings
from agentidp_server.storage import StorageUnavailable, open_database
from agentidp_server.storage import errors as storage_errors
from agentidp_server.storage.redis_kv import BREAKER_FAILURES
from agentidp_server.testing import Services
from agentidp_server.testkit import basic, make_org, token
from tests.faultproxy import FaultProxy
from tests.test_health import _add_storage_routes, _ready, _require, _settings

INTROSPECT = "/api/v1/token/introspect"
REVOKE = "/api/v1/token/revoke"


# --- PostgreSQL blackhole ----------------------------------------------------------


async def test_ready_answers_within_its_check_timeout_during_db_blackhole(
    tmp_path: Any, agentidp_services: Services, pg_proxy: FaultProxy
) -> None:
    """The check is cancelled at HEALTH_CHECK_TIMEOUT; before the fix the cancelled
    query's release waited up to DB_ACQUIRE_TIMEOUT more for asyncpg's cancel request."""
    settings = _settings(
        tmp_path,
        DATABASE_URL=pg_proxy.url(agentidp_services.database_url),
        REDIS_URL=agentidp_services.redis_url,
        HEALTH_CHECK_TIMEOUT=1.0,
        DB_ACQUIRE_TIMEOUT=4.0,
        DB_STATEMENT_TIMEOUT=4.0,
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        status, body, _ = await _ready(client)
        assert status == 200, body
        await pg_proxy.stall()
        for _ in range(2):
            status, body, elapsed = await _ready(client)
            assert status == 503, body
            assert body["failing"] == ["database"]
            # a bound, not a tight timing: far under the 5 s the old code took
            assert elapsed < 2 * 1.0, elapsed
        await pg_proxy.down()


async def test_release_timeout_in_db_blackhole_is_storage_unavailable(
    agentidp_services: Services, pg_proxy: FaultProxy
) -> None:
    """A query cut off mid-flight: asyncpg's release timed out on its cancel request
    and raised a bare TimeoutError, which the API answered 500 (issue 25 item 5)."""
    db = await open_database(
        pg_proxy.url(agentidp_services.database_url),
        min_size=1,
        max_size=2,
        acquire_timeout=0.5,
        statement_timeout=0.5,
    )
    try:
        assert await db.fetchval("SELECT 1") == 1
        await pg_proxy.stall()
        for _ in range(2):
            with pytest.raises(StorageUnavailable):
                await db.fetchval("SELECT 1")
            with pytest.raises(StorageUnavailable):
                async with db.transaction() as conn:
                    await conn.fetchval("SELECT 1")
        await pg_proxy.down()
        await pg_proxy.up()
        deadline = time.monotonic() + 5
        while True:  # the pool replaces the dropped connections
            try:
                assert await db.fetchval("SELECT 2") == 2
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        await pg_proxy.down()
        await db.close()


async def test_request_during_db_blackhole_is_503_in_the_api_shape(
    tmp_path: Any, agentidp_services: Services, pg_proxy: FaultProxy
) -> None:
    settings = _settings(
        tmp_path,
        DATABASE_URL=pg_proxy.url(agentidp_services.database_url),
        REDIS_URL=agentidp_services.redis_url,
        DB_ACQUIRE_TIMEOUT=0.5,
        DB_STATEMENT_TIMEOUT=0.5,
    )
    app = create_app(settings)
    _add_storage_routes(app)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/_test/db")).status_code == 200
        await pg_proxy.stall()
        responses = await asyncio.gather(
            *(client.get("/_test/db", headers={"X-Request-Id": f"bh-{i}"}) for i in range(6))
        )
        for i, response in enumerate(responses):
            body = await response.get_json()
            assert response.status_code == 503, body
            assert body["code"] == "SERVICE_UNAVAILABLE"
            assert body["request_id"] == f"bh-{i}"
        await pg_proxy.down()


# --- Redis cut: a revocation made during the outage holds ----------------------------


@pytest.fixture
async def kv_proxied(
    agentidp_storage: dict[str, Any],
    agentidp_services: Services,
    redis_proxy: FaultProxy,
    tmp_path: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """The app on either database backend, with real Redis behind the proxy."""
    overrides = {
        "DATA_DIR": str(tmp_path),
        "ACCESS_LOG": False,
        "REDIS_KEY_PREFIX": f"agentidp-test:{uuid.uuid4().hex[:12]}:",
        **{k: v for k, v in agentidp_storage.items() if k == "DATABASE_URL"},
        "REDIS_URL": redis_proxy.url(agentidp_services.redis_url),
        "REDIS_TIMEOUT": 1.0,
    }
    app = create_app(load_settings(env="test", overrides=overrides, environ={}))
    async with app.test_app() as test_app:
        yield test_app.test_client(), test_app.app.extensions["agentidp"]


async def test_revocation_during_redis_outage_holds_after_it(
    kv_proxied: tuple[Any, Any], redis_proxy: FaultProxy, agentidp_backend: str
) -> None:
    client, idp = kv_proxied
    org = await make_org(idp)
    cid, secret = org["client_id"], org["client_secret"]
    access = (await token(client, cid, secret))["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}

    async def introspect() -> dict[str, Any]:
        response = await client.post(INTROSPECT, form={"token": access}, headers=basic(cid, secret))
        body: dict[str, Any] = await response.get_json()
        assert response.status_code == 200, body
        return body

    # Redis has been in use: the sync marker is set and the kv is trusted.
    assert (await introspect())["active"] is True
    assert (await client.get("/api/v1/agents", headers=bearer)).status_code == 200
    await idp.tokens.resync()
    assert await idp.kv.exists(SYNC_MARKER)

    await redis_proxy.down()
    response = await client.post(REVOKE, form={"token": access}, headers=basic(cid, secret))
    assert response.status_code == 200
    assert await introspect() == {"active": False}
    await redis_proxy.up()

    deadline = time.monotonic() + 5
    while True:  # until Redis answers again
        try:
            await idp.kv.ping()
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    for _ in range(3):
        assert await introspect() == {"active": False}
        response = await client.get("/api/v1/agents", headers=bearer)
        body = await response.get_json()
        assert response.status_code == 401, body
        assert body["code"] == "UNAUTHORIZED"
        assert "revoked" in body["message"]
    # The process that missed the kv write refills the runbook's copy by itself.
    jti = access_token_claims(access)["jti"]
    deadline = time.monotonic() + 10
    while not await idp.kv.exists(f"revoked:{jti}"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


# --- Redis stalled: the circuit breaker -----------------------------------------------


def _fail_open(idp: Any) -> float:
    return float(idp.registry.get_sample_value("agentidp_rate_limit_fail_open_total", {}) or 0)


async def test_stalled_redis_opens_the_breaker_then_recovers(
    kv_proxied: tuple[Any, Any],
    redis_proxy: FaultProxy,
    agentidp_backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, idp = kv_proxied
    org = await make_org(idp)
    cid, secret = org["client_id"], org["client_secret"]
    response = await client.post(
        "/api/v1/token", form={"grant_type": "client_credentials"}, headers=basic(cid, secret)
    )
    assert "X-RateLimit-Remaining" in response.headers  # counted in Redis

    logger = logging.getLogger("agentidp")
    logger.addHandler(caplog.handler)  # configure_logging stops propagation to root
    storage_errors._last_outage_log.clear()
    try:
        await redis_proxy.stall()
        # Each of the first requests waits out REDIS_TIMEOUT (1 s) until the breaker opens.
        for _ in range(BREAKER_FAILURES):
            await token(client, cid, secret)
        assert idp.kv.breaker.is_open
        before = _fail_open(idp)
        burst = 10
        started = time.monotonic()
        for _ in range(burst):
            issued = await token(client, cid, secret)  # rate limits fail open
        elapsed = time.monotonic() - started
        # A bound, not a timing: without the breaker each request waits >= 1 timeout.
        assert elapsed < burst * 1.0 / 2, elapsed
        assert _fail_open(idp) - before >= burst
        revoke = await client.post(
            REVOKE, form={"token": issued["access_token"]}, headers=basic(cid, secret)
        )
        assert revoke.status_code == 200  # held by the database, whatever the kv
        introspected = await client.post(
            INTROSPECT, form={"token": issued["access_token"]}, headers=basic(cid, secret)
        )
        assert await introspected.get_json() == {"active": False}
        outage = [r for r in caplog.records if r.getMessage().startswith("Redis client error")]
        assert len(outage) == 1, [r.getMessage() for r in caplog.records]

        await redis_proxy.up()
        deadline = time.monotonic() + 10
        while True:  # the half-open probe finds Redis again after the cooldown
            response = await client.post(
                "/api/v1/token",
                form={"grant_type": "client_credentials"},
                headers=basic(cid, secret),
            )
            assert response.status_code == 200
            if "X-RateLimit-Remaining" in response.headers:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert not idp.kv.breaker.is_open
    finally:
        logger.removeHandler(caplog.handler)


async def test_revocation_one_process_could_not_copy_to_redis_holds_in_another(
    agentidp_storage: dict[str, Any],
    agentidp_services: Services,
    redis_proxy: FaultProxy,
    tmp_path: Any,
) -> None:
    """Process A revokes while Redis is unreachable from A only; process B, which
    never lost Redis, must refuse the token too (no shared marker can tell it)."""
    _require(agentidp_services)
    base = {
        "DATA_DIR": str(tmp_path),
        "ACCESS_LOG": False,
        "REDIS_KEY_PREFIX": f"agentidp-test:{uuid.uuid4().hex[:12]}:",
        "DATABASE_URL": agentidp_storage["DATABASE_URL"],
        "REDIS_TIMEOUT": 1.0,
    }
    app_a = create_app(
        load_settings(
            env="test",
            overrides={**base, "REDIS_URL": redis_proxy.url(agentidp_services.redis_url)},
            environ={},
        )
    )
    app_b = create_app(
        load_settings(
            env="test", overrides={**base, "REDIS_URL": agentidp_services.redis_url}, environ={}
        )
    )
    async with app_a.test_app() as test_a, app_b.test_app() as test_b:
        a, b = test_a.test_client(), test_b.test_client()
        idp_b = test_b.app.extensions["agentidp"]
        org = await make_org(idp_b)
        cid, secret = org["client_id"], org["client_secret"]
        access = (await token(b, cid, secret))["access_token"]
        await idp_b.tokens.resync()  # B's Redis holds a complete copy and the marker

        await redis_proxy.down()
        response = await a.post(REVOKE, form={"token": access}, headers=basic(cid, secret))
        assert response.status_code == 200

        introspected = await b.post(INTROSPECT, form={"token": access}, headers=basic(cid, secret))
        assert await introspected.get_json() == {"active": False}
        response = await b.get("/api/v1/agents", headers={"Authorization": f"Bearer {access}"})
        assert response.status_code == 401, await response.get_json()
