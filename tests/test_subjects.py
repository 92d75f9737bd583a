"""Tokens for subjects that are not local agents (issue 16, "Subjects").

An in-test plugin serves a `person` kind whose status check reads an in-memory
set of suspended people. Each storage behaviour runs on both adapters.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentidp_server import (
    SUBJECT_KIND_CLAIM,
    InvalidToken,
    Subject,
    SubjectKind,
    hookimpl,
    subject_kind,
)
from agentidp_server.app import build_idp, create_app
from agentidp_server.plugins import PluginError
from agentidp_server.quotas.limits import month_end_ms
from agentidp_server.settings import load_settings
from agentidp_server.testkit import admin_headers, basic, embedded_settings, make_agent, make_org

INTROSPECT = "/api/v1/token/introspect"
REVOKE = "/api/v1/token/revoke"
SUSPENDED = "Token's person is suspended"
# Exactly what an agent's client-credentials token carried before subject kinds.
AGENT_CLAIMS = {
    "iss",
    "sub",
    "aud",
    "client_id",
    "scope",
    "jti",
    "iat",
    "exp",
    "org_id",
    "credential_id",
    "iat_ms",
}


class People:
    """Serves the `person` kind: a person is valid unless suspended."""

    def __init__(self) -> None:
        self.suspended: set[str] = set()
        self.broken = False
        self.checked: list[str] = []
        self.contexts: list[Mapping[str, Any]] = []

    async def status(self, idp: Any, claims: Mapping[str, Any]) -> str | None:
        self.checked.append(str(claims["sub"]))
        if self.broken:
            raise RuntimeError("the people directory is down")
        return SUSPENDED if claims["sub"] in self.suspended else None

    @hookimpl
    def register_subject_kinds(self, idp: Any) -> list[SubjectKind]:
        return [SubjectKind("person", self.status, "A person who signed in")]

    @hookimpl
    def token_claims(self, idp: Any, context: Mapping[str, Any]) -> dict[str, Any]:
        self.contexts.append(context)
        return {}


def settings_on(storage: dict[str, Any], tmp_path: Path) -> Any:
    """Fresh settings on the test's storage: two apps in turn share its keys and rows."""
    overrides = {"DATA_DIR": str(tmp_path), "AUDIT_STRICT_ACTIONS": True, **storage}
    return load_settings(env="test", overrides=overrides, environ={})


