"""The kernel's public facade, handed to every hook as `idp`."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from quart import current_app

from agentidp_server.plugins import Hooks
from agentidp_server.settings import issuer
from agentidp_server.storage import KV, Database, open_database, open_kv
from agentidp_server.storage.db import QueryObserver
from agentidp_server.storage.kv import CommandObserver

log = logging.getLogger("agentidp")


def storage_urls(settings: Any) -> tuple[str, str]:
    """The database and kv URLs, falling back to the embedded adapters outside production."""
    db_url = settings.DATABASE_URL
    if not db_url:
        path = Path(settings.DATA_DIR) / "agentidp.db"
        db_url = f"sqlite:///{path}"
    return db_url, settings.REDIS_URL or "memory://"


class IdP:
    """Settings, storage, metrics and the kernel services a plugin may call.

    Plugins receive this object; it is the only kernel surface they rely on
    (with the names exported by `agentidp_server`).
    """

    def __init__(self, settings: Any, hooks: Hooks) -> None:
        self.settings = settings
        self.hooks = hooks
        self.registry = CollectorRegistry(auto_describe=True)
        self.log = log
        self.state: dict[str, Any] = {}  # per-plugin state, keyed by plugin name
        self._db: Database | None = None
        self._kv: KV | None = None
        self.query_observer: QueryObserver | None = None
        self.command_observer: CommandObserver | None = None
        from agentidp_server.audit import AuditLog
        from agentidp_server.directory import Directory
        from agentidp_server.keys import Keyring
        from agentidp_server.oauth.rfc9068 import TokenService
        from agentidp_server.quotas import Quotas

        self.keys = Keyring(settings)
        self.tokens = TokenService(self)
        self.quotas = Quotas(self)
        self.audit = AuditLog(self)
        self.agents = Directory(self)

    @cached_property
    def issuer(self) -> str:
        """The public base URL (settings do not change once loaded)."""
        return issuer(self.settings)

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("storage is not open (the server has not started)")
        return self._db

    @property
    def kv(self) -> KV:
        if self._kv is None:
            raise RuntimeError("storage is not open (the server has not started)")
        return self._kv

    async def open_storage(self) -> None:
        s = self.settings
        db_url, kv_url = storage_urls(s)
        self._db = await open_database(
            db_url,
            min_size=s.DB_POOL_MIN_SIZE,
            max_size=s.DB_POOL_MAX_SIZE,
            acquire_timeout=float(s.DB_ACQUIRE_TIMEOUT),
            statement_timeout=float(s.DB_STATEMENT_TIMEOUT),
            observer=self.query_observer,
        )
        self._kv = await open_kv(
            kv_url,
            timeout=float(s.REDIS_TIMEOUT),
            prefix=s.REDIS_KEY_PREFIX,
            observer=self.command_observer,
        )

    async def close_storage(self) -> None:
        if self._kv is not None:
            await self._kv.close()
            self._kv = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def settle_client_changes(self) -> None:
        """Return once this worker's client cache has applied every change committed
        so far. Call it after committing a change to an agent, its credentials or its
        organisation's tier, so this process's next request sees the change."""
        from agentidp_server.oauth.client_lookup import ClientLookup

        await ClientLookup.of(self).cache.settle(self)

    def plugin_enabled(self, name: str) -> bool:
        """Whether the plugin published under entry-point name `name` is on."""
        return name in self.hooks.enabled

    async def oauth_metadata(self) -> dict[str, Any]:
        """The RFC 8414 authorization-server metadata, every plugin's fields included."""
        from agentidp_server.oauth.endpoints import metadata

        return await metadata(self)

    def migration_sets(self) -> list[Any]:
        return self.hooks.migrations(self)


def current_idp() -> IdP:
    """The facade of the app serving the current request."""
    idp: IdP = current_app.extensions["agentidp"]
    return idp
