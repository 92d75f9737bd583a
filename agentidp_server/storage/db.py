"""The db port: a small async SQL interface both adapters implement.

SQL is written once with PostgreSQL's `$1` placeholders; the SQLite adapter
rewrites them to its numbered `?1` form. Rows come back as plain dicts.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

Row = dict[str, Any]
QueryObserver = Callable[[str, float], None]


class Connection(Protocol):
    """A connection inside a transaction."""

    dialect: str

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""
        ...

    async def execute_script(self, sql: str) -> None:
        """Run several statements (a migration file), inside the current transaction."""
        ...


class Database(Protocol):
    """The pool-level port; each call outside `transaction()` autocommits."""

    dialect: str
    description: str

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int: ...
    def transaction(
        self, *, exclusive_lock: int | None = None
    ) -> AbstractAsyncContextManager[Connection]:
        """All-or-nothing block. `exclusive_lock` serialises holders of the same key
        across processes (PostgreSQL advisory lock; SQLite's write lock)."""
        ...

    async def ping(self) -> None: ...
    async def close(self) -> None: ...
    def pool_stats(self) -> tuple[int, int]:
        """(connections in use, requests waiting for one)."""
        ...


def lock_key(name: str) -> int:
    """A stable advisory-lock key for a name (fits PostgreSQL's bigint)."""
    return zlib.crc32(f"agentidp:{name}".encode())


def operation_of(sql: str) -> str:
    """The SQL verb, as the `operation` label of the query-duration metric."""
    head = sql.lstrip().split(None, 1)
    return head[0].upper() if head else "UNKNOWN"


async def open_database(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    acquire_timeout: float = 5.0,
    statement_timeout: float = 10.0,
    observer: QueryObserver | None = None,
) -> Database:
    """Open the adapter a URL names: `postgresql://...` or `sqlite:///path`."""
    if url.startswith(("postgresql://", "postgres://")):
        from agentidp_server.storage.postgres import PostgresDatabase

        return await PostgresDatabase.open(
            url,
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=acquire_timeout,
            statement_timeout=statement_timeout,
            observer=observer,
        )
    if url.startswith("sqlite://"):
        from agentidp_server.storage.sqlite import SQLiteDatabase

        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute.db
        if not url.startswith("sqlite:///"):
            raise ValueError("a SQLite DATABASE_URL looks like sqlite:///path/to/file.db")
        path = url[len("sqlite:///") :]
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await SQLiteDatabase.open(
            path, statement_timeout=statement_timeout, observer=observer
        )
    raise ValueError(f"unsupported DATABASE_URL scheme: {url.split(':', 1)[0]}")
