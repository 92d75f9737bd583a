"""pytest plugin (entry point `pytest11`): fixtures for the kernel's and plugins' tests.

A plugin tests itself against both storage adapters in a few lines::

    async def test_my_route(agentidp_client):
        response = await agentidp_client.get("/my-plugin/hello")
        assert response.status_code == 200

`agentidp_backend` is parametrised over `sqlite` (SQLite + memory kv) and
`postgres` (PostgreSQL + Redis). PostgreSQL and Redis come from
AGENTIDP_TEST_DATABASE_URL / AGENTIDP_TEST_REDIS_URL (defaults: the local
servers). When they cannot be reached the `postgres` cases are skipped, unless
AGENTIDP_TEST_REQUIRE_SERVICES=1 (CI), which makes them fail instead.
Override `agentidp_overrides` to pass settings (e.g. `{"HELLO_ENABLED": True}`).
`agentidp_clock` stops the kernel's clock for a test, which then moves it
(`agentidp_clock.advance(61)`) instead of sleeping through a window or an expiry.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Give subprocesses the session's `pythonpath` entries (test-only plugins such as
    the hello fixture, which is never installed into the venv)."""
    extra = [str(path) for path in config.getini("pythonpath")]
    if extra:
        inherited = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [inherited])])


def services_required() -> bool:
    return os.environ.get("AGENTIDP_TEST_REQUIRE_SERVICES", "") in ("1", "true", "yes")


def _pg_admin_url() -> str:
    return os.environ.get("AGENTIDP_TEST_DATABASE_URL", DEFAULT_PG)


def _redis_url() -> str:
    return os.environ.get("AGENTIDP_TEST_REDIS_URL", DEFAULT_REDIS)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class Services:
    """The PostgreSQL database and Redis this test session owns."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.database = f"agentidp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.database_url = _with_database(_pg_admin_url(), self.database)
        self.redis_url = _redis_url()

    async def start(self) -> None:
        import asyncpg
        import redis.asyncio as redis

        try:
            conn = await asyncpg.connect(_pg_admin_url(), timeout=5)
            try:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await conn.close()
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=5)
            try:
                await client.ping()
            finally:
                await client.aclose()
        except Exception as error:
            self.error = f"PostgreSQL/Redis not reachable: {error!r}"

    async def stop(self) -> None:
        import asyncpg

        if self.error:
            return
        conn = await asyncpg.connect(_pg_admin_url(), timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    async def reset(self, prefix: str) -> None:
        """Empty the session database and this test's Redis keys."""
        import asyncpg
        import redis.asyncio as redis

        conn = await asyncpg.connect(self.database_url, timeout=5)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture(scope="session")
def agentidp_services() -> Iterator[Services]:
    services = Services()
    asyncio.run(services.start())
    yield services
    asyncio.run(services.stop())


@pytest.fixture(params=BACKENDS)
def agentidp_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    """Override in a test module to add settings."""
    return {}


@pytest.fixture
async def agentidp_storage(
    agentidp_backend: str, agentidp_services: Services, tmp_path: Any
) -> AsyncIterator[dict[str, Any]]:
    """Settings overrides that point at the chosen backend, emptied for this test."""
    if agentidp_backend == "sqlite":
        yield {"DATABASE_URL": f"sqlite:///{tmp_path}/agentidp.db", "REDIS_URL": "memory://"}
        return
    if agentidp_services.error:
        if services_required():
            pytest.fail(agentidp_services.error)
        pytest.skip(agentidp_services.error)
    prefix = f"agentidp-test:{uuid.uuid4().hex[:12]}:"
    await agentidp_services.reset(prefix)
    yield {
        "DATABASE_URL": agentidp_services.database_url,
        "REDIS_URL": agentidp_services.redis_url,
        "REDIS_KEY_PREFIX": prefix,
    }
    await agentidp_services.reset(prefix)


@pytest.fixture
async def agentidp_db(agentidp_storage: dict[str, Any]) -> AsyncIterator[Any]:
    """The db port alone (no app) on the chosen backend, emptied for this test."""
    from agentidp_server.storage import open_database

    database = await open_database(
        agentidp_storage["DATABASE_URL"], acquire_timeout=2.0, statement_timeout=5.0
    )
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def agentidp_settings(
    agentidp_storage: dict[str, Any], agentidp_overrides: dict[str, Any], tmp_path: Any
) -> Any:
    from agentidp_server.settings import load_settings

    # Strict in tests: recording an undeclared audit action fails the test.
    overrides = {
        "DATA_DIR": str(tmp_path),
        "AUDIT_STRICT_ACTIONS": True,
        **agentidp_storage,
        **agentidp_overrides,
    }
    return load_settings(env="test", overrides=overrides, environ={})


@pytest.fixture
async def agentidp_app(agentidp_settings: Any) -> AsyncIterator[Any]:
    """The app with `before_serving` run (storage open, migrated)."""
    from agentidp_server.app import create_app

    app = create_app(agentidp_settings)
    async with app.test_app() as test_app:
        yield test_app


@pytest.fixture
def agentidp_client(agentidp_app: Any) -> Any:
    return agentidp_app.test_client()


@pytest.fixture
def agentidp_idp(agentidp_app: Any) -> Any:
    return agentidp_app.app.extensions["agentidp"]


@pytest.fixture
def agentidp_clock() -> Iterator[Any]:
    """A `TestClock` installed as the kernel's clock for the test, standing at the real
    time until the test moves it (`advance`); the system clock is restored after.

    It moves what the app reads (token times, key stages, leases, rate windows), not
    Redis's key expiry, the event loop's timers or a server in another process.
    """
    from agentidp_server.util import clock

    test_clock = clock.TestClock()
    previous = clock.install(test_clock)
    try:
        yield test_clock
    finally:
        clock.install(previous)
