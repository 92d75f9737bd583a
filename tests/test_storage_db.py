"""The db port on both adapters: SQLite (aiosqlite) and PostgreSQL (asyncpg).

Every test runs against a real database: the `agentidp_storage` fixture gives a
fresh SQLite file or an emptied PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from agentidp_server.storage import Conflict, StorageError, StorageUnavailable, open_database
from agentidp_server.storage.db import Database, lock_key

POSTGRES_ONLY = pytest.mark.parametrize("agentidp_backend", ["postgres"])

ITEMS = """
CREATE TABLE items (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    amount BIGINT
)
"""


@pytest.fixture
def db(agentidp_db: Database) -> Database:
    return agentidp_db


@pytest.fixture
async def items(db: Database) -> Database:
    await db.execute(ITEMS)
    return db


async def wait_until(predicate: Any, timeout: float = 3.0) -> bool:
    """Poll `predicate` every 10 ms for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await reader.read()  # until the client gives up

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()


# --- shapes -----------------------------------------------------------------


async def test_dialect_and_description(db: Database, agentidp_backend: str) -> None:
    expected = "sqlite" if agentidp_backend == "sqlite" else "postgresql"
    assert db.dialect == expected
    assert db.description.startswith("SQLite at" if expected == "sqlite" else "PostgreSQL at")
    await db.ping()


async def test_fetch_returns_list_of_dicts_in_order(items: Database) -> None:
    inserted = await items.execute(
        "INSERT INTO items (id, name, amount) VALUES ($1, $2, $3), ($4, $5, $6)",
        1,
        "one",
        10,
        2,
        "two",
        None,
    )
    assert inserted == 2
    rows = await items.fetch("SELECT id, name, amount FROM items ORDER BY id")
    assert rows == [
        {"id": 1, "name": "one", "amount": 10},
        {"id": 2, "name": "two", "amount": None},
    ]
    assert all(type(row) is dict for row in rows)
    assert await items.fetch("SELECT id FROM items WHERE id > $1", 100) == []


async def test_fetchrow_returns_dict_or_none(items: Database) -> None:
    await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 7, "seven")
    row = await items.fetchrow("SELECT id, name, amount FROM items WHERE id = $1", 7)
    assert row == {"id": 7, "name": "seven", "amount": None}
    assert type(row) is dict
    assert await items.fetchrow("SELECT id FROM items WHERE id = $1", 8) is None


async def test_fetchval_returns_first_column_or_none(items: Database) -> None:
    assert await items.fetchval("SELECT count(*) FROM items") == 0
    await items.execute("INSERT INTO items (id, name, amount) VALUES ($1, $2, $3)", 1, "a", 5)
    assert await items.fetchval("SELECT name, id FROM items WHERE id = $1", 1) == "a"
    assert await items.fetchval("SELECT amount FROM items WHERE id = $1", 1) == 5
    assert await items.fetchval("SELECT name FROM items WHERE id = $1", 2) is None


async def test_values_round_trip(items: Database) -> None:
    big = 2**53 + 1  # beyond a double's exact range: must stay an exact int
    name = "é ✓ 'quoted' \"double\" $1 ; -- not a comment"
    await items.execute("INSERT INTO items (id, name, amount) VALUES ($1, $2, $3)", 1, name, big)
    row = await items.fetchrow("SELECT name, amount FROM items WHERE id = $1", 1)
    assert row == {"name": name, "amount": big}


async def test_execute_returns_rows_changed(items: Database) -> None:
    for i in range(5):
        assert await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", i, f"n{i}") == 1
    assert await items.execute("UPDATE items SET amount = $1 WHERE id < $2", 3, 3) == 3
    assert await items.execute("UPDATE items SET amount = $1 WHERE id > $2", 3, 100) == 0
    assert await items.execute("DELETE FROM items WHERE id >= $1", 3) == 2
    assert await items.fetchval("SELECT count(*) FROM items") == 3
    assert await items.fetchval("SELECT sum(amount) FROM items") == 9


