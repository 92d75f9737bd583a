"""Shared helpers for the delegation plugin's tests (imported, not collected)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
ENABLED = {"DELEGATION_ENABLED": True}


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    """The plugin on (it is off until enabled), for a test module that imports this fixture."""
    return dict(ENABLED)


@dataclass
class Agent:
    """A registered agent and its client secret."""

    agent: dict[str, Any]
    credential: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.agent["agent_id"])

    @property
    def client_id(self) -> str:
        return str(self.credential["client_id"])

    @property
    def secret(self) -> str:
        return str(self.credential["client_secret"])


@dataclass
class Org:
    org: dict[str, Any]
    admin: dict[str, str]
    agents: dict[str, Agent]

    @property
    def admin_client(self) -> Agent:
        """The organisation admin as a client (introspects whatever agent is suspended)."""
        credential = {
            "client_id": self.org["client_id"],
            "client_secret": self.org["client_secret"],
        }
        return Agent({"agent_id": None}, credential)


async def make_world(
    client: Any, idp: Any, names: str = "ABCD", scopes: list[str] | None = None
) -> Org:
    """An organisation, its admin's headers and one agent per letter of `names`."""
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    agents: dict[str, Agent] = {}
    for name in names:
        agent, credential = await make_agent(
            client, headers, name=name, scopes=scopes or ["read", "write", "admin"]
        )
        agents[name] = Agent(agent, credential)
    return Org(org, headers, agents)


async def own_token(client: Any, agent: Agent, **params: str) -> str:
    body = await token(client, agent.client_id, agent.secret, **params)
    return str(body["access_token"])


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def grant(
    client: Any,
    headers: dict[str, str],
    delegator: Agent,
    delegatee: Agent,
    scopes: list[str],
    **fields: Any,
) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/delegations",
        json={"delegator": delegator.id, "delegatee": delegatee.id, "scopes": scopes, **fields},
        headers=headers,
    )
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == 201, body
    return body


async def exchange_raw(
    client: Any, actor: Agent, subject: str | None, **params: str
) -> tuple[int, dict[str, Any]]:
    """POST a token exchange as `actor`; `subject` None sends only `params`."""
    form = {"grant_type": TOKEN_EXCHANGE, **params}
    if subject is not None:
        form.setdefault("subject_token", subject)
        form.setdefault("subject_token_type", ACCESS_TOKEN_TYPE)
    response = await client.post(
        "/api/v1/token", form=form, headers=basic(actor.client_id, actor.secret)
    )
    body: dict[str, Any] = await response.get_json()
    return response.status_code, body


async def exchange(client: Any, actor: Agent, subject: str, **params: str) -> dict[str, Any]:
    status, body = await exchange_raw(client, actor, subject, **params)
    assert status == 200, body
    return body


async def refused(client: Any, actor: Agent, subject: str | None, **params: str) -> str:
    """The RFC 6749 §5.2 error code of a refused exchange."""
    status, body = await exchange_raw(client, actor, subject, **params)
    assert status in (400, 401), body
    assert set(body) == {"error", "error_description"}, body
    return str(body["error"])


async def introspect(client: Any, caller: Agent, access_token: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/token/introspect",
        form={"token": access_token},
        headers=basic(caller.client_id, caller.secret),
    )
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == 200, body
    return body


def payload(access_token: str) -> dict[str, Any]:
    part = access_token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims
