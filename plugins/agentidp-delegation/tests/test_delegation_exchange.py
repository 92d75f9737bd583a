"""RFC 8693 token exchange through delegation grants: nesting, narrowing, refusals."""

from __future__ import annotations

import time

import pytest
from agentidp_server.testkit import basic
from delegation_helpers import (
    ACCESS_TOKEN_TYPE,
    ENABLED,
    TOKEN_EXCHANGE,
    agentidp_overrides,  # noqa: F401 - the fixture: the plugin on
    exchange,
    exchange_raw,
    grant,
    introspect,
    make_world,
    own_token,
    payload,
    refused,
)


async def test_a_to_b_issues_sub_a_act_b(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp)
    a, b = w.agents["A"], w.agents["B"]
    g = await grant(agentidp_client, w.admin, a, b, ["read", "write"])
    subject = await own_token(agentidp_client, a)
    body = await exchange(agentidp_client, b, subject)
    # RFC 8693 §2.2.1: the response fields, with the issued token's type.
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read write"
    assert 0 < body["expires_in"] <= payload(subject)["exp"] - int(time.time())
    claims = payload(body["access_token"])
    assert claims["sub"] == a.id
    # §4.1: the current actor is `act.sub`; nothing nested for a one-hop chain.
    assert claims["act"] == {"sub": b.id}
    assert claims["delegation_chain"] == [g["delegation_id"]]
    # The actor holds the token: its client id and credential (documented choice).
    assert claims["client_id"] == b.client_id
    assert claims["credential_id"] == b.credential["credential_id"]
    assert claims["exp"] <= payload(subject)["exp"]
    # §4.1 at introspection: `act` is returned (RFC 7662 carries all claims).
    seen = await introspect(agentidp_client, b, body["access_token"])
    assert seen["active"] is True
    assert seen["act"] == {"sub": b.id}
    assert seen["sub"] == a.id


async def test_a_to_b_to_c_nests_the_earlier_actor_inside(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp)
    a, b, c, d = (w.agents[n] for n in "ABCD")
    g1 = await grant(agentidp_client, w.admin, a, b, ["read", "write"], max_depth=2)
    g2 = await grant(agentidp_client, w.admin, b, c, ["read", "write"], max_depth=1)
    g3 = await grant(agentidp_client, w.admin, c, d, ["read"])
    t1 = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))["access_token"]
    t2 = (await exchange(agentidp_client, c, t1, scope="read write"))["access_token"]
    claims = payload(t2)
    assert claims["sub"] == a.id
    # §4.1: the current actor outermost, the prior actor nested inside it.
    assert claims["act"] == {"sub": c.id, "act": {"sub": b.id}}
    assert claims["delegation_chain"] == [g1["delegation_id"], g2["delegation_id"]]
    t3 = (await exchange(agentidp_client, d, t2))["access_token"]
    assert payload(t3)["act"] == {"sub": d.id, "act": {"sub": c.id, "act": {"sub": b.id}}}
    assert payload(t3)["scope"] == "read"
    seen = await introspect(agentidp_client, d, t3)
    assert seen["active"] is True
    assert seen["act"]["act"]["act"] == {"sub": b.id}
    assert seen["delegation_chain"] == [g["delegation_id"] for g in (g1, g2, g3)]


async def test_exchange_is_audited_with_the_full_chain(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, b, c, ["read"])
    t1 = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))["access_token"]
    t2 = (await exchange(agentidp_client, c, t1))["access_token"]
    events = await agentidp_idp.audit.read(w.org["org_id"], 0, 500)
    issued = [e for e in events if e["action"] == "token.issued"]
    by_jti = {e["target_id"]: e for e in issued}
    event = by_jti[payload(t2)["jti"]]
    assert event["details"]["grant_type"] == TOKEN_EXCHANGE
    assert event["details"]["act"] == {"sub": c.id, "act": {"sub": b.id}}
    metrics = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert "agentidp_delegation_chains_created_total 2.0" in metrics