async def test_execute_ddl_changes_no_rows(db: Database) -> None:
    # "the number of rows it changed": a statement that changes none answers 0 on
    # both adapters (sqlite3's cursor says -1 for DDL).
    assert await db.execute("CREATE TABLE ddl_only (x BIGINT)") == 0
    assert await db.execute("DROP TABLE ddl_only") == 0


# --- placeholders -------------------------------------------------------------


async def test_numbered_placeholders_reorder_and_repeat(db: Database) -> None:
    row = await db.fetchrow("SELECT $2 AS second, $1 AS first, $1 AS again", "a", "b")
    assert row == {"second": "b", "first": "a", "again": "a"}


async def test_placeholders_beyond_nine(items: Database) -> None:
    # $10 must not be read as $1 followed by "0".
    args = list(range(1, 11))
    terms = " + ".join(f"CAST(${i} AS BIGINT)" for i in range(1, 10))
    total = await items.fetchval(f"SELECT {terms} + CAST($10 AS BIGINT) * 1000", *args)
    assert total == sum(range(1, 10)) + 10 * 1000


async def test_dollar_digits_inside_literals_are_not_placeholders(items: Database) -> None:
    # Only real placeholders are rewritten: a `$1` inside a string literal or a
    # comment is text, on SQLite as on PostgreSQL.
    assert await items.fetchval("SELECT 'costs $1'") == "costs $1"
    value = await items.fetchval("SELECT 'it''s $2' || $1 -- and $3 here", "!")
    assert value == "it's $2!"
    await items.execute("INSERT INTO items (id, name) VALUES ($1, 'literal $1') /* $2 */", 1)
    assert await items.fetchval("SELECT name FROM items WHERE id = $1", 1) == "literal $1"


async def test_placeholders_bind_values_not_sql(items: Database) -> None:
    hostile = "x'); DROP TABLE items; --"
    await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, hostile)
    assert await items.fetchval("SELECT name FROM items WHERE id = $1", 1) == hostile
    assert await items.fetchval("SELECT count(*) FROM items") == 1


# --- transactions ---------------------------------------------------------------


async def test_transaction_commits(items: Database) -> None:
    async with items.transaction() as conn:
        assert conn.dialect == items.dialect
        assert await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "a") == 1
        assert await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "b") == 1
        # the transaction sees its own writes
        assert await conn.fetchval("SELECT count(*) FROM items") == 2
        assert await conn.fetchrow("SELECT name FROM items WHERE id = $1", 2) == {"name": "b"}
        assert [r["id"] for r in await conn.fetch("SELECT id FROM items ORDER BY id")] == [1, 2]
    assert await items.fetchval("SELECT count(*) FROM items") == 2


async def test_transaction_rolls_back_on_exception(items: Database) -> None:
    await items.execute("INSERT INTO items (id, name, amount) VALUES ($1, $2, $3)", 1, "kept", 1)

    class Boom(Exception):
        pass

    async def write_then_fail() -> None:
        async with items.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "lost")
            await conn.execute("UPDATE items SET amount = $1 WHERE id = $2", 99, 1)
            await conn.execute("CREATE TABLE lost_table (x BIGINT)")
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    rows = await items.fetch("SELECT id, name, amount FROM items ORDER BY id")
    assert rows == [{"id": 1, "name": "kept", "amount": 1}]
    # DDL is transactional on both: the table is gone too
    assert await table_exists(items, "lost_table") is False
    # and the database is usable afterwards
    async with items.transaction() as conn:
        await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 3, "after")
    assert await items.fetchval("SELECT count(*) FROM items") == 2