class Served:
    def __init__(self, idp: Any, client: Any, people: People) -> None:
        self.idp, self.client, self.people = idp, client, people

    async def introspect(self, token: str, org: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(
            INTROSPECT, form={"token": token}, headers=basic(org["client_id"], org["client_secret"])
        )
        assert response.status_code == 200
        body: dict[str, Any] = await response.get_json()
        return body

    async def mint_person(self, org: dict[str, Any], person: str = "p-1", **kw: Any) -> Any:
        return await self.idp.tokens.mint(
            subject=Subject("person", person, org["org_id"]),
            scopes=["openid", "profile"],
            audience=self.idp.tokens.default_audience(),
            grant_type="authorization_code",
            **kw,
        )


@pytest.fixture
async def served(agentidp_storage: dict[str, Any], tmp_path: Path) -> AsyncIterator[Served]:
    people = People()
    idp = build_idp(settings_on(agentidp_storage, tmp_path))
    idp._hooks.add(people, "people")
    app = create_app(idp=idp)
    async with app.test_app() as test_app:
        yield Served(idp, test_app.test_client(), people)


async def test_a_person_token_verifies_and_introspects(served):
    idp = served.idp
    org = await make_org(idp)
    token, claims = await served.mint_person(org)
    assert claims["sub"] == "p-1"
    assert claims[SUBJECT_KIND_CLAIM] == "person"
    # No OAuth client asked: the subject's own label, never a real client id.
    assert claims["client_id"] == "person:p-1"
    assert "credential_id" not in claims
    assert subject_kind(claims) == "person"
    # token_claims hooks see the subject, and no agent.
    context = served.people.contexts[-1]
    assert context["agent"] is None
    assert context["subject"] == Subject("person", "p-1", org["org_id"])

    assert await idp.tokens.verify(token) == claims
    assert served.people.checked == ["p-1"]
    body = await served.introspect(token, org)
    assert body["active"] is True
    assert (body["sub"], body[SUBJECT_KIND_CLAIM]) == ("p-1", "person")
    # Another tenant's client sees it inactive (RFC 7662 §2.2), as for an agent's token.
    other = await make_org(idp, name="Other")
    assert await served.introspect(token, other) == {"active": False}


async def test_a_person_token_is_counted_and_audited_for_its_subject(served):
    idp = served.idp
    org = await make_org(idp)
    _, claims = await served.mint_person(org, person="p-7")
    month, _ = month_end_ms(int(time.time() * 1000))
    assert await idp.kv.get(f"monthly:person:p-7:{month}") == "1"
    row = await idp.db.fetchrow(
        "SELECT actor_client_id, actor_agent_id, details FROM audit_events "
        "WHERE action = 'token.issued' AND target_id = $1",
        claims["jti"],
    )
    assert row is not None
    assert (row["actor_client_id"], row["actor_agent_id"]) == ("person:p-7", None)
    details = json.loads(row["details"])
    assert (details["subject_kind"], details["sub"]) == ("person", "p-7")
    assert "credential_id" not in details


async def test_revoking_a_person_token(served):
    idp, client = served.idp, served.client
    org = await make_org(idp)
    token, _ = await served.mint_person(org)
    # An org admin may revoke any token of its organisation (RFC 7009 §2.1).
    response = await client.post(
        REVOKE, form={"token": token}, headers=basic(org["client_id"], org["client_secret"])
    )
    assert response.status_code == 200
    assert await served.introspect(token, org) == {"active": False}
    with pytest.raises(InvalidToken, match="Token has been revoked"):
        await idp.tokens.verify(token)
    assert served.people.checked == []  # revocation is checked before the kind's status


async def test_a_person_token_asked_for_by_a_client_is_that_clients(served):
    idp, client = served.idp, served.client
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    rp, rp_secret = await make_agent(client, headers, name="rp")
    _, other_secret = await make_agent(client, headers, name="other")
    token, claims = await served.mint_person(
        org, client_id=rp_secret["client_id"], credential_id=rp_secret["credential_id"]
    )
    assert claims["client_id"] == rp_secret["client_id"]
    # Neither the owner nor an org admin: refused.
    response = await client.post(
        REVOKE,
        form={"token": token},
        headers=basic(other_secret["client_id"], other_secret["client_secret"]),
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "unauthorized_client"
    assert (await served.introspect(token, org))["active"] is True
    # Revoking the client's credential ends the tokens it asked for.
    response = await client.delete(
        f"/api/v1/agents/{rp['agent_id']}/credentials/{rp_secret['credential_id']}",
        headers=headers,
    )
    assert response.status_code in (200, 204), await response.get_data()
    with pytest.raises(InvalidToken, match="Token's credential has been revoked"):
        await idp.tokens.verify(token)
    # The owner may revoke its own (a fresh one: its credential above is gone).
    token, _ = await served.mint_person(org, client_id=other_secret["client_id"])
    response = await client.post(
        REVOKE,
        form={"token": token},
        headers=basic(other_secret["client_id"], other_secret["client_secret"]),
    )
    assert response.status_code == 200
    assert await served.introspect(token, org) == {"active": False}


async def test_suspending_the_person_ends_its_tokens(served):
    idp, client = served.idp, served.client
    org = await make_org(idp)
    token, _ = await served.mint_person(org)
    served.people.suspended.add("p-1")
    with pytest.raises(InvalidToken, match=SUSPENDED):
        await idp.tokens.verify(token)
    assert await served.introspect(token, org) == {"active": False}
    response = await client.get("/api/v1/agents", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert (await response.get_json())["message"] == SUSPENDED
    served.people.suspended.clear()
    assert (await served.introspect(token, org))["active"] is True


async def test_a_status_check_that_raises_fails_closed(served, caplog):
    org = await make_org(served.idp)
    token, _ = await served.mint_person(org)
    served.people.broken = True
    with pytest.raises(InvalidToken, match="Token status could not be checked"):
        await served.idp.tokens.verify(token)
    assert await served.introspect(token, org) == {"active": False}
    assert "subject kind person failed its status check" in caplog.text


async def test_with_the_kind_disabled_its_tokens_are_inactive_not_errors(
    served, agentidp_storage, tmp_path
):
    org = await make_org(served.idp)
    token, _ = await served.mint_person(org)
    # The same storage (keys, rows), now served without the people plugin.
    app = create_app(settings_on(agentidp_storage, tmp_path))
    async with app.test_app() as test_app:
        idp = test_app.app.extensions["agentidp"]
        assert "person" not in idp.tokens.subject_kinds()
        with pytest.raises(InvalidToken, match="Token's subject kind is not served"):
            await idp.tokens.verify(token)
        response = await test_app.test_client().post(
            INTROSPECT, form={"token": token}, headers=basic(org["client_id"], org["client_secret"])
        )
        assert response.status_code == 200
        assert await response.get_json() == {"active": False}
        with pytest.raises(ValueError, match="subject kind 'person' is not served"):
            await idp.tokens.mint(
                subject=Subject("person", "p-1", org["org_id"]),
                scopes=[],
                audience=idp.tokens.default_audience(),
                grant_type="authorization_code",
            )


async def test_agent_tokens_are_shaped_as_before(served):
    idp, client = served.idp, served.client
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    agent, secret = await make_agent(client, headers)
    response = await client.post(
        "/api/v1/token",
        form={"grant_type": "client_credentials"},
        headers=basic(secret["client_id"], secret["client_secret"]),
    )
    token = (await response.get_json())["access_token"]
    claims = await idp.tokens.verify(token)
    assert set(claims) - {"did"} == AGENT_CLAIMS  # `did` only while the DID plugin is on
    assert subject_kind(claims) == "agent"
    assert served.people.checked == []  # an agent's token never asks another kind
    assert served.people.contexts[-1]["agent"]["agent_id"] == agent["agent_id"]
    assert "subject" not in served.people.contexts[-1]
    # A mapped local agent, minted by Subject: the same shape as its client's tokens.
    _, mapped = await idp.tokens.mint(
        subject=Subject("agent", agent["agent_id"], org["org_id"]),
        credential_id=secret["credential_id"],
        scopes=["read"],
        audience=idp.tokens.default_audience(),
        grant_type="urn:example:mapped",
    )
    assert set(mapped) - {"did"} == AGENT_CLAIMS
    assert mapped["client_id"] == secret["client_id"]


async def test_an_agent_token_claiming_the_agent_kind_is_not_trusted(served):
    idp = served.idp
    org = await make_org(idp)
    admin = await idp.agents.by_client_id(org["client_id"])
    row = await idp.db.fetchrow(
        "SELECT credential_id FROM credentials WHERE agent_id = $1", admin.agent_id
    )
    token, _ = await idp.tokens.mint(
        agent=admin,
        credential_id=row["credential_id"],
        client_id=org["client_id"],
        scopes=[],
        audience=idp.tokens.default_audience(),
        grant_type="client_credentials",
        extra={SUBJECT_KIND_CLAIM: "agent"},
    )
    # The kernel never writes the claim for an agent: a token carrying it is refused.
    with pytest.raises(InvalidToken, match="Token's subject kind is not served"):
        await idp.tokens.verify(token)
    assert await served.introspect(token, org) == {"active": False}


# Registration (no storage involved) -------------------------------------------


class Kinds:
    def __init__(self, *names: str) -> None:
        self.names = names

    async def status(self, idp: Any, claims: Mapping[str, Any]) -> str | None:
        return None

    @hookimpl
    def register_subject_kinds(self, idp: Any) -> list[SubjectKind]:
        return [SubjectKind(name, self.status) for name in self.names]


def test_the_kernel_serves_the_agent_kind(tmp_path):
    idp = build_idp(embedded_settings(tmp_path))
    assert list(idp._hooks.subject_kinds(idp)) == ["agent"]


@pytest.mark.parametrize(
    ("second", "owner"), [(Kinds("person"), "people"), (Kinds("agent"), "core")]
)
def test_a_kind_registered_twice_stops_startup(tmp_path, second, owner):
    idp = build_idp(embedded_settings(tmp_path))
    idp._hooks.add(Kinds("person"), "people")
    idp._hooks.add(second, "second")
    name = second.names[0]
    with pytest.raises(
        PluginError,
        match=f"plugin 'second': subject kind '{name}' is already registered by '{owner}'",
    ):
        create_app(idp=idp)


@pytest.mark.parametrize("name", ["", "Person", "a person", "x" * 33, "9lives"])
def test_a_badly_named_kind_stops_startup(tmp_path, name):
    idp = build_idp(embedded_settings(tmp_path))
    idp._hooks.add(Kinds(name), "people")
    with pytest.raises(PluginError, match=r"plugin 'people': subject kind name .* must be"):
        create_app(idp=idp)


def test_a_plugin_may_not_set_the_kind_claim_itself(tmp_path):
    from agentidp_server.plugins import REGISTERED_CLAIMS

    assert SUBJECT_KIND_CLAIM in REGISTERED_CLAIMS


@pytest.mark.parametrize("field", ["kind", "subject_id", "org_id"])
def test_a_subject_needs_every_field(field):
    values = {"kind": "person", "subject_id": "p-1", "org_id": "o-1", field: ""}
    with pytest.raises(ValueError, match=f"Subject.{field} must be a non-empty string"):
        Subject(**values)


AN_AGENT = {"agent_id": "a", "org_id": "o"}


@pytest.mark.parametrize(
    "who",
    [
        {},  # nobody
        {"agent": AN_AGENT, "subject": Subject("person", "p", "o"), "client_id": "c"},  # both
        {"agent": AN_AGENT, "client_id": "c"},  # an agent without its credential
        {"agent": AN_AGENT},  # an agent without its client
    ],
)
async def test_mint_takes_an_agent_with_its_client_or_a_subject(tmp_path, who):
    idp = build_idp(embedded_settings(tmp_path))
    credential = {"credential_id": "k"} if who.get("subject") else {}
    with pytest.raises(TypeError, match="mint"):
        await idp.tokens.mint(**who, **credential, scopes=[], audience="x", grant_type="g")
