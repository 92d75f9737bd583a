"""SQL migrations: named sets, applied in order, recorded in `schema_migrations`.

A set is a directory of `NNNN_name.sql` files; a file may ship dialect variants
(`NNNN_name.postgresql.sql`, `NNNN_name.sqlite.sql`) that win over the plain one.
One run applies every pending migration of every set in one transaction, under
an exclusive lock, so that several processes migrating at once apply each file
exactly once and a failure leaves nothing half-applied.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from agentidp_server.storage.db import Connection, Database, lock_key

_FILE = re.compile(r"^(?P<name>\d{4,}_[A-Za-z0-9_]+?)(?:\.(?P<dialect>postgresql|sqlite))?\.sql$")
DIALECTS = ("postgresql", "sqlite")

_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    migration_set TEXT NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (migration_set, name)
)
"""


class MigrationError(Exception):
    """A migration set cannot be applied as it stands."""


@dataclass(frozen=True)
class Migration:
    migration_set: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationSet:
    """A plugin's (or the kernel's) migrations: a unique name and a directory."""

    name: str
    directory: Path

    def migrations(self, dialect: str) -> list[Migration]:
        """The set's migrations for one dialect, in name order."""
        if dialect not in DIALECTS:
            raise MigrationError(f"unknown dialect {dialect!r}")
        chosen: dict[str, tuple[int, Path]] = {}
        for path in sorted(Path(self.directory).glob("*.sql")):
            match = _FILE.match(path.name)
            if match is None:
                raise MigrationError(
                    f"{self.name}: {path.name} is not named NNNN_name[.postgresql|.sqlite].sql"
                )
            file_dialect = match["dialect"]
            if file_dialect not in (None, dialect):
                continue
            rank = 1 if file_dialect else 0  # a dialect variant wins over the plain file
            if match["name"] not in chosen or chosen[match["name"]][0] < rank:
                chosen[match["name"]] = (rank, path)
        return [
            Migration(self.name, name, path.read_text(encoding="utf-8"))
            for name, (_, path) in sorted(chosen.items())
        ]


@dataclass(frozen=True)
class MigrationStatus:
    migration_set: str
    name: str
    applied_at: int | None  # unix ms; None while pending

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


async def _applied(conn: Connection) -> dict[tuple[str, str], tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT migration_set, name, checksum, applied_at FROM schema_migrations"
    )
    return {(r["migration_set"], r["name"]): (r["checksum"], r["applied_at"]) for r in rows}


def _check_sets(sets: list[MigrationSet]) -> None:
    seen: set[str] = set()
    for s in sets:
        if s.name in seen:
            raise MigrationError(f"two migration sets are named {s.name!r}")
        seen.add(s.name)


def _verify(
    sets: list[MigrationSet], dialect: str, applied: dict[tuple[str, str], tuple[str, int]]
) -> list[Migration]:
    """Refuse edited applied files; return the pending migrations in order."""
    pending: list[Migration] = []
    for migration_set in sets:
        for migration in migration_set.migrations(dialect):
            record = applied.get((migration.migration_set, migration.name))
            if record is None:
                pending.append(migration)
            elif record[0] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.migration_set}/{migration.name} was edited after it "
                    "was applied (checksum differs); add a new migration instead"
                )
    return pending


async def migrate(db: Database, sets: list[MigrationSet]) -> list[Migration]:
    """Apply every pending migration, all or nothing; return what was applied."""
    _check_sets(sets)
    async with db.transaction(exclusive_lock=lock_key("migrations")) as conn:
        # Created under the lock: concurrent CREATE TABLE IF NOT EXISTS can race in PostgreSQL.
        await conn.execute(_TABLE)
        pending = _verify(sets, db.dialect, await _applied(conn))
        for migration in pending:
            try:
                await conn.execute_script(migration.sql)
            except Exception as error:
                raise MigrationError(
                    f"migration {migration.migration_set}/{migration.name} failed: {error}"
                ) from error
            await conn.execute(
                "INSERT INTO schema_migrations (migration_set, name, checksum, applied_at) "
                "VALUES ($1, $2, $3, $4)",
                migration.migration_set,
                migration.name,
                migration.checksum,
                int(time.time() * 1000),
            )
    return pending


async def status(db: Database, sets: list[MigrationSet]) -> list[MigrationStatus]:
    """Every known migration with its applied time, pending ones last in their set."""
    _check_sets(sets)
    async with db.transaction() as conn:
        await conn.execute(_TABLE)
        applied = await _applied(conn)
    _verify(sets, db.dialect, applied)
    return [
        MigrationStatus(
            m.migration_set, m.name, applied.get((m.migration_set, m.name), ("", None))[1]
        )
        for s in sets
        for m in s.migrations(db.dialect)
    ]
