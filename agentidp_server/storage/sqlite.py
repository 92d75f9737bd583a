"""SQLite adapter (aiosqlite): the embedded default for development.

One connection, serialised by a lock, in WAL mode: a second process (the
`agentidp db` CLI) waits on SQLite's busy timeout instead of failing.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiosqlite

from agentidp_server.storage.db import QueryObserver, Row, operation_of
from agentidp_server.storage.errors import Conflict, StorageUnavailable

# `$n` outside string literals, quoted identifiers and comments (group 1 keeps those as is).
_PLACEHOLDER = re.compile(
    r"""('(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/)|\$(\d+)""", re.DOTALL
)


def _sqlite_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(
        lambda m: m.group(1) if m.group(1) is not None else f"?{m.group(2)}", sql
    )


def split_script(script: str) -> list[str]:
    """Split a script into statements; `executescript()` would commit first (PITFALLS.md)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buffer.splitlines()
    ):
        raise ValueError("incomplete SQL statement at the end of the script")
    return statements


class SQLiteConnection:
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, observer: QueryObserver | None) -> None:
        self._conn = conn
        self._observer = observer

    async def _cursor(self, sql: str, args: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        try:
            return await self._conn.execute(_sqlite_sql(sql), args)
        except sqlite3.IntegrityError as error:
            raise Conflict(str(error)) from error
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise StorageUnavailable("database", str(error)) from error
            raise
        finally:
            if self._observer is not None:
                self._observer(operation_of(sql), time.perf_counter() - started)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = await self._cursor(sql, args)
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        cursor = await self._cursor(sql, args)
        row = await cursor.fetchone()
        return row[0] if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._cursor(sql, args)
        # sqlite3 says -1 for statements that change no rows (DDL)
        return max(int(cursor.rowcount), 0) if cursor.rowcount is not None else 0

    async def execute_script(self, sql: str) -> None:
        for statement in split_script(sql):
            await self._cursor(statement, ())


async def _wal(conn: aiosqlite.Connection, timeout: float) -> None:
    """Switch to WAL, retrying while another process holds the lock. Workers opening
    one new file at once race for it, and SQLite can answer "database is locked" to
    the switch without waiting its busy timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


class SQLiteDatabase:
    dialect = "sqlite"

    def __init__(
        self, conn: aiosqlite.Connection, path: str, timeout: float, observer: QueryObserver | None
    ) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._timeout = timeout
        self._observer = observer
        self._waiting = 0
        self.description = f"SQLite at {path}"

    @classmethod
    async def open(
        cls, path: str, *, statement_timeout: float, observer: QueryObserver | None
    ) -> SQLiteDatabase:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=statement_timeout)
        await _wal(conn, statement_timeout)
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(f"PRAGMA busy_timeout={int(statement_timeout * 1000)}")
        return cls(conn, path, statement_timeout, observer)

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[SQLiteConnection]:
        self._waiting += 1
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout=self._timeout)
        except TimeoutError as error:
            raise StorageUnavailable("database", "timed out waiting for the connection") from error
        finally:
            self._waiting -= 1
        try:
            yield SQLiteConnection(self._conn, self._observer)
        finally:
            self._lock.release()

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._locked() as conn:
            return await conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._locked() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self._locked() as conn:
            return await conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._locked() as conn:
            return await conn.execute(sql, *args)

    @asynccontextmanager
    async def transaction(
        self, *, exclusive_lock: int | None = None
    ) -> AsyncIterator[SQLiteConnection]:
        # SQLite has one writer: BEGIN IMMEDIATE takes the database's write lock,
        # which serialises every holder, so `exclusive_lock` needs no more.
        async with self._locked() as conn:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
            except BaseException:
                # A cancelled BEGIN still runs in aiosqlite's thread, whose queue is
                # FIFO: this ROLLBACK runs after it, so no transaction stays open.
                with suppress(sqlite3.OperationalError):
                    await self._conn.execute("ROLLBACK")
                raise
            else:
                await conn.execute("COMMIT")

    async def ping(self) -> None:
        await self.fetchval("SELECT 1")

    async def close(self) -> None:
        await self._conn.close()

    def pool_stats(self) -> tuple[int, int]:
        return (1 if self._lock.locked() else 0), self._waiting
