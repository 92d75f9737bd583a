"""`idp.agents`: read-only lookups and listings of organisations, agents and their
public keys, as typed views, so plugins never query kernel tables or read row dicts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentidp_server.directory import agents, credentials
from agentidp_server.views import Agent, AgentKind, Credential, Organisation, Page

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

MAX_PAGE = 200  # as the management API's listing
_KINDS_MAX = 10_000  # remembered agent kinds per process


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}")
    return limit


class Directory:
    def __init__(self, idp: IdP) -> None:
        self._idp = idp
        # An agent's kind never changes once created, so remembering it is always right.
        self._kinds: dict[str, AgentKind] = {}

    async def get(self, agent_id: str) -> Agent | None:
        """Any agent (or organisation admin client) by id, whatever its status."""
        row = await agents.get_by_id(self._idp.db, agent_id)
        return None if row is None else Agent.from_row(row)

    async def get_in_org(self, org_id: str, agent_id: str) -> Agent | None:
        """An agent of `org_id`; another organisation's agent is None (answer 404)."""
        row = await agents.get_agent(self._idp.db, org_id, agent_id)
        return None if row is None else Agent.from_row(row)

    async def by_client_id(self, client_id: str) -> Agent | None:
        row = await agents.get_by_client_id(self._idp.db, client_id)
        return None if row is None else Agent.from_row(row)

    async def kind(self, agent_id: str) -> AgentKind | None:
        """ "agent" or "admin" (an organisation's admin client); None if unknown."""
        kind = self._kinds.get(agent_id)
        if kind is None:
            value = await self._idp.db.fetchval(
                "SELECT kind FROM agents WHERE agent_id = $1", agent_id
            )
            if value is None:
                return None
            kind = "admin" if value == "admin" else "agent"
            if len(self._kinds) >= _KINDS_MAX:
                self._kinds.clear()  # rare and cheap to refill; no eviction order to keep
            self._kinds[agent_id] = kind
        return kind

    async def organisation(self, org_id: str) -> Organisation | None:
        row = await self._idp.db.fetchrow(
            "SELECT o.org_id, o.name, o.created_at, t.tier FROM organizations o "
            "LEFT JOIN tenant_tiers t ON t.org_id = o.org_id WHERE o.org_id = $1",
            org_id,
        )
        return None if row is None else Organisation.from_row(row)

    async def organisations(
        self, *, cursor: str | None = None, limit: int = 50
    ) -> Page[Organisation]:
        """Every organisation, a page at a time in `org_id` order (keyset pagination).

        ValueError for a bad limit or cursor (its message is safe to show)."""
        limit = _limit(limit)
        after = agents.decode_cursor(cursor) if cursor else ""
        rows = await self._idp.db.fetch(
            "SELECT o.org_id, o.name, o.created_at, t.tier FROM organizations o "
            "LEFT JOIN tenant_tiers t ON t.org_id = o.org_id "
            "WHERE o.org_id > $1 ORDER BY o.org_id LIMIT $2",
            after,
            limit + 1,
        )
        page = tuple(Organisation.from_row(r) for r in rows[:limit])
        more = len(rows) > limit
        return Page(page, agents.encode_cursor(page[-1].org_id) if more else None)

    async def agents(
        self,
        org_id: str,
        *,
        status: str | None = None,
        deployment_env: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Agent]:
        """The organisation's agents (admin clients excluded), a page at a time in
        `agent_id` order: the management API's listing, with the same filters and cursor.

        ValueError for a bad limit, status or cursor (its message is safe to show)."""
        rows, next_cursor = await agents.list_agents(
            self._idp.db,
            org_id,
            status=status,
            deployment_env=deployment_env,
            cursor=cursor,
            limit=_limit(limit),
        )
        return Page(tuple(Agent.from_row(r) for r in rows), next_cursor)

    async def public_keys(self, agent_id: str) -> list[Credential]:
        """The agent's usable `private_key_jwt` credentials (active, unexpired), each
        with its public JWK."""
        rows = await credentials.usable(self._idp.db, agent_id, "private_key_jwt")
        return [Credential.from_row(row) for row in rows]

    async def credentials(self, agent_id: str) -> list[Credential]:
        """Every credential of the agent, revoked and expired ones too (no secrets)."""
        rows = await credentials.list_for_agent(self._idp.db, agent_id)
        return [Credential.from_row(row) for row in rows]
