"""Client lookups for secret authentication, batched across concurrent requests.

Each token request needs its client's agent, secrets and tier. Requests that
arrive while one lookup is in flight are answered by the next single query,
so a busy worker pays one database round trip per batch. On PostgreSQL the
answers are kept in the worker's `ClientCache`, which notifications keep true
(oauth/client_cache.py); a request may ask for a fresh read past it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentidp_server.directory import agents
from agentidp_server.directory.agents import ClientRecord
from agentidp_server.oauth.client_cache import ClientCache
from agentidp_server.storage.batching import Batcher
from agentidp_server.util.ids import could_be_client_id

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

BATCH_MAX = 256
_UNKNOWN: ClientRecord = (None, [], None)


class ClientLookup:
    def __init__(self, idp: IdP) -> None:
        self._idp = idp
        self._batches: Batcher[tuple[str, ClientRecord | None], ClientRecord] = Batcher(
            self._fetch, BATCH_MAX
        )
        self.cache = ClientCache(
            float(idp.settings.CLIENT_CACHE_TTL), int(idp.settings.CLIENT_CACHE_SIZE)
        )

    @classmethod
    def of(cls, idp: IdP) -> ClientLookup:
        """The app's one lookup (created on first use)."""
        core = idp.state.setdefault("core", {})
        lookup: ClientLookup | None = core.get("client_lookup")
        if lookup is None:
            lookup = core["client_lookup"] = cls(idp)
        return lookup

    async def for_secret(self, client_id: str, fresh: bool = False) -> tuple[ClientRecord, bool]:
        """The agent (None if unknown), its usable client secrets and its tier;
        and whether that answer came from the cache (`fresh` skips it)."""
        if not could_be_client_id(client_id):
            # Never enters a batch: a hostile id cannot fail the requests batched with it.
            return (None, [], None), False
        cached = None if fresh else self.cache.get(client_id)
        # A hit still goes through the batcher, answered with the batch's misses: hits
        # that ran ahead would take the next Redis and audit round trips with fewer
        # requests to share them. A batch of hits alone sends no query.
        return await self._batches.submit((client_id, cached)), cached is not None

    async def _fetch(self, items: list[tuple[str, ClientRecord | None]]) -> list[ClientRecord]:
        misses = sorted({client_id for client_id, cached in items if cached is None})
        found: dict[str, ClientRecord] = {}
        if misses:
            generation = self.cache.generation  # before the read: a later change spoils it
            found = await agents.get_clients_for_secret(self._idp.db, misses)
            for client_id, record in found.items():
                self.cache.put(client_id, record, generation)  # kept only while live
        answers: list[ClientRecord] = []
        seen: set[str] = set()
        for client_id, cached in items:
            if cached is not None:
                answers.append(cached)  # already a private copy
                continue
            agent, secrets, tier = found.get(client_id, _UNKNOWN)
            if client_id in seen and agent is not None:
                # Two requests of one client in a batch: neither may see the other's copy.
                agent, secrets = {**agent, "scopes": list(agent["scopes"])}, list(secrets)
            seen.add(client_id)
            answers.append((agent, secrets, tier))
        return answers
