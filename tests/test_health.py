"""Liveness, readiness, and what the app does while PostgreSQL or Redis is away.

The outage is made by a TCP proxy between the app and the real (shared) servers
(tests/faultproxy.py): the servers themselves are never touched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from quart import jsonify

from agentidp_server.app import create_app
from agentidp_server.idp import current_idp
from agentidp_server.settings import load_settings
from agentidp_server.testing import Services, services_required
from tests.faultproxy import FaultProxy

HEALTH_CHECK_TIMEOUT = 1.0
# Readiness must answer within its check timeout plus this (scheduling, JSON, test client).
MARGIN = 1.5
RECOVERY = 5.0


def _require(services: Services) -> None:
    if services.error:
        if services_required():
            pytest.fail(services.error)
        pytest.skip(services.error)


async def _ready(client: Any) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = await client.get("/health/ready")
    elapsed = time.monotonic() - started
    return response.status_code, await response.get_json(), elapsed


async def _wait_ready(client: Any, within: float = RECOVERY) -> tuple[int, dict[str, Any]]:
    """Poll /health/ready until it is 200 or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        status, body, _ = await _ready(client)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.1)


def _add_storage_routes(app: Any) -> None:
    """Routes that need each store, since the kernel has none of its own yet."""

    @app.get("/_test/db")
    async def needs_db() -> Any:
        return jsonify(value=await current_idp().db.fetchval("SELECT 1"))

    @app.get("/_test/kv")
    async def needs_kv() -> Any:
        return jsonify(value=await current_idp().kv.get("faulttest"))


def _settings(tmp_path: Any, **overrides: Any) -> Any:
    base = {
        "DATA_DIR": str(tmp_path),
        "HEALTH_CHECK_TIMEOUT": HEALTH_CHECK_TIMEOUT,
        "DB_ACQUIRE_TIMEOUT": 1.0,
        "DB_STATEMENT_TIMEOUT": 1.0,
        "REDIS_TIMEOUT": 1.0,
        "REDIS_KEY_PREFIX": f"agentidp-test:{uuid.uuid4().hex[:12]}:",
    }
    return load_settings(env="test", overrides={**base, **overrides}, environ={})


@pytest.fixture
async def embedded_client(tmp_path: Any) -> AsyncIterator[Any]:
    settings = _settings(
        tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/agentidp.db", REDIS_URL="memory://"
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
async def db_through_proxy(
    tmp_path: Any, agentidp_services: Services, pg_proxy: FaultProxy
) -> AsyncIterator[Any]:
    """The app on real PostgreSQL (through the proxy) and real Redis."""
    settings = _settings(
        tmp_path,
        DATABASE_URL=pg_proxy.url(agentidp_services.database_url),
        REDIS_URL=agentidp_services.redis_url,
    )
    app = create_app(settings)
    _add_storage_routes(app)
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.fixture
async def kv_through_proxy(
    tmp_path: Any, agentidp_services: Services, redis_proxy: FaultProxy
) -> AsyncIterator[Any]:
    """The app on real PostgreSQL and real Redis (through the proxy)."""
    settings = _settings(
        tmp_path,
        DATABASE_URL=agentidp_services.database_url,
        REDIS_URL=redis_proxy.url(agentidp_services.redis_url),
    )
    app = create_app(settings)
    _add_storage_routes(app)
    async with app.test_app() as test_app:
        yield test_app.test_client()


# --- liveness and readiness on both backends ---------------------------------------


async def test_health_is_ok(embedded_client: Any) -> None:
    response = await embedded_client.get("/health")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}
    assert response.headers["Content-Type"].startswith("application/json")


async def test_ready_on_both_backends(agentidp_client: Any, agentidp_backend: str) -> None:
    response = await agentidp_client.get("/health/ready")
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body == {"status": "ok", "checks": {"database": "ok", "kv": "ok"}}


async def test_liveness_does_not_touch_storage(db_through_proxy: Any, pg_proxy: FaultProxy) -> None:
    await pg_proxy.down()
    response = await db_through_proxy.get("/health")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


# --- PostgreSQL away ---------------------------------------------------------------


async def test_database_down_then_up(db_through_proxy: Any, pg_proxy: FaultProxy) -> None:
    client = db_through_proxy
    status, body, _ = await _ready(client)
    assert status == 200, body

    await pg_proxy.down()
    status, body, elapsed = await _ready(client)
    assert status == 503, body
    assert body["status"] == "unavailable"
    assert body["failing"] == ["database"]
    assert body["checks"] == {"database": "failing", "kv": "ok"}
    assert "database" in body["message"]
    assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed
    # still failing on a second look (no stale cached answer)
    status, body, elapsed = await _ready(client)
    assert status == 503
    assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed

    await pg_proxy.up()
    started = time.monotonic()
    status, body = await _wait_ready(client)
    assert status == 200, body
    assert body["checks"] == {"database": "ok", "kv": "ok"}
    assert time.monotonic() - started < RECOVERY


