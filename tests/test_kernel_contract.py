"""Issue 16's first "Done when": one plugin, written here against the public contract
only, registers together and beside the real delegation plugin

* a grant with no client authentication (TOKEN_ENDPOINT_AUTH_METHODS = ("none",)),
* an RFC 8693 token exchange handler for a subject token type of its own,
* a scope that org admins hold, including admins of an organisation created
  before the plugin was enabled,
* an audit action its grant records, and
* an audit consumer whose handler fails twice on that event, then accepts it,

and each works, over HTTP, on both storage adapters. The plugin is published as
the `contract` entry point and switched on with CONTRACT_ENABLED, as a third
party's plugin would be.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agentidp_server import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    Actor,
    AuditAction,
    ExchangedToken,
    IdP,
    OAuthError,
    Scope,
    TokenExchange,
    TokenRequest,
    UndeclaredAuditAction,
    hookimpl,
)
from agentidp_server.app import create_app
from agentidp_server.settings import load_settings
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token

TOKEN = "/api/v1/token"
METADATA = "/.well-known/oauth-authorization-server"
INTROSPECT = "/api/v1/token/introspect"

TICKET_GRANT = "urn:example:params:oauth:grant-type:ticket"
TEST_TOKEN_TYPE = "urn:example:params:oauth:token-type:test"
SCOPE = "contract:read"
REDEEMED = "contract.ticket_redeemed"
KERNEL_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


class TicketGrant:
    """A one-time ticket redeemed by a public client (RFC 6749 §2.1): no client
    authentication, only the `client_id` the ticket was made out to."""

    grant_type = TICKET_GRANT
    TOKEN_ENDPOINT_AUTH_METHODS = ("none",)

    def __init__(self, plugin: ContractPlugin) -> None:
        self.plugin = plugin

    async def issue(self, request: TokenRequest) -> dict[str, Any]:
        assert request.client is None  # the kernel authenticated nobody
        ticket = self.plugin.tickets.pop(request.params.get("ticket", ""), None)
        if ticket is None or ticket["client_id"] != request.unauthenticated_client_id:
            raise OAuthError("invalid_grant", "unknown ticket")
        idp = request.idp
        agent = await idp.agents.get(ticket["agent_id"])
        if agent is None or agent.status != "active":
            raise OAuthError("invalid_grant", "the ticket's agent is not active")
        access, claims = await idp.tokens.mint(
            agent=agent,
            credential_id=ticket["credential_id"],
            client_id=ticket["client_id"],
            scopes=sorted(agent.scopes),
            audience=idp.tokens.default_audience(),
            grant_type=TICKET_GRANT,
        )
        await idp.audit.record(
            idp.db,
            org_id=agent.org_id,
            action=REDEEMED,
            actor=Actor(client_id=ticket["client_id"], agent_id=agent.agent_id),
            target_type="token",
            target_id=claims["jti"],
        )
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": claims["scope"],
        }


class TestTokenExchange:
    """RFC 8693 for `test:<anything>` subject tokens: a token of the client itself."""

    __test__ = False  # not a pytest class
    subject_token_types = (TEST_TOKEN_TYPE,)
    actor_token_types: tuple[str, ...] = ()
    issued_token_types = (ACCESS_TOKEN_TYPE,)
    issuer: str | None = None

    def __init__(self, plugin: ContractPlugin) -> None:
        self.plugin = plugin

    async def exchange(self, exchange: TokenExchange) -> ExchangedToken:
        if not exchange.subject_token.startswith("test:"):
            raise OAuthError("invalid_grant", "subject_token is not a test token")
        self.plugin.exchanged.append(exchange.subject_token)
        client, idp = exchange.client, exchange.idp
        access, claims = await idp.tokens.mint(
            agent=client.agent,
            credential_id=client.credential_id,
            client_id=client.client_id,
            scopes=exchange.scope or sorted(client.agent["scopes"]),
            audience=idp.tokens.default_audience(),
            grant_type=TOKEN_EXCHANGE,
        )
        return ExchangedToken(
            access, ACCESS_TOKEN_TYPE, claims["exp"] - claims["iat"], claims["scope"]
        )


class ContractPlugin:
    """The test plugin: every registration of issue 16's contract in one place."""

    def __init__(self) -> None:
        self.tickets: dict[str, dict[str, str]] = {}
        self.exchanged: list[str] = []
        self.failures_left = 2  # the audit consumer refuses REDEEMED this many times
        self.attempts: list[tuple[str, int, str]] = []
        self.accepted: list[tuple[str, int, str]] = []

    def ticket_for(self, agent: Mapping[str, Any], credential: Mapping[str, Any]) -> str:
        ticket = secrets.token_urlsafe(16)
        self.tickets[ticket] = {
            "agent_id": agent["agent_id"],
            "credential_id": credential["credential_id"],
            "client_id": credential["client_id"],
        }
        return ticket

    @hookimpl
    def register_grant_types(self, idp: IdP) -> list[TicketGrant]:
        return [TicketGrant(self)]

    @hookimpl
    def register_token_exchange_handlers(self, idp: IdP) -> list[TestTokenExchange]:
        return [TestTokenExchange(self)]

    @hookimpl
    def register_scopes(self, idp: IdP) -> list[Scope]:
        return [Scope(SCOPE, "Read what the contract plugin keeps", admin=True)]

    @hookimpl
    def register_audit_actions(self, idp: IdP) -> list[AuditAction]:
        return [AuditAction(REDEEMED, "A ticket was redeemed for an access token")]

    @hookimpl
    async def audit_event(self, event: Mapping[str, Any]) -> None:
        key = (event["org_id"], event["seq"], event["action"])
        self.attempts.append(key)
        if event["action"] == REDEEMED and self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("the contract consumer refuses this event on purpose")
        self.accepted.append(key)


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> ContractPlugin:
    """Publish a fresh ContractPlugin as the `contract` entry point beside the installed
    plugins: CONTRACT_ENABLED switches it like any other."""
    import agentidp_server.plugins as plugins_module

    published = ContractPlugin()
    real = plugins_module.entry_points

    class EntryPoint:
        name, dist = "contract", None

        def load(self) -> ContractPlugin:
            return published

    monkeypatch.setattr(
        plugins_module, "entry_points", lambda group: [*real(group=group), EntryPoint()]
    )
    return published