async def test_transaction_rolls_back_on_cancellation(items: Database) -> None:
    entered = asyncio.Event()

    async def writer() -> None:
        async with items.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "lost")
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(writer())
    await asyncio.wait_for(entered.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await items.fetchval("SELECT count(*) FROM items") == 0


async def test_execute_script_runs_statements_in_the_transaction(items: Database) -> None:
    script = """
        -- a comment line
        INSERT INTO items (id, name) VALUES (1, 'a; not the end');
        INSERT INTO items (id, name) VALUES (2, 'b');
    """
    seen: list[int] = []

    async def run_then_fail() -> None:
        async with items.transaction() as conn:
            await conn.execute_script(script)
            seen.append(await conn.fetchval("SELECT count(*) FROM items"))
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError, match="undo"):
        await run_then_fail()
    assert seen == [2]
    assert await items.fetchval("SELECT count(*) FROM items") == 0
    async with items.transaction() as conn:
        await conn.execute_script(script)
    assert await items.fetchval("SELECT name FROM items WHERE id = 1") == "a; not the end"


@POSTGRES_ONLY
async def test_uncommitted_writes_are_invisible_outside(items: Database) -> None:
    async with items.transaction() as conn:
        await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "pending")
        assert await items.fetchval("SELECT count(*) FROM items") == 0
    assert await items.fetchval("SELECT count(*) FROM items") == 1


async def test_exclusive_lock_serialises_holders(agentidp_storage: dict[str, Any]) -> None:
    # Two separate Database objects (two pools / two SQLite connections), as two
    # processes would have: the second holder starts only after the first ends.
    url = agentidp_storage["DATABASE_URL"]
    first = await open_database(url, acquire_timeout=5.0, statement_timeout=10.0)
    second = await open_database(url, acquire_timeout=5.0, statement_timeout=10.0)
    events: list[str] = []
    first_in = asyncio.Event()
    key = lock_key("test-exclusive")
    try:

        async def hold() -> None:
            async with first.transaction(exclusive_lock=key):
                events.append("first in")
                first_in.set()
                await asyncio.sleep(0.4)
                events.append("first out")

        async def wait() -> None:
            await first_in.wait()
            async with second.transaction(exclusive_lock=key):
                events.append("second in")

        await asyncio.wait_for(asyncio.gather(hold(), wait()), timeout=10)
    finally:
        await first.close()
        await second.close()
    assert events == ["first in", "first out", "second in"]


# --- errors -------------------------------------------------------------------


async def test_unique_violation_is_conflict(items: Database) -> None:
    await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "a")
    with pytest.raises(Conflict):
        await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "b")
    with pytest.raises(Conflict):
        await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "a")
    assert await items.fetch("SELECT id, name FROM items") == [{"id": 1, "name": "a"}]


async def test_conflict_inside_transaction_rolls_back(items: Database) -> None:
    await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 1, "a")

    async def write_twice() -> None:
        async with items.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "b")
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 3, "a")

    with pytest.raises(Conflict):
        await write_twice()
    assert await items.fetch("SELECT id FROM items") == [{"id": 1}]
    # the connection went back to the pool in a usable state
    assert await items.execute("INSERT INTO items (id, name) VALUES ($1, $2)", 2, "b") == 1


async def test_foreign_key_violation_is_conflict(db: Database) -> None:
    await db.execute("CREATE TABLE parents (id BIGINT PRIMARY KEY)")
    await db.execute(
        "CREATE TABLE children "
        "(id BIGINT PRIMARY KEY, parent BIGINT NOT NULL REFERENCES parents (id))"
    )
    await db.execute("INSERT INTO parents (id) VALUES ($1)", 1)
    assert await db.execute("INSERT INTO children (id, parent) VALUES ($1, $2)", 1, 1) == 1
    with pytest.raises(Conflict):
        await db.execute("INSERT INTO children (id, parent) VALUES ($1, $2)", 2, 404)
    assert await db.fetchval("SELECT count(*) FROM children") == 1


async def test_sql_errors_are_not_storage_errors(db: Database) -> None:
    # A bug in the SQL is a 500, not "the store is unavailable" (503) or a conflict.
    with pytest.raises(Exception, match="no_such_table") as info:
        await db.fetch("SELECT * FROM no_such_table")
    assert not isinstance(info.value, StorageError)
    await db.ping()


async def test_postgres_closed_port_is_unavailable_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        await open_database(
            "postgresql://postgres@127.0.0.1:1/test", acquire_timeout=2.0, statement_timeout=2.0
        )
    assert time.monotonic() - started < 3.0
    assert info.value.component == "database"