async def test_requested_scope_and_audience_only_narrow(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read", "write"])
    api = "https://api.example.com"
    subject = await own_token(agentidp_client, a, resource=api)
    body = await exchange(agentidp_client, b, subject, scope="read", resource=api)
    assert body["scope"] == "read"
    assert payload(body["access_token"])["aud"] == api
    body = await exchange(agentidp_client, b, subject, audience=api)
    assert payload(body["access_token"])["aud"] == api


async def test_grant_audience_and_expiry_bound_the_token(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    api = "https://api.example.com"
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    await grant(agentidp_client, w.admin, a, b, ["read"], audience=api, expires_at=soon)
    # The subject token's audience is the issuer: the grant's audience is not within it.
    assert await refused(agentidp_client, b, await own_token(agentidp_client, a)) == (
        "invalid_target"
    )
    body = await exchange(agentidp_client, b, await own_token(agentidp_client, a, resource=api))
    claims = payload(body["access_token"])
    assert claims["aud"] == api
    assert claims["exp"] <= int(time.time()) + 120


# Refusals (RFC 8693 §2.2.2) ----------------------------------------------------


async def test_scope_widening_is_invalid_scope(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read", "write"])
    narrow_subject = await own_token(agentidp_client, a, scope="read")
    # Wider than the subject token's scope...
    assert await refused(agentidp_client, b, narrow_subject, scope="write") == "invalid_scope"
    subject = await own_token(agentidp_client, a)
    # ...and wider than the grant's, though the subject token carries it.
    assert await refused(agentidp_client, b, subject, scope="admin") == "invalid_scope"
    assert await refused(agentidp_client, b, subject, scope="read nope") == "invalid_scope"


async def test_audience_widening_is_invalid_target(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read"])
    subject = await own_token(agentidp_client, a, resource="https://api.example.com")
    for params in (
        {"audience": "https://other.example.com"},
        {"resource": "https://other.example.com"},
        {"resource": "not a uri"},
        {"resource": "http://[::1"},  # urlsplit raises on it
    ):
        assert await refused(agentidp_client, b, subject, **params) == "invalid_target"


async def test_depth_over_the_limit_is_refused(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABCD")
    a, b, c, d = (w.agents[n] for n in "ABCD")
    # DELEGATION_MAX_DEPTH is 3 by default; a grant may allow at most 2 onward hops.
    response = await agentidp_client.post(
        "/api/v1/delegations",
        json={"delegator": a.id, "delegatee": b.id, "scopes": ["read"], "max_depth": 3},
        headers=w.admin,
    )
    assert response.status_code == 400
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=2)
    await grant(agentidp_client, w.admin, b, c, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, c, d, ["read"], max_depth=2)
    await grant(agentidp_client, w.admin, d, a, ["read"])
    t = await own_token(agentidp_client, a)
    for actor in (b, c, d):
        t = (await exchange(agentidp_client, actor, t))["access_token"]
    assert len(payload(t)["delegation_chain"]) == 3
    e = w.agents["A"]  # any fourth hop would exceed the limit (and here also cycle)
    assert await refused(agentidp_client, e, t) == "invalid_grant"


@pytest.mark.parametrize("agentidp_overrides", [{**ENABLED, "DELEGATION_MAX_DEPTH": 2}])
async def test_depth_limit_comes_from_settings(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABCD")
    a, b, c, d = (w.agents[n] for n in "ABCD")
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, b, c, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, c, d, ["read"])
    t = await own_token(agentidp_client, a)
    t = (await exchange(agentidp_client, b, t))["access_token"]
    t = (await exchange(agentidp_client, c, t))["access_token"]
    status, body = await exchange_raw(agentidp_client, d, t)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "2 hops" in body["error_description"]


async def test_a_grant_max_depth_bounds_onward_delegation(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read"])  # max_depth 0: B may not pass it on
    await grant(agentidp_client, w.admin, b, c, ["read"], max_depth=2)
    t1 = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))["access_token"]
    status, body = await exchange_raw(agentidp_client, c, t1)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "no further delegation" in body["error_description"]


async def test_cycles_are_refused(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, b, a, ["read"], max_depth=1)
    subject = await own_token(agentidp_client, a)
    t1 = (await exchange(agentidp_client, b, subject))["access_token"]
    # A→B→A: A would get its own authority back through B.
    assert await refused(agentidp_client, a, t1) == "invalid_grant"
    # B re-exchanging its own delegated token, or A exchanging its own token.
    assert await refused(agentidp_client, b, t1) == "invalid_grant"
    assert await refused(agentidp_client, a, subject) == "invalid_grant"


async def test_revoked_grant_is_invalid_grant(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    g = await grant(agentidp_client, w.admin, a, b, ["read"])
    response = await agentidp_client.delete(
        f"/api/v1/delegations/{g['delegation_id']}", headers=w.admin
    )
    assert response.status_code == 200
    assert await refused(agentidp_client, b, await own_token(agentidp_client, a)) == (
        "invalid_grant"
    )


async def test_missing_grant_is_invalid_grant(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    assert await refused(agentidp_client, b, await own_token(agentidp_client, a)) == (
        "invalid_grant"
    )


async def test_expired_subject_token_is_invalid_grant(
    agentidp_client, agentidp_idp, agentidp_clock
):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    a, b = w.agents["A"], w.agents["B"]
    await grant(agentidp_client, w.admin, a, b, ["read"])
    subject, claims = await agentidp_idp.tokens.mint(
        agent=a.agent,
        credential_id=a.credential["credential_id"],
        client_id=a.client_id,
        scopes=["read"],
        audience=agentidp_idp.tokens.default_audience(),
        grant_type="client_credentials",
        lifetime=1,
    )
    # Expired from the instant exp names (RFC 7519 §4.1.4: "on or after").
    agentidp_clock.advance(ms=claims["exp"] * 1000 - agentidp_clock.now_ms())
    status, body = await exchange_raw(agentidp_client, b, subject)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "expired" in body["error_description"]


async def test_subject_token_of_another_organisation_is_invalid_grant(
    agentidp_client, agentidp_idp
):
    here = await make_world(agentidp_client, agentidp_idp, "AB")
    there = await make_world(agentidp_client, agentidp_idp, "AB")
    await grant(agentidp_client, here.admin, here.agents["A"], here.agents["B"], ["read"])
    foreign = await own_token(agentidp_client, there.agents["A"])
    assert await refused(agentidp_client, here.agents["B"], foreign) == "invalid_grant"


async def test_b_cannot_use_a_grant_given_to_c(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    to_c = await grant(agentidp_client, w.admin, a, c, ["read"])
    subject = await own_token(agentidp_client, a)
    assert await refused(agentidp_client, b, subject) == "invalid_grant"
    assert (
        await refused(agentidp_client, b, subject, delegation_id=to_c["delegation_id"])
        == "invalid_grant"
    )
    # The grant works for the one it was given to.
    await exchange(agentidp_client, c, subject, delegation_id=to_c["delegation_id"])


async def test_delegated_token_cannot_be_re_exchanged_without_a_valid_actor(
    agentidp_client, agentidp_idp
):
    # The Keycloak class of bug: a token carrying `act` re-exchanged without the
    # actor check, or laundered into a token without `act`.
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=2)
    # C holds a grant from A, not from B: it cannot pick up B's delegated token.
    await grant(agentidp_client, w.admin, a, c, ["read"])
    t1 = (await exchange(agentidp_client, b, await own_token(agentidp_client, a)))["access_token"]
    assert await refused(agentidp_client, c, t1) == "invalid_grant"
    # The delegated token as an actor token does not stand in for its holder.
    code = await refused(
        agentidp_client,
        b,
        await own_token(agentidp_client, a),
        actor_token=t1,
        actor_token_type=ACCESS_TOKEN_TYPE,
    )
    assert code == "invalid_grant"
    # The subject (A) cannot take its token back without `act` through the delegate's.
    assert await refused(agentidp_client, a, t1) == "invalid_grant"


async def test_actor_token_must_be_the_clients_own(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read"])
    subject = await own_token(agentidp_client, a)
    mine = await own_token(agentidp_client, b)
    body = await exchange(
        agentidp_client, b, subject, actor_token=mine, actor_token_type=ACCESS_TOKEN_TYPE
    )
    assert payload(body["access_token"])["act"] == {"sub": b.id}
    theirs = await own_token(agentidp_client, c)
    code = await refused(
        agentidp_client, b, subject, actor_token=theirs, actor_token_type=ACCESS_TOKEN_TYPE
    )
    assert code == "invalid_grant"


async def test_may_act_in_the_subject_token_is_honoured(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "ABC")
    a, b, c = (w.agents[n] for n in "ABC")
    await grant(agentidp_client, w.admin, a, b, ["read"], max_depth=1)
    await grant(agentidp_client, w.admin, a, c, ["read"])
    await grant(agentidp_client, w.admin, b, c, ["read"])

    async def subject_naming(agent_id: str) -> str:
        minted, _ = await agentidp_idp.tokens.mint(
            agent=a.agent,
            credential_id=a.credential["credential_id"],
            client_id=a.client_id,
            scopes=["read"],
            audience=agentidp_idp.tokens.default_audience(),
            grant_type="client_credentials",
            extra={"may_act": {"sub": agent_id}},
        )
        return str(minted)

    # RFC 8693 §4.4: only the party `may_act` names may act, even with a grant.
    assert await refused(agentidp_client, c, await subject_naming(b.id)) == "invalid_grant"
    t1 = (await exchange(agentidp_client, b, await subject_naming(b.id)))["access_token"]
    assert payload(t1)["act"] == {"sub": b.id}
    # The restriction travels with the token: B cannot hand A's authority on to C.
    assert await refused(agentidp_client, c, t1) == "invalid_grant"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
        ({"subject_token": "x"}, "invalid_request"),
        ({"subject_token": "x", "subject_token_type": "urn:example:saml"}, "invalid_request"),
        (
            {
                "subject_token": "x",
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "actor_token_type": ACCESS_TOKEN_TYPE,
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": "x",
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "actor_token": "y",
            },
            "invalid_request",
        ),
        (
            {
                "subject_token": "x",
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
            },
            "invalid_request",
        ),
        ({"subject_token": "", "subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
        ({"subject_token": "not.a.jwt", "subject_token_type": ACCESS_TOKEN_TYPE}, "invalid_grant"),
    ],
)
async def test_malformed_parameters(agentidp_client, agentidp_idp, params, error):
    w = await make_world(agentidp_client, agentidp_idp, "B")
    assert await refused(agentidp_client, w.agents["B"], None, **params) == error


async def test_exchange_requires_client_authentication(agentidp_client, agentidp_idp):
    w = await make_world(agentidp_client, agentidp_idp, "AB")
    subject = await own_token(agentidp_client, w.agents["A"])
    response = await agentidp_client.post(
        "/api/v1/token",
        form={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        },
        headers=basic(w.agents["B"].client_id, "wrong"),
    )
    assert response.status_code == 401
    assert (await response.get_json())["error"] == "invalid_client"
