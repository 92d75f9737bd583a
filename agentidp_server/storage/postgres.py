"""PostgreSQL adapter (asyncpg), with bounded acquire and statement timeouts."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from agentidp_server.storage.db import QueryObserver, Row, operation_of
from agentidp_server.storage.errors import Conflict, StorageUnavailable

# Errors that mean "the database is not answering", not "your SQL is wrong".
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_CONFLICT = (asyncpg.exceptions.IntegrityConstraintViolationError,)


def _translate(error: BaseException) -> Exception:
    if isinstance(error, _CONFLICT):
        return Conflict(str(error))
    if isinstance(error, asyncio.TimeoutError):
        return StorageUnavailable("database", "timed out")
    return StorageUnavailable("database", type(error).__name__)


# String literals and quoted identifiers (kept), or comments (dropped).
_COMMENT = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")|--[^\n]*|/\*.*?\*/""", re.DOTALL)


def _has_statements(script: str) -> bool:
    code = _COMMENT.sub(lambda m: m.group(1) or " ", script)
    return bool(code.strip(" \t\r\n;"))


def _rows_affected(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _drop(conn: Any) -> None:
    """Terminate a pooled connection; asyncpg has already detached one it saw die."""
    with suppress(asyncpg.exceptions.InterfaceError):
        conn.terminate()


class PostgresConnection:
    dialect = "postgresql"

    def __init__(self, conn: Any, observer: QueryObserver | None) -> None:
        self._conn = conn
        self._observer = observer

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        try:
            return await getattr(self._conn, method)(sql, *args)
        except (*_UNAVAILABLE, *_CONFLICT) as error:
            raise _translate(error) from error
        finally:
            if self._observer is not None:
                self._observer(operation_of(sql), time.perf_counter() - started)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._run("fetch", sql, args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._run("fetchrow", sql, args)
        return dict(row) if row is not None else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._run("fetchval", sql, args)

    async def execute(self, sql: str, *args: Any) -> int:
        return _rows_affected(await self._run("execute", sql, args))

    async def execute_script(self, sql: str) -> None:
        # asyncpg fails on a script without statements (an empty query has no
        # status): a comments-only migration is a no-op, as on SQLite.
        if not _has_statements(sql):
            return
        # asyncpg runs a multi-statement script when given no arguments.
        await self._run("execute", sql, ())


class _NoResetConnection(asyncpg.Connection):  # type: ignore[misc]
    """Skips asyncpg's reset query on every release to the pool (a round trip per
    acquire). We leave no session state to reset: advisory locks are
    transaction-scoped, and there is no LISTEN, SET or cursor outside a transaction."""

    def get_reset_query(self) -> str:
        return ""


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(
        self,
        pool: Any,
        acquire_timeout: float,
        observer: QueryObserver | None,
        description: str,
        url: str,
    ) -> None:
        self._pool = pool
        self._url = url
        self._acquire_timeout = acquire_timeout
        self._observer = observer
        self._waiting = 0
        self.description = description

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int,
        max_size: int,
        acquire_timeout: float,
        statement_timeout: float,
        observer: QueryObserver | None,
    ) -> PostgresDatabase:
        parts = urlsplit(url)
        description = f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"
        try:
            pool = await asyncpg.create_pool(
                url,
                # min_size=0 would defer the first connect to the first request;
                # connecting at start surfaces a wrong URL at once.
                min_size=min_size,
                max_size=max_size,
                timeout=acquire_timeout,
                command_timeout=statement_timeout,
                server_settings={"statement_timeout": str(int(statement_timeout * 1000))},
                connection_class=_NoResetConnection,
            )
        except _UNAVAILABLE as error:
            raise _translate(error) from error
        return cls(pool, acquire_timeout, observer, description, url)

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        self._waiting += 1
        try:
            conn = await self._pool.acquire(timeout=self._acquire_timeout)
        except _UNAVAILABLE as error:
            raise _translate(error) from error
        finally:
            self._waiting -= 1
        try:
            yield conn
        except asyncio.CancelledError:
            # The link may be dead mid-query: asyncpg's release would wait for a cancel
            # request and a reset sent over it (issue 25 item 6); drop the connection.
            _drop(conn)
            raise
        except StorageUnavailable as error:
            if error.component == "database":  # a kv outage says nothing of this link
                _drop(conn)
            raise
        finally:
            await self._release(conn)

    async def _release(self, conn: Any) -> None:
        try:
            await self._pool.release(conn, timeout=self._acquire_timeout)
        except (TimeoutError, *_UNAVAILABLE):
            # The work on it is done; a connection that cannot be reset is only
            # dropped, never a 500 (issue 25 item 5).
            _drop(conn)

    async def _one(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        async with self._acquire() as conn:
            return await getattr(PostgresConnection(conn, self._observer), method)(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        result: list[Row] = await self._one("fetch", sql, args)
        return result

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        result: Row | None = await self._one("fetchrow", sql, args)
        return result

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._one("fetchval", sql, args)

    async def execute(self, sql: str, *args: Any) -> int:
        result: int = await self._one("execute", sql, args)
        return result

    @asynccontextmanager
    async def transaction(
        self, *, exclusive_lock: int | None = None
    ) -> AsyncIterator[PostgresConnection]:
        async with self._acquire() as conn:
            try:
                tx = conn.transaction()
                await tx.start()
            except _UNAVAILABLE as error:
                raise _translate(error) from error
            wrapped = PostgresConnection(conn, self._observer)
            try:
                if exclusive_lock is not None:
                    await wrapped.execute("SELECT pg_advisory_xact_lock($1)", exclusive_lock)
                yield wrapped
            except (asyncio.CancelledError, StorageUnavailable):
                raise  # _acquire drops the connection, which rolls the transaction back
            except BaseException:
                with suppress(*_UNAVAILABLE):
                    await tx.rollback()
                raise
            else:
                try:
                    await tx.commit()
                except (*_UNAVAILABLE, *_CONFLICT) as error:
                    raise _translate(error) from error

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    @asynccontextmanager
    async def listen(
        self, channel: str, on_message: Callable[[str], None], on_lost: Callable[[], None]
    ) -> AsyncIterator[None]:
        """LISTEN on a connection of its own (a pooled one would drop it on release).

        `on_message(payload)` runs for each notification, in commit order;
        `on_lost()` runs as soon as the connection is found dead.
        """
        try:
            conn = await asyncpg.connect(
                self._url,
                timeout=self._acquire_timeout,
                server_settings={"application_name": f"agentidp-listen-{channel}"},
            )
        except _UNAVAILABLE as error:
            raise _translate(error) from error

        def lost(_conn: Any) -> None:
            on_lost()

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_message(payload)

        conn.add_termination_listener(lost)
        try:
            try:
                await conn.add_listener(channel, notified)
            except _UNAVAILABLE as error:
                raise _translate(error) from error
            yield
        finally:
            # Closing on purpose is not a loss to report.
            conn.remove_termination_listener(lost)
            try:
                await asyncio.wait_for(conn.close(), timeout=self._acquire_timeout)
            except (TimeoutError, *_UNAVAILABLE):
                conn.terminate()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), timeout=self._acquire_timeout)
        except (TimeoutError, *_UNAVAILABLE):
            self._pool.terminate()

    def pool_stats(self) -> tuple[int, int]:
        in_use = self._pool.get_size() - self._pool.get_idle_size()
        return in_use, self._waiting