@asynccontextmanager
async def serving(
    tmp_path: Path, storage: dict[str, Any], *, contract: bool
) -> AsyncIterator[tuple[Any, IdP]]:
    """The app beside the real delegation plugin, strict about audit actions as tests are."""
    overrides = {
        "DATA_DIR": str(tmp_path),
        "AUDIT_STRICT_ACTIONS": True,
        "AUDIT_DISPATCH_INTERVAL": 0.05,
        "AUDIT_CONSUMER_RETRY_MIN": 0,  # a failed event is retried at the next round
        "DELEGATION_ENABLED": True,
        "CONTRACT_ENABLED": contract,
        **storage,
    }
    app = create_app(load_settings(env="test", overrides=overrides, environ={}))
    async with app.test_app() as test_app:
        yield test_app.test_client(), app.extensions["agentidp"]


def claims_of(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


async def introspect(client: Any, org: dict[str, Any], access: str) -> dict[str, Any]:
    response = await client.post(
        INTROSPECT, form={"token": access}, headers=basic(org["client_id"], org["client_secret"])
    )
    body: dict[str, Any] = await response.get_json()
    assert response.status_code == 200, body
    return body


async def test_a_grant_without_client_authentication(tmp_path, agentidp_storage, plugin):
    async with serving(tmp_path, agentidp_storage, contract=False) as (client, _):
        off = await (await client.get(METADATA)).get_json()
    # No served grant accepts "none", so it is not listed (RFC 8414 §2).
    assert off["token_endpoint_auth_methods_supported"] == KERNEL_METHODS
    assert TICKET_GRANT not in off["grant_types_supported"]

    async with serving(tmp_path, agentidp_storage, contract=True) as (client, idp):
        metadata = await (await client.get(METADATA)).get_json()
        assert metadata["grant_types_supported"].count(TICKET_GRANT) == 1
        assert metadata["token_endpoint_auth_methods_supported"] == [*KERNEL_METHODS, "none"]
        # Introspection and revocation still require an authenticated client.
        assert "none" not in metadata["introspection_endpoint_auth_methods_supported"]
        assert "none" not in metadata["revocation_endpoint_auth_methods_supported"]

        org = await make_org(idp)
        agent, credential = await make_agent(client, await admin_headers(client, org))
        ticket = plugin.ticket_for(agent, credential)
        # Client credentials presented to a grant that accepts only "none" are refused.
        refused = await client.post(
            TOKEN,
            form={"grant_type": TICKET_GRANT, "ticket": ticket},
            headers=basic(credential["client_id"], credential["client_secret"]),
        )
        assert refused.status_code == 401
        assert (await refused.get_json())["error"] == "invalid_client"

        # No Authorization header and no secret: only the public client_id.
        response = await client.post(
            TOKEN,
            form={
                "grant_type": TICKET_GRANT,
                "ticket": ticket,
                "client_id": credential["client_id"],
            },
        )
        body = await response.get_json()
        assert response.status_code == 200, body
        assert response.headers["Cache-Control"] == "no-store"
        claims = claims_of(body["access_token"])
        assert (claims["sub"], claims["client_id"]) == (agent["agent_id"], credential["client_id"])
        assert (await introspect(client, org, body["access_token"]))["active"] is True

        # The ticket was for one use.
        again = await client.post(
            TOKEN,
            form={
                "grant_type": TICKET_GRANT,
                "ticket": ticket,
                "client_id": credential["client_id"],
            },
        )
        assert (again.status_code, (await again.get_json())["error"]) == (400, "invalid_grant")


async def test_a_token_exchange_handler_beside_delegations(tmp_path, agentidp_storage, plugin):
    async with serving(tmp_path, agentidp_storage, contract=True) as (client, idp):
        metadata = await (await client.get(METADATA)).get_json()
        assert metadata["grant_types_supported"].count(TOKEN_EXCHANGE) == 1
        org = await make_org(idp)
        headers = await admin_headers(client, org)
        a, a_secret = await make_agent(client, headers, name="A")
        b, b_secret = await make_agent(client, headers, name="B")
        delegated = await client.post(
            "/api/v1/delegations",
            json={"delegator": a["agent_id"], "delegatee": b["agent_id"], "scopes": ["read"]},
            headers=headers,
        )
        assert delegated.status_code == 201, await delegated.get_json()
        subject = (await token(client, a_secret["client_id"], a_secret["client_secret"]))[
            "access_token"
        ]
        as_b = basic(b_secret["client_id"], b_secret["client_secret"])

        async def exchange(subject_token: str, subject_token_type: str) -> tuple[int, Any]:
            response = await client.post(
                TOKEN,
                form={
                    "grant_type": TOKEN_EXCHANGE,
                    "subject_token": subject_token,
                    "subject_token_type": subject_token_type,
                },
                headers=as_b,
            )
            return response.status_code, await response.get_json()

        # Delegation's handler: B acts for A (RFC 8693 §4.1).
        status, body = await exchange(subject, ACCESS_TOKEN_TYPE)
        assert status == 200, body
        assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
        claims = claims_of(body["access_token"])
        assert (claims["sub"], claims["act"]) == (a["agent_id"], {"sub": b["agent_id"]})
        assert plugin.exchanged == []

        # Ours, in the same app: a token of B itself, no `act`.
        status, body = await exchange("test:one", TEST_TOKEN_TYPE)
        assert status == 200, body
        assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
        assert body["token_type"] == "Bearer"
        claims = claims_of(body["access_token"])
        assert claims["sub"] == b["agent_id"]
        assert "act" not in claims
        assert plugin.exchanged == ["test:one"]
        assert (await introspect(client, org, body["access_token"]))["active"] is True

        # A type no handler takes: RFC 8693 §2.2.2's invalid_request, naming what is taken.
        status, body = await exchange("x", "urn:example:params:oauth:token-type:unknown")
        assert status == 400
        assert body["error"] == "invalid_request"
        assert TEST_TOKEN_TYPE in body["error_description"]
        assert ACCESS_TOKEN_TYPE in body["error_description"]
        assert plugin.exchanged == ["test:one"]


async def test_a_scope_for_admins_of_earlier_organisations(tmp_path, agentidp_storage, plugin):
    async with serving(tmp_path, agentidp_storage, contract=False) as (client, idp):
        org = await make_org(idp)  # created while the plugin is off
        before = await token(client, org["client_id"], org["client_secret"])
        assert SCOPE not in before["scope"].split()
        assert SCOPE not in (await (await client.get(METADATA)).get_json())["scopes_supported"]

    async with serving(tmp_path, agentidp_storage, contract=True) as (client, idp):
        assert SCOPE in (await (await client.get(METADATA)).get_json())["scopes_supported"]
        issued = await token(client, org["client_id"], org["client_secret"], scope=SCOPE)
        assert issued["scope"] == SCOPE
        everything = await token(client, org["client_id"], org["client_secret"])
        assert {SCOPE, "agents:read"} <= set(everything["scope"].split())
        # An agent holds only the scopes it was given.
        _, credential = await make_agent(client, await admin_headers(client, org))
        response = await client.post(
            TOKEN,
            form={"grant_type": "client_credentials", "scope": SCOPE},
            headers=basic(credential["client_id"], credential["client_secret"]),
        )
        assert (response.status_code, (await response.get_json())["error"]) == (
            400,
            "invalid_scope",
        )


async def test_an_audit_action_and_a_consumer_that_fails_twice(tmp_path, agentidp_storage, plugin):
    async with serving(tmp_path, agentidp_storage, contract=False) as (_, idp):
        # Disabled, the plugin's action is undeclared: strict mode refuses it.
        with pytest.raises(UndeclaredAuditAction):
            await idp.audit.record(idp.db, org_id="org-x", action=REDEEMED)

    async with serving(tmp_path, agentidp_storage, contract=True) as (client, idp):
        with pytest.raises(UndeclaredAuditAction):
            await idp.audit.record(idp.db, org_id="org-x", action="contract.undeclared")
        org = await make_org(idp)
        headers = await admin_headers(client, org)
        agent, credential = await make_agent(client, headers)
        response = await client.post(
            TOKEN,
            form={
                "grant_type": TICKET_GRANT,
                "ticket": plugin.ticket_for(agent, credential),
                "client_id": credential["client_id"],
            },
        )
        assert response.status_code == 200, await response.get_json()
        jti = claims_of((await response.get_json())["access_token"])["jti"]

        # Recorded, and readable through the audit API.
        listed = await client.get(f"/api/v1/audit?action={REDEEMED}", headers=headers)
        (event,) = (await listed.get_json())["data"]
        assert (event["action"], event["target_id"]) == (REDEEMED, jti)
        assert event["actor_client_id"] == credential["client_id"]
        redeemed = (org["org_id"], event["seq"], REDEEMED)

        # The consumer refuses it twice, then accepts it; the background dispatcher retries.
        await until(lambda: redeemed in plugin.accepted)
        registry = idp.registry
        label = {"consumer": "contract"}
        await until(lambda: registry.get_sample_value("agentidp_audit_consumer_lag", label) == 0)
        metrics = (await (await client.get("/metrics")).get_data()).decode()
        assert 'agentidp_audit_consumer_failures_total{consumer="contract"} 2.0' in metrics
        assert 'agentidp_audit_consumer_lag{consumer="contract"} 0.0' in metrics

    assert plugin.attempts.count(redeemed) == 3
    assert plugin.accepted.count(redeemed) == 1
    # Exactly once and in chain order: each org's accepted seqs run on without gap or repeat.
    ours = [seq for org_id, seq, _ in plugin.accepted if org_id == org["org_id"]]
    assert ours == list(range(ours[0], ours[0] + len(ours)))
    assert redeemed[1] in ours