async def test_request_needing_database_gets_503_while_down(
    db_through_proxy: Any, pg_proxy: FaultProxy
) -> None:
    client = db_through_proxy
    ok = await client.get("/_test/db")
    assert ok.status_code == 200
    assert await ok.get_json() == {"value": 1}

    await pg_proxy.down()
    started = time.monotonic()
    response = await client.get("/_test/db", headers={"X-Request-Id": "db-down-1"})
    elapsed = time.monotonic() - started
    body = await response.get_json()
    assert response.status_code == 503, body
    assert response.headers["Retry-After"].isdigit()
    assert int(response.headers["Retry-After"]) > 0
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert body["request_id"] == "db-down-1"
    assert "database" in body["message"]
    assert elapsed < 5, elapsed

    await pg_proxy.up()
    deadline = time.monotonic() + RECOVERY
    while (response := await client.get("/_test/db")).status_code != 200:
        assert time.monotonic() < deadline, await response.get_json()
        await asyncio.sleep(0.1)


async def test_database_hang_is_bounded(db_through_proxy: Any, pg_proxy: FaultProxy) -> None:
    """A database that accepts connections but never answers: checks and requests time out."""
    client = db_through_proxy
    await pg_proxy.stall()
    status, body, elapsed = await _ready(client)
    assert status == 503, body
    assert body["failing"] == ["database"]
    assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed

    started = time.monotonic()
    response = await client.get("/_test/db")
    elapsed = time.monotonic() - started
    assert response.status_code == 503, await response.get_json()
    assert "Retry-After" in response.headers
    # DB_ACQUIRE_TIMEOUT / DB_STATEMENT_TIMEOUT are 1 s here
    assert elapsed < 1.0 + 1.0 + MARGIN, elapsed

    await pg_proxy.down()  # the stalled connections are dropped
    await pg_proxy.up()
    status, body = await _wait_ready(client)
    assert status == 200, body


# --- Redis away ----------------------------------------------------------------------


async def test_kv_down_then_up(kv_through_proxy: Any, redis_proxy: FaultProxy) -> None:
    client = kv_through_proxy
    status, body, _ = await _ready(client)
    assert status == 200, body

    await redis_proxy.down()
    status, body, elapsed = await _ready(client)
    assert status == 503, body
    assert body["failing"] == ["kv"]
    assert body["checks"] == {"database": "ok", "kv": "failing"}
    assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed

    await redis_proxy.up()
    started = time.monotonic()
    status, body = await _wait_ready(client)
    assert status == 200, body
    assert time.monotonic() - started < RECOVERY


async def test_request_needing_kv_gets_503_while_down(
    kv_through_proxy: Any, redis_proxy: FaultProxy
) -> None:
    client = kv_through_proxy
    ok = await client.get("/_test/kv")
    assert ok.status_code == 200
    assert await ok.get_json() == {"value": None}

    await redis_proxy.down()
    started = time.monotonic()
    response = await client.get("/_test/kv")
    elapsed = time.monotonic() - started
    body = await response.get_json()
    assert response.status_code == 503, body
    assert int(response.headers["Retry-After"]) > 0
    assert body["code"] == "SERVICE_UNAVAILABLE"
    assert "kv" in body["message"]
    assert elapsed < 5, elapsed

    await redis_proxy.up()
    deadline = time.monotonic() + RECOVERY
    while (response := await client.get("/_test/kv")).status_code != 200:
        assert time.monotonic() < deadline, await response.get_json()
        await asyncio.sleep(0.1)


async def test_kv_hang_is_bounded(kv_through_proxy: Any, redis_proxy: FaultProxy) -> None:
    client = kv_through_proxy
    await redis_proxy.stall()
    status, body, elapsed = await _ready(client)
    assert status == 503, body
    assert body["failing"] == ["kv"]
    assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed

    started = time.monotonic()
    response = await client.get("/_test/kv")
    elapsed = time.monotonic() - started
    assert response.status_code == 503, await response.get_json()
    assert elapsed < 1.0 + MARGIN + 1.0, elapsed  # REDIS_TIMEOUT is 1 s here

    await redis_proxy.down()
    await redis_proxy.up()
    status, body = await _wait_ready(client)
    assert status == 200, body


async def test_both_down_names_both(
    tmp_path: Any,
    agentidp_services: Services,
    pg_proxy: FaultProxy,
    redis_proxy: FaultProxy,
) -> None:
    settings = _settings(
        tmp_path,
        DATABASE_URL=pg_proxy.url(agentidp_services.database_url),
        REDIS_URL=redis_proxy.url(agentidp_services.redis_url),
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        await pg_proxy.down()
        await redis_proxy.down()
        status, body, elapsed = await _ready(client)
        assert status == 503, body
        assert body["failing"] == ["database", "kv"]
        # the checks run concurrently: one timeout, not the sum
        assert elapsed < HEALTH_CHECK_TIMEOUT + MARGIN, elapsed
        await pg_proxy.up()
        await redis_proxy.up()
        status, body = await _wait_ready(client)
        assert status == 200, body


async def test_outage_logs_the_runbook_line_once(caplog):
    import logging

    from agentidp_server.storage import errors as storage_errors
    from agentidp_server.storage.errors import StorageUnavailable

    storage_errors._last_outage_log.clear()
    logger = logging.getLogger("agentidp")
    logger.addHandler(caplog.handler)  # configure_logging stops propagation to root
    try:
        for _ in range(5):
            storage_errors.log_outage(StorageUnavailable("database", "ConnectionRefusedError"))
            storage_errors.log_outage(StorageUnavailable("kv", "ConnectionError"))
    finally:
        logger.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Unexpected pg pool error database unavailable: ConnectionRefusedError",
        "Redis client error kv unavailable: ConnectionError",
    ]
