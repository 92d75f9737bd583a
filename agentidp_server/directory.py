"""Read-only agent lookups for plugins (`idp.agents`), so they never query kernel tables."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentidp_server import agents, credentials, tenants

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


class Directory:
    def __init__(self, idp: IdP) -> None:
        self._idp = idp

    async def get(self, agent_id: str) -> dict[str, Any] | None:
        """Any agent (or organisation admin client) by id, whatever its status."""
        return await agents.get_by_id(self._idp.db, agent_id)

    async def get_in_org(self, org_id: str, agent_id: str) -> dict[str, Any] | None:
        """An agent of `org_id`; another organisation's agent is None (answer 404)."""
        return await agents.get_agent(self._idp.db, org_id, agent_id)

    async def by_client_id(self, client_id: str) -> dict[str, Any] | None:
        return await agents.get_by_client_id(self._idp.db, client_id)

    async def organisation(self, org_id: str) -> dict[str, Any] | None:
        """`org_id`, `name` and `tier` of an organisation."""
        org = await tenants.get_org(self._idp.db, org_id)
        return None if org is None else {k: org[k] for k in ("org_id", "name", "tier")}

    async def public_keys(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's usable `private_key_jwt` keys: `credential_id`, `jwk`, `created_at`."""
        rows = await credentials.usable(self._idp.db, agent_id, "private_key_jwt")
        return [
            {
                "credential_id": row["credential_id"],
                "jwk": json.loads(row["jwk"]),
                "created_at": row["created_at"],
            }
            for row in rows
        ]

    @staticmethod
    def public_view(agent: dict[str, Any]) -> dict[str, Any]:
        """The agent as the management API shows it."""
        return agents.public_view(agent)