async def test_postgres_silent_server_times_out() -> None:
    async with SilentServer() as server:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await open_database(
                f"postgresql://postgres@127.0.0.1:{server.port}/test",
                acquire_timeout=0.5,
                statement_timeout=0.5,
            )
        assert time.monotonic() - started < 3.0


@POSTGRES_ONLY
async def test_postgres_statement_timeout_is_unavailable(
    agentidp_storage: dict[str, Any],
) -> None:
    db = await open_database(agentidp_storage["DATABASE_URL"], statement_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await db.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3.0
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def open_single(url: str, timeout: float) -> Database:
    """A database with one connection and a short wait for it."""
    return await open_database(
        url, min_size=1, max_size=1, acquire_timeout=timeout, statement_timeout=timeout
    )


async def test_acquire_timeout_when_the_connection_is_held(
    agentidp_storage: dict[str, Any],
) -> None:
    db = await open_single(agentidp_storage["DATABASE_URL"], 0.5)
    try:
        async with db.transaction():
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as info:
                await db.fetchval("SELECT 1")
            elapsed = time.monotonic() - started
            assert 0.4 <= elapsed < 3.0, elapsed
            assert info.value.component == "database"
            assert db.pool_stats() == (1, 0)  # the timed-out waiter left the queue
        # once released, the connection serves again
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def test_pool_stats(agentidp_storage: dict[str, Any]) -> None:
    db = await open_single(agentidp_storage["DATABASE_URL"], 5.0)
    try:
        assert db.pool_stats() == (0, 0)
        waiter: asyncio.Task[Any] | None = None
        async with db.transaction() as conn:
            assert db.pool_stats() == (1, 0)
            waiter = asyncio.create_task(db.fetchval("SELECT 41 + 1"))
            assert await wait_until(lambda: db.pool_stats() == (1, 1)), db.pool_stats()
            assert await conn.fetchval("SELECT 1") == 1
        assert await asyncio.wait_for(waiter, timeout=5) == 42
        assert db.pool_stats() == (0, 0)
    finally:
        await db.close()


async def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await open_database("mysql://127.0.0.1/x")
    with pytest.raises(ValueError, match="sqlite:///"):
        await open_database("sqlite://relative.db")


# --- helpers --------------------------------------------------------------------


async def table_exists(db: Database, name: str) -> bool:
    if db.dialect == "sqlite":
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
    else:
        sql = (
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = $1"
        )
    return bool(await db.fetchval(sql, name))


async def test_a_transaction_cancelled_at_any_point_leaves_nothing_open(items: Database) -> None:
    """A request cancelled mid-transaction (a client hanging up) must not wedge the store."""

    async def insert(name: str, key: int) -> None:
        async with items.transaction() as conn:
            await conn.execute("INSERT INTO items (id, name) VALUES ($1, $2)", key, name)

    for step in range(12):
        task = asyncio.create_task(insert(f"cancelled-{step}", 100 + step))
        for _ in range(step):  # cancel at a different await each time (BEGIN, INSERT, COMMIT)
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await insert(f"after-{step}", 200 + step)
    names = [r["name"] for r in await items.fetch("SELECT name FROM items ORDER BY name")]
    assert [n for n in names if n.startswith("after-")] == sorted(f"after-{s}" for s in range(12))


async def test_sqlite_open_waits_for_a_writer_holding_the_file(tmp_path: Any) -> None:
    """Two workers opening one new file race for WAL mode: the loser waits, not fails."""
    import sqlite3

    path = tmp_path / "busy.db"
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, other.execute, "COMMIT")
    started = time.monotonic()
    database = await open_database(f"sqlite:///{path}", statement_timeout=5.0)
    try:
        assert time.monotonic() - started >= 0.25
        assert await database.fetchval("PRAGMA journal_mode") == "wal"
        assert await database.fetchval("SELECT COUNT(*) FROM t") == 1
    finally:
        await database.close()
        other.close()
