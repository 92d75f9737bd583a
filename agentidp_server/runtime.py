"""The kernel's handle on an IdP: its hooks, opening and closing its storage, the
storage observers and the migration sets. Never handed to plugins: they get the
IdP, whose public members are the facade (docs/plugins.md, "The facade")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentidp_server.storage import open_database, open_kv
from agentidp_server.storage.db import QueryObserver
from agentidp_server.storage.kv import CommandObserver

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.plugins import Hooks
    from agentidp_server.storage.migrations import MigrationSet


def storage_urls(settings: Any) -> tuple[str, str]:
    """The database and kv URLs, falling back to the embedded adapters outside production."""
    db_url = settings.DATABASE_URL
    if not db_url:
        path = Path(settings.DATA_DIR) / "agentidp.db"
        db_url = f"sqlite:///{path}"
    return db_url, settings.REDIS_URL or "memory://"


class Runtime:
    """What starts and stops an IdP; one per IdP, created with it."""

    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        # Set by the metrics module before storage opens: every query and kv command timed.
        self.query_observer: QueryObserver | None = None
        self.command_observer: CommandObserver | None = None

    @property
    def hooks(self) -> Hooks:
        return self.idp._hooks

    async def open_storage(self) -> None:
        idp, s = self.idp, self.idp.settings
        db_url, kv_url = storage_urls(s)
        idp._db = await open_database(
            db_url,
            min_size=s.DB_POOL_MIN_SIZE,
            max_size=s.DB_POOL_MAX_SIZE,
            acquire_timeout=float(s.DB_ACQUIRE_TIMEOUT),
            statement_timeout=float(s.DB_STATEMENT_TIMEOUT),
            observer=self.query_observer,
        )
        idp._kv = await open_kv(
            kv_url,
            timeout=float(s.REDIS_TIMEOUT),
            prefix=s.REDIS_KEY_PREFIX,
            observer=self.command_observer,
        )

    async def close_storage(self) -> None:
        idp = self.idp
        if idp._kv is not None:
            await idp._kv.close()
            idp._kv = None
        if idp._db is not None:
            await idp._db.close()
            idp._db = None

    def migration_sets(self) -> list[MigrationSet]:
        """The kernel's and every enabled plugin's migrations, in the order they apply."""
        return self.hooks.migrations(self.idp)


def runtime(idp: IdP) -> Runtime:
    """The kernel's handle on `idp` (for the app, the CLI, the runner and tests)."""
    return idp._runtime
