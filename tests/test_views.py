"""The typed facade: views built from real rows, listings, audit verification,
usage counters, leases, and an `IdP` whose public members are only the facade."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from joserfc.jwk import ECKey
from quart import jsonify

from agentidp_server import (
    Agent,
    ChainReport,
    Credential,
    IdP,
    Lease,
    Organisation,
    Principal,
    SigningKey,
    Usage,
    principal,
    require_scope,
)
from agentidp_server.testkit import admin_headers, make_agent, make_org, token

# What a plugin may call on `idp` (docs/plugins.md, "The facade"): nothing else is public.
FACADE = {
    "agents",
    "audit",
    "db",
    "issuer",
    "keys",
    "kv",
    "leases",
    "log",
    "oauth_metadata",
    "plugin_enabled",
    "quotas",
    "registry",
    "settings",
    "settle_client_changes",
    "state",
    "tokens",
}


def test_idp_has_no_public_lifecycle_members(agentidp_idp):
    public = {name for name in dir(agentidp_idp) if not name.startswith("_")}
    assert public == FACADE
    for gone in ("hooks", "open_storage", "close_storage", "migration_sets", "query_observer"):
        assert not hasattr(agentidp_idp, gone)
    # The class too: a new public method would show here before any instance has it.
    assert {n for n in vars(IdP) if not n.startswith("_")} <= FACADE


def test_the_guide_lists_the_facade_and_the_views():
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = re.search(r"^## The facade\n(.*?)^## ", guide, re.M | re.S)
    assert section is not None, "docs/plugins.md has no 'The facade' section"
    for name in FACADE:
        assert f"idp.{name}" in section.group(1), f"idp.{name} is not in 'The facade'"
    for view in (Agent, Organisation, Credential, Principal, ChainReport, Usage):
        assert f"| `{view.__name__}`" in section.group(1), f"{view.__name__} is not documented"
        for field in dataclasses.fields(view):
            assert f"`{field.name}`" in section.group(1), f"{view.__name__}.{field.name}"


async def test_agent_and_organisation_views_from_real_rows(agentidp_client, agentidp_idp):
    acme = await make_org(agentidp_idp, "Acme", "pro")
    headers = await admin_headers(agentidp_client, acme)
    shown, _ = await make_agent(
        agentidp_client, headers, owner="ops", metadata={"team": {"name": "core"}}
    )

    agent = await agentidp_idp.agents.get(shown["agent_id"])
    assert isinstance(agent, Agent)
    assert (agent.agent_id, agent.org_id, agent.client_id) == (
        shown["agent_id"],
        acme["org_id"],
        shown["client_id"],
    )
    assert (agent.kind, agent.is_admin, agent.is_active) == ("agent", False, True)
    assert agent.scopes == ("read", "write")
    assert agent.owner == "ops"
    assert agent.metadata["team"]["name"] == "core"
    assert isinstance(agent.created_at, int)
    assert agent.public() == shown  # the management API's JSON, from the view
    assert await agentidp_idp.agents.by_client_id(shown["client_id"]) == agent

    # Frozen, slotted and read-only: a plugin cannot change what the kernel holds.
    with pytest.raises(dataclasses.FrozenInstanceError):
        agent.status = "suspended"  # type: ignore[misc]
    with pytest.raises(TypeError):
        agent.metadata["team"] = "other"  # type: ignore[index]
    assert not hasattr(agent, "__dict__")
    agent.as_row()["metadata"]["team"]["name"] = "changed"
    assert agent.metadata["team"]["name"] == "core"

    # The organisation's admin client is a view too, of kind admin, and not an agent
    # of the organisation (get_in_org is the management API's reading).
    admin = await agentidp_idp.agents.by_client_id(acme["client_id"])
    assert (admin.kind, admin.is_admin) == ("admin", True)
    assert await agentidp_idp.agents.get_in_org(acme["org_id"], admin.agent_id) is None

    organisation = await agentidp_idp.agents.organisation(acme["org_id"])
    assert isinstance(organisation, Organisation)
    assert (organisation.org_id, organisation.name, organisation.tier) == (
        acme["org_id"],
        "Acme",
        "pro",
    )
    assert organisation.created_at is not None
    assert await agentidp_idp.agents.organisation("no-such-org") is None


async def test_credential_views_never_carry_a_secret(agentidp_client, agentidp_idp):
    acme = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, acme)
    shown, secret = await make_agent(agentidp_client, headers)
    jwk = ECKey.generate_key("P-256", private=True).as_dict(private=False)
    response = await agentidp_client.post(
        f"/api/v1/agents/{shown['agent_id']}/credentials",
        json={"type": "private_key_jwt", "jwk": jwk},
        headers=headers,
    )
    assert response.status_code == 201
    key_id = (await response.get_json())["credential_id"]

    every = await agentidp_idp.agents.credentials(shown["agent_id"])
    assert {c.credential_id for c in every} == {secret["credential_id"], key_id}
    by_id = {c.credential_id: c for c in every}
    assert all(isinstance(c, Credential) for c in every)
    stored = by_id[secret["credential_id"]]
    assert (stored.type, stored.status, stored.jwk, stored.public_jwk()) == (
        "client_secret",
        "active",
        None,
        {},
    )
    assert not any(secret["client_secret"] in repr(c) for c in every)
    assert "secret_hash" not in Credential.__slots__

    (key,) = await agentidp_idp.agents.public_keys(shown["agent_id"])
    assert (key.credential_id, key.type, key.org_id) == (key_id, "private_key_jwt", acme["org_id"])
    assert (key.public_jwk()["x"], key.public_jwk()["y"]) == (jwk["x"], jwk["y"])
    assert "d" not in key.public_jwk()
    assert key.kid == key.public_jwk().get("kid")


async def test_listings_paginate_and_stay_in_their_organisation(agentidp_client, agentidp_idp):
    directory = agentidp_idp.agents
    acme = await make_org(agentidp_idp, "Acme")
    other = await make_org(agentidp_idp, "Other")
    acme_headers = await admin_headers(agentidp_client, acme)
    other_headers = await admin_headers(agentidp_client, other)
    mine = {(await make_agent(agentidp_client, acme_headers))[0]["agent_id"] for _ in range(5)}
    theirs = {(await make_agent(agentidp_client, other_headers))[0]["agent_id"] for _ in range(2)}

    seen: list[str] = []
    cursor = None
    sizes = []
    while True:
        page = await directory.agents(acme["org_id"], cursor=cursor, limit=2)
        sizes.append(len(page.items))
        seen += [a.agent_id for a in page.items]
        assert all(a.org_id == acme["org_id"] and not a.is_admin for a in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [2, 2, 1]
    assert seen == sorted(mine)  # each once, in agent_id order, admin clients excluded
    # Another organisation's cursor resumes in that organisation only.
    rest = await directory.agents(other["org_id"], cursor=cursor, limit=200)
    assert not {a.agent_id for a in rest.items} & mine
    assert {a.agent_id for a in (await directory.agents(other["org_id"])).items} == theirs

    # The management API's filters apply; a suspended agent is listed under its status.
    suspended = sorted(mine)[0]
    response = await agentidp_client.patch(
        f"/api/v1/agents/{suspended}", json={"status": "suspended"}, headers=acme_headers
    )
    assert response.status_code == 200
    page = await directory.agents(acme["org_id"], status="suspended")
    assert [a.agent_id for a in page.items] == [suspended]

    organisations: list[str] = []
    cursor = None
    while True:
        listed = await directory.organisations(cursor=cursor, limit=1)
        organisations += [o.org_id for o in listed.items]
        if listed.next_cursor is None:
            break
        cursor = listed.next_cursor
    assert organisations == sorted({acme["org_id"], other["org_id"]})

    for bad in (0, 201, True):
        with pytest.raises(ValueError, match="limit"):
            await directory.agents(acme["org_id"], limit=bad)
    with pytest.raises(ValueError, match="cursor"):
        await directory.organisations(cursor="_w")  # not UTF-8 once decoded
    with pytest.raises(ValueError, match="status"):
        await directory.agents(acme["org_id"], status="sleeping")


async def test_principal_is_the_typed_caller(agentidp_app, agentidp_client, agentidp_idp):
    @require_scope(None)
    async def whoami():
        caller = principal()
        assert isinstance(caller, Principal)
        return jsonify(
            kind=caller.kind,
            org_id=caller.org_id,
            agent_id=caller.agent_id,
            client_id=caller.client_id,
            scopes=sorted(caller.scopes),
            delegated=caller.delegated,
            credential_id=caller.credential_id,
        )

    # Added before the app serves its first request (Quart refuses routes after that).
    agentidp_app.app.add_url_rule("/test/whoami", view_func=whoami, methods=["GET"])
    acme = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, acme)
    shown, secret = await make_agent(agentidp_client, headers)
    admin = await agentidp_idp.agents.by_client_id(acme["client_id"])

    response = await agentidp_client.get("/test/whoami", headers=headers)
    assert response.status_code == 200
    body = await response.get_json()
    assert body["kind"] == "admin"
    assert (body["org_id"], body["agent_id"], body["client_id"]) == (
        acme["org_id"],
        admin.agent_id,
        acme["client_id"],
    )
    assert "agents:write" in body["scopes"]

    issued = await token(agentidp_client, shown["client_id"], secret["client_secret"], scope="read")
    response = await agentidp_client.get(
        "/test/whoami", headers={"Authorization": f"Bearer {issued['access_token']}"}
    )
    body = await response.get_json()
    assert (body["kind"], body["agent_id"], body["scopes"], body["delegated"]) == (
        "agent",
        shown["agent_id"],
        ["read"],
        False,
    )
    assert body["credential_id"] == secret["credential_id"]
    assert (await agentidp_client.get("/test/whoami")).status_code == 401


async def test_audit_verify_reports_intact_then_the_tampered_event(agentidp_client, agentidp_idp):
    acme = await make_org(agentidp_idp)
    other = await make_org(agentidp_idp, "Other")
    headers = await admin_headers(agentidp_client, acme)
    await make_agent(agentidp_client, headers)
    await admin_headers(agentidp_client, other)

    report = await agentidp_idp.audit.verify(acme["org_id"])
    assert isinstance(report, ChainReport)
    assert (report.intact, report.first_broken_seq, report.reason) == (True, None, None)
    assert report.events >= 3  # the admin's token, the agent, its credential

    await agentidp_idp.db.execute(
        "UPDATE audit_events SET outcome = 'failure' WHERE org_id = $1 AND seq = 2",
        acme["org_id"],
    )
    broken = await agentidp_idp.audit.verify(acme["org_id"])
    assert (broken.org_id, broken.intact, broken.first_broken_seq) == (acme["org_id"], False, 2)
    assert broken.reason
    # Every chain: the tampered one is reported, the other organisation's is intact.
    every = {r.org_id: r for r in await agentidp_idp.audit.verify_all()}
    assert every[acme["org_id"]] == broken
    assert every[other["org_id"]].intact


async def test_usage_reflects_issued_tokens(agentidp_client, agentidp_idp):
    acme = await make_org(agentidp_idp)
    other = await make_org(agentidp_idp, "Other")
    headers = await admin_headers(agentidp_client, acme)
    shown, secret = await make_agent(agentidp_client, headers)
    before = await agentidp_idp.quotas.usage(acme["org_id"])
    other_before = await agentidp_idp.quotas.usage(other["org_id"])
    assert isinstance(before, Usage)
    assert before.available
    assert before.tokens_today >= 1  # the admin's own token
    assert before.api_calls_today >= 2  # the two management calls of make_agent

    for _ in range(3):
        await token(agentidp_client, shown["client_id"], secret["client_secret"])
    after = await agentidp_idp.quotas.usage(acme["org_id"])
    assert after.tokens_today == before.tokens_today + 3
    assert after.tokens_this_month == before.tokens_this_month + 3
    # Each token request is an authenticated request: counted against the daily calls too.
    assert after.api_calls_today == before.api_calls_today + 3
    # The runbook's own keys hold the same numbers.
    assert await agentidp_idp.kv.get(f"rate:tier:tokens:{acme['org_id']}") == str(
        after.tokens_today
    )
    settings = agentidp_idp.settings
    assert (after.tier, after.tokens_daily_limit, after.api_calls_daily_limit) == (
        "free",
        int(settings.TIER_FREE_DAILY_TOKENS or 0),
        int(settings.TIER_FREE_DAILY_CALLS or 0),
    )
    assert after.resets_at % 86_400_000 == 0
    assert await agentidp_idp.quotas.usage(other["org_id"]) == other_before


async def test_leases_from_the_facade(agentidp_idp):
    first = agentidp_idp.leases.lease("views-test:job", ttl_ms=5_000)
    second = agentidp_idp.leases.lease("views-test:job", ttl_ms=5_000)
    assert isinstance(first, Lease)
    assert await first.acquire()
    assert not await second.acquire()  # another live holder
    async with agentidp_idp.db.transaction() as conn:
        assert await first.held_in(conn)
        assert not await second.held_in(conn)
    await first.release()
    assert await second.acquire()
    for name in ("", " ", "x" * 201):
        with pytest.raises(ValueError, match="lease name"):
            agentidp_idp.leases.lease(name)
    with pytest.raises(ValueError, match="ttl_ms"):
        agentidp_idp.leases.lease("views-test:job", ttl_ms=10)


def test_signing_key_type_is_exported(agentidp_idp):
    key = agentidp_idp.keys.signing_key()
    assert isinstance(key, SigningKey)
    assert key.alg
    assert key.kid
