"""Outages seen through a fault proxy (issue 25): a PostgreSQL blackhole, a stalled or
cut Redis. The servers are never touched; tests/faultproxy.py stands between."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentidp_server.app import create_app
from agentidp_server.storage import StorageUnavailable, open_database
from agentidp_server.testing import Services
from tests.faultproxy import FaultProxy
from tests.test_health import _add_storage_routes, _ready, _require, _settings


@pytest.fixture
async def pg_proxy(agentidp_services: Services) -> AsyncIterator[FaultProxy]:
    _require(agentidp_services)
    async with FaultProxy.for_url(agentidp_services.database_url) as proxy:
        yield proxy


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
