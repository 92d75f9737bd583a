"""The kernel's public facade, handed to every hook as `idp`."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from prometheus_client import CollectorRegistry

from agentidp_server.plugins import Hooks
from agentidp_server.server.context import current_idp as current_idp  # kept for importers
from agentidp_server.settings import issuer
from agentidp_server.storage import KV, Database

log = logging.getLogger("agentidp")


class IdP:
    """Settings, storage, metrics and the kernel services a plugin may call.

    Plugins receive this object; it is the only kernel surface they rely on
    (with the names exported by `agentidp_server`). Every public member is part
    of the facade (docs/plugins.md, "The facade"); what starts and stops the
    IdP (hooks, storage, observers, migrations) is the kernel's `Runtime`.
    """

    def __init__(self, settings: Any, hooks: Hooks) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self.log = log
        self.state: dict[str, Any] = {}  # per-plugin state, keyed by plugin name
        # Kernel-internal: kernel modules may read these; plugins never do.
        self._hooks = hooks
        self._db: Database | None = None
        self._kv: KV | None = None
        from agentidp_server.audit.log import AuditLog
        from agentidp_server.directory.service import Directory
        from agentidp_server.keys.keyring import Keyring
        from agentidp_server.oauth.rfc9068 import TokenService
        from agentidp_server.quotas.limits import Quotas
        from agentidp_server.runtime import Runtime
        from agentidp_server.server.leases import Leases

        self._runtime = Runtime(self)
        self.keys = Keyring(settings)
        self.tokens = TokenService(self)
        self.quotas = Quotas(self)
        self.audit = AuditLog(self)
        self.agents = Directory(self)
        self.leases = Leases(self)

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

    async def settle_client_changes(self) -> None:
        """Return once this worker's client cache has applied every change committed
        so far. Call it after committing a change to an agent, its credentials or its
        organisation's tier, so this process's next request sees the change."""
        from agentidp_server.oauth.client_lookup import ClientLookup

        await ClientLookup.of(self).cache.settle(self)

    def plugin_enabled(self, name: str) -> bool:
        """Whether the plugin published under entry-point name `name` is on."""
        return name in self._hooks.enabled

    async def oauth_metadata(self) -> dict[str, Any]:
        """The RFC 8414 authorization-server metadata, every plugin's fields included."""
        from agentidp_server.oauth.endpoints import metadata

        return await metadata(self)
