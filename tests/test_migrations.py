"""Migrations on both adapters, and `agentidp db migrate|status` as separate processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agentidp_server.runtime import runtime
from agentidp_server.storage import open_database
from agentidp_server.storage.db import Database, lock_key
from agentidp_server.storage.migrations import MigrationError, MigrationSet, migrate, status

POSTGRES_ONLY = pytest.mark.parametrize("agentidp_backend", ["postgres"])


@pytest.fixture
def db(agentidp_db: Database) -> Database:
    return agentidp_db


def make_set(directory: Path, files: dict[str, str], name: str = "s") -> MigrationSet:
    directory.mkdir(parents=True, exist_ok=True)
    # written in reverse order: the run order must come from the names, not the disk
    for filename, sql in reversed(files.items()):
        (directory / filename).write_text(sql, encoding="utf-8")
    return MigrationSet(name, directory)


async def table_exists(db: Database, name: str) -> bool:
    if db.dialect == "sqlite":
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
    else:
        sql = (
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = $1"
        )
    return bool(await db.fetchval(sql, name))


async def recorded(db: Database) -> list[tuple[str, str]]:
    if not await table_exists(db, "schema_migrations"):
        return []
    rows = await db.fetch(
        "SELECT migration_set, name FROM schema_migrations ORDER BY migration_set, name"
    )
    return [(r["migration_set"], r["name"]) for r in rows]


BASIC = {
    "0001_a.sql": "CREATE TABLE a (id BIGINT PRIMARY KEY, note TEXT);\n",
    # depends on 0001: fails if run first
    "0002_b.sql": (
        "-- fill a, then make b\n"
        "INSERT INTO a (id, note) VALUES (1, 'from 0002; with a semicolon');\n"
        "CREATE TABLE b (id BIGINT PRIMARY KEY REFERENCES a (id));\n"
        "INSERT INTO b (id) VALUES (1);\n"
    ),
    # 0010 sorts after 0002
    "0010_c.sql": "CREATE TABLE c (id BIGINT);\nINSERT INTO c (id) SELECT id FROM b;\n",
}


# --- applying -------------------------------------------------------------------


async def test_applies_in_order_and_records(db: Database, tmp_path: Path) -> None:
    migration_set = make_set(tmp_path / "m", BASIC)
    before = int(time.time() * 1000)
    applied = await migrate(db, [migration_set])
    after = int(time.time() * 1000)
    assert [(m.migration_set, m.name) for m in applied] == [
        ("s", "0001_a"),
        ("s", "0002_b"),
        ("s", "0010_c"),
    ]
    assert await db.fetchval("SELECT note FROM a WHERE id = 1") == "from 0002; with a semicolon"
    assert await db.fetchval("SELECT count(*) FROM c") == 1

    rows = await db.fetch(
        "SELECT migration_set, name, checksum, applied_at FROM schema_migrations ORDER BY name"
    )
    assert [r["name"] for r in rows] == ["0001_a", "0002_b", "0010_c"]
    for row in rows:
        assert row["migration_set"] == "s"
        text = (tmp_path / "m" / f"{row['name']}.sql").read_text(encoding="utf-8")
        assert row["checksum"] == hashlib.sha256(text.encode()).hexdigest()
        assert before <= row["applied_at"] <= after
    names = await db.fetch("SELECT name FROM schema_migrations")
    assert sorted(r["name"] for r in names) == ["0001_a", "0002_b", "0010_c"]


async def test_rerun_applies_nothing_and_new_files_apply_alone(
    db: Database, tmp_path: Path
) -> None:
    migration_set = make_set(tmp_path / "m", BASIC)
    assert len(await migrate(db, [migration_set])) == 3
    first = await db.fetch("SELECT name, applied_at FROM schema_migrations ORDER BY name")
    assert await migrate(db, [migration_set]) == []
    assert await db.fetch("SELECT name, applied_at FROM schema_migrations ORDER BY name") == first
    assert await db.fetchval("SELECT count(*) FROM b") == 1  # 0002's insert ran once

    (tmp_path / "m" / "0011_d.sql").write_text("INSERT INTO c (id) VALUES (2);\n")
    applied = await migrate(db, [migration_set])
    assert [m.name for m in applied] == ["0011_d"]
    assert await db.fetchval("SELECT count(*) FROM c") == 2
    assert len(await recorded(db)) == 4


async def test_edited_applied_file_is_refused(db: Database, tmp_path: Path) -> None:
    migration_set = make_set(tmp_path / "m", {"0001_a.sql": BASIC["0001_a.sql"]})
    await migrate(db, [migration_set])
    (tmp_path / "m" / "0001_a.sql").write_text(BASIC["0001_a.sql"] + "-- a harmless edit\n")
    (tmp_path / "m" / "0002_new.sql").write_text("CREATE TABLE new_table (x BIGINT);\n")
    with pytest.raises(MigrationError, match=r"s/0001_a was edited"):
        await migrate(db, [migration_set])
    # nothing else ran in the refused run
    assert not await table_exists(db, "new_table")
    assert await recorded(db) == [("s", "0001_a")]
    with pytest.raises(MigrationError, match=r"s/0001_a"):
        await status(db, [migration_set])


async def test_failure_rolls_back_the_whole_run(db: Database, tmp_path: Path) -> None:
    files = {
        **BASIC,
        # the first statement works, the second fails: the file is undone too
        "0020_bad.sql": (
            "CREATE TABLE half_done (x BIGINT);\nINSERT INTO no_such_table (x) VALUES (1);\n"
        ),
    }
    migration_set = make_set(tmp_path / "m", files)
    with pytest.raises(MigrationError, match=r"s/0020_bad failed") as info:
        await migrate(db, [migration_set])
    assert info.value.__cause__ is not None
    for table in ("a", "b", "c", "half_done", "schema_migrations"):
        assert not await table_exists(db, table), table
    assert await recorded(db) == []


async def test_failure_keeps_earlier_runs_and_drops_this_one(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "m"
    migration_set = make_set(directory, {"0001_a.sql": BASIC["0001_a.sql"]})
    await migrate(db, [migration_set])
    (directory / "0002_b.sql").write_text(BASIC["0002_b.sql"])
    (directory / "0003_bad.sql").write_text(
        "INSERT INTO a (id, note) VALUES (2, 'x');\nINSERT INTO a (id, note) VALUES (2, 'dup');\n"
    )
    with pytest.raises(MigrationError, match=r"s/0003_bad"):
        await migrate(db, [migration_set])
    assert await table_exists(db, "a")
    assert not await table_exists(db, "b")
    assert await db.fetchval("SELECT count(*) FROM a") == 0  # 0002's and 0003's inserts undone
    assert await recorded(db) == [("s", "0001_a")]

    # a pending file may be fixed (it was never applied): the next run takes both
    (directory / "0003_bad.sql").write_text("INSERT INTO a (id, note) VALUES (2, 'x');\n")
    applied = await migrate(db, [migration_set])
    assert [m.name for m in applied] == ["0002_b", "0003_bad"]
    assert await db.fetchval("SELECT count(*) FROM a") == 2


async def test_dialect_variant_wins_over_plain_file(db: Database, tmp_path: Path) -> None:
    other = "postgresql" if db.dialect == "sqlite" else "sqlite"
    files = {
        "0001_base.sql": "CREATE TABLE base (x BIGINT);\n",
        "0002_x.sql": "CREATE TABLE plain_t (x BIGINT);\n",
        "0002_x.sqlite.sql": "CREATE TABLE t_sqlite (x BIGINT);\n",
        "0002_x.postgresql.sql": "CREATE TABLE t_postgresql (x BIGINT);\n",
        # a variant for the other dialect only: never read here
        f"0003_only.{other}.sql": "THIS IS NOT SQL AT ALL;\n",
        f"0004_mine.{db.dialect}.sql": "CREATE TABLE mine_t (x BIGINT);\n",
    }
    migration_set = make_set(tmp_path / "m", files)
    applied = await migrate(db, [migration_set])
    assert [m.name for m in applied] == ["0001_base", "0002_x", "0004_mine"]
    assert await table_exists(db, f"t_{db.dialect}")
    assert not await table_exists(db, "plain_t")
    assert not await table_exists(db, f"t_{other}")
    assert await table_exists(db, "mine_t")
    checksum = await db.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", "0002_x")
    variant = files[f"0002_x.{db.dialect}.sql"]
    assert checksum == hashlib.sha256(variant.encode()).hexdigest()


def test_dialect_choice_without_a_database(tmp_path: Path) -> None:
    migration_set = make_set(
        tmp_path / "m",
        {
            "0001_x.sql": "plain",
            "0001_x.sqlite.sql": "lite",
            "0002_y.postgresql.sql": "pg only",
        },
    )
    assert [(m.name, m.sql) for m in migration_set.migrations("sqlite")] == [("0001_x", "lite")]
    assert [(m.name, m.sql) for m in migration_set.migrations("postgresql")] == [
        ("0001_x", "plain"),
        ("0002_y", "pg only"),
    ]
    with pytest.raises(MigrationError, match="unknown dialect"):
        migration_set.migrations("mysql")


@pytest.mark.parametrize(
    "filename",
    ["1_short.sql", "0001-dash.sql", "0001_x.mysql.sql", "0001_.sql", "abcd_x.sql", "0001_a b.sql"],
)
def test_badly_named_file_is_refused(tmp_path: Path, filename: str) -> None:
    migration_set = make_set(tmp_path / "m", {"0001_ok.sql": "SELECT 1;", filename: "SELECT 1;"})
    with pytest.raises(MigrationError, match=re.escape(filename)):
        migration_set.migrations("sqlite")


async def test_badly_named_file_stops_the_run(db: Database, tmp_path: Path) -> None:
    migration_set = make_set(
        tmp_path / "m", {"0001_ok.sql": "CREATE TABLE ok (x BIGINT);\n", "2_bad.sql": "SELECT 1;"}
    )
    with pytest.raises(MigrationError, match=re.escape("2_bad.sql")):
        await migrate(db, [migration_set])
    assert not await table_exists(db, "ok")
    assert await recorded(db) == []


async def test_two_sets_share_migration_names(db: Database, tmp_path: Path) -> None:
    one = make_set(tmp_path / "one", {"0001_init.sql": "CREATE TABLE one_t (x BIGINT);\n"}, "one")
    two = make_set(tmp_path / "two", {"0001_init.sql": "CREATE TABLE two_t (x BIGINT);\n"}, "two")
    applied = await migrate(db, [two, one])
    assert [(m.migration_set, m.name) for m in applied] == [
        ("two", "0001_init"),
        ("one", "0001_init"),
    ]
    assert await recorded(db) == [("one", "0001_init"), ("two", "0001_init")]
    assert await table_exists(db, "one_t")
    assert await table_exists(db, "two_t")


async def test_duplicate_set_names_are_refused(db: Database, tmp_path: Path) -> None:
    one = make_set(tmp_path / "one", {"0001_a.sql": "CREATE TABLE x1 (x BIGINT);\n"}, "same")
    two = make_set(tmp_path / "two", {"0001_b.sql": "CREATE TABLE x2 (x BIGINT);\n"}, "same")
    with pytest.raises(MigrationError, match="same"):
        await migrate(db, [one, two])
    assert not await table_exists(db, "x1")
    with pytest.raises(MigrationError, match="same"):
        await status(db, [one, two])


async def test_comment_only_migration_is_recorded(db: Database, tmp_path: Path) -> None:
    migration_set = make_set(tmp_path / "m", {"0001_noop.sql": "-- nothing to do yet\n"})
    assert [m.name for m in await migrate(db, [migration_set])] == ["0001_noop"]
    assert await recorded(db) == [("s", "0001_noop")]


async def test_dollar_text_in_a_migration_is_kept(db: Database, tmp_path: Path) -> None:
    migration_set = make_set(
        tmp_path / "m",
        {
            "0001_price.sql": (
                "CREATE TABLE prices (label TEXT NOT NULL DEFAULT 'from $1');\n"
                "INSERT INTO prices (label) VALUES ('costs $2');\n"
                "INSERT INTO prices DEFAULT VALUES;\n"
            )
        },
    )
    await migrate(db, [migration_set])
    rows = await db.fetch("SELECT label FROM prices ORDER BY label")
    assert [r["label"] for r in rows] == ["costs $2", "from $1"]


async def test_status_lists_applied_and_pending(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "m"
    migration_set = make_set(directory, {"0001_a.sql": BASIC["0001_a.sql"]})
    # status on a fresh database: everything pending, nothing applied by asking
    pending = await status(db, [migration_set])
    assert [(s.name, s.applied, s.applied_at) for s in pending] == [("0001_a", False, None)]
    assert not await table_exists(db, "a")

    before = int(time.time() * 1000)
    await migrate(db, [migration_set])
    after = int(time.time() * 1000)
    (directory / "0002_b.sql").write_text(BASIC["0002_b.sql"])
    rows = await status(db, [migration_set])
    assert [(r.migration_set, r.name, r.applied) for r in rows] == [
        ("s", "0001_a", True),
        ("s", "0002_b", False),
    ]
    assert rows[0].applied_at is not None
    assert before <= rows[0].applied_at <= after
    assert rows[1].applied_at is None
    assert not await table_exists(db, "b")


async def test_concurrent_runs_apply_each_file_once(
    agentidp_storage: dict[str, Any], tmp_path: Path
) -> None:
    # Separate Database objects (separate connections), as separate processes have.
    migration_set = make_set(tmp_path / "m", BASIC)
    url = agentidp_storage["DATABASE_URL"]
    dbs = [await open_database(url, acquire_timeout=10.0, statement_timeout=20.0) for _ in range(3)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrate(d, [migration_set]) for d in dbs)), timeout=30
        )
        assert sorted(len(r) for r in results) == [0, 0, 3]
        assert await recorded(dbs[0]) == [("s", "0001_a"), ("s", "0002_b"), ("s", "0010_c")]
        assert await dbs[0].fetchval("SELECT count(*) FROM b") == 1
    finally:
        for d in dbs:
            await d.close()


# --- the CLI, as separate OS processes ------------------------------------------


def cli_command() -> list[str]:
    script = Path(sys.executable).with_name("agentidp")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from agentidp_server.cli import main; main()"]


def cli_env(storage: dict[str, Any]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTIDP_")
        and k not in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX")
    }
    env.update(
        {
            "AGENTIDP_ENV": "test",
            "DATABASE_URL": storage["DATABASE_URL"],
            "REDIS_URL": storage["REDIS_URL"],
            # room to wait for the advisory lock the test holds
            "AGENTIDP_DB_STATEMENT_TIMEOUT": "60",
        }
    )
    if storage.get("REDIS_KEY_PREFIX"):
        env["AGENTIDP_REDIS_KEY_PREFIX"] = storage["REDIS_KEY_PREFIX"]
    return env


async def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> Any:
    return await asyncio.create_subprocess_exec(
        *cli_command(),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: Any, timeout: float = 60.0) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(), err.decode()


async def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    return await finish(await start_cli(args, env, cwd))


def expected_migrations(env: dict[str, str], dialect: str) -> list[tuple[str, str, str]]:
    """(set, name, sql) of every migration the CLI will apply with this environment."""
    from agentidp_server.app import build_idp
    from agentidp_server.settings import load_settings

    idp = build_idp(load_settings(environ=env))
    return [
        (m.migration_set, m.name, m.sql)
        for s in runtime(idp).migration_sets()
        for m in s.migrations(dialect)
    ]


APPLIED_COUNT = re.compile(r"^(\d+) migration\(s\) applied$", re.MULTILINE)


@POSTGRES_ONLY
async def test_four_processes_migrate_at_once(
    agentidp_storage: dict[str, Any], tmp_path: Path
) -> None:
    env = cli_env(agentidp_storage)
    expected = expected_migrations(env, "postgresql")
    assert expected, "the kernel ships migrations"
    url = agentidp_storage["DATABASE_URL"]

    # Hold the migrations lock so that all four processes are inside `migrate`,
    # waiting on it, before any can start: a real race, not four runs in a row.
    holder = await asyncpg.connect(url, timeout=5)
    processes = []
    most_waiting = 0
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key("migrations"))
        processes = [await start_cli(["db", "migrate"], env, tmp_path) for _ in range(4)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and most_waiting < 4:
            most_waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid::bigint = $1 AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                lock_key("migrations"),
            )
            if any(p.returncode is not None for p in processes):
                break
            await asyncio.sleep(0.05)
    finally:
        await holder.execute("SELECT pg_advisory_unlock($1)", lock_key("migrations"))
        await holder.close()
        results = [await finish(p) for p in processes]

    for code, out, err in results:
        assert code == 0, (out, err)
    assert most_waiting == 4, results

    counts = []
    applied_lines: list[str] = []
    for _, out, _ in results:
        match = APPLIED_COUNT.search(out)
        assert match is not None, out
        counts.append(int(match[1]))
        applied_lines += [line for line in out.splitlines() if line.startswith("applied ")]
    # one process applied everything, the three others found nothing to do
    assert sorted(counts) == [0, 0, 0, len(expected)]
    assert sorted(applied_lines) == sorted(f"applied {s}/{n}" for s, n, _ in expected)

    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch("SELECT migration_set, name FROM schema_migrations")
        assert sorted((r["migration_set"], r["name"]) for r in rows) == sorted(
            (s, n) for s, n, _ in expected
        )
        created = {
            t.lower()
            for _, _, sql in expected
            for t in re.findall(r"CREATE TABLE(?: IF NOT EXISTS)?\s+(\w+)", sql, re.IGNORECASE)
        }
        assert {"organizations", "tenant_tiers"} <= created
        for table in created:
            assert await conn.fetchval("SELECT to_regclass($1)", table) is not None, table
    finally:
        await conn.close()

    code, out, err = await run_cli(["db", "migrate"], env, tmp_path)
    assert code == 0, err
    assert "0 migration(s) applied" in out
    assert "applied core/" not in out


TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"


async def test_cli_status_then_migrate(agentidp_storage: dict[str, Any], tmp_path: Path) -> None:
    env = cli_env(agentidp_storage)
    dialect = "sqlite" if agentidp_storage["DATABASE_URL"].startswith("sqlite") else "postgresql"
    expected = [f"{s}/{n}" for s, n, _ in expected_migrations(env, dialect)]

    code, out, err = await run_cli(["db", "status"], env, tmp_path)
    assert code == 0, err
    assert out.splitlines() == [f"{name}\tpending" for name in expected]

    code, out, err = await run_cli(["db", "migrate"], env, tmp_path)
    assert code == 0, err
    assert out.splitlines() == [f"applied {name}" for name in expected] + [
        f"{len(expected)} migration(s) applied"
    ]

    code, out, err = await run_cli(["db", "status"], env, tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(expected)
    for line, name in zip(lines, expected, strict=True):
        assert re.fullmatch(re.escape(name) + "\t" + TIMESTAMP, line), line


async def test_cli_reports_unreachable_database(tmp_path: Path) -> None:
    env = cli_env(
        {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test", "REDIS_URL": "memory://"}
    )
    env["AGENTIDP_DB_ACQUIRE_TIMEOUT"] = "2"
    code, out, err = await run_cli(["db", "migrate"], env, tmp_path)
    assert code == 1, (out, err)
    # The runbook's line, once, with host and port (not click's "Error: Migration failed").
    assert err.splitlines() == [
        "Migration failed: Error: cannot connect to PostgreSQL at 127.0.0.1:1 (DATABASE_URL): "
        "connection refused"
    ], err
