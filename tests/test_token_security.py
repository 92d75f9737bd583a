"""Attacks on, and edge cases of, token issuance and verification, on both adapters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from joserfc import jwt as jose_jwt

from agentidp_server.directory import agents
from agentidp_server.oauth.rfc9068 import SIGNATURE_INVALID, SYNC_MARKER
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token
from agentidp_server.util.clock import now as clock_now

TOKEN = "/api/v1/token"
INTROSPECT = "/api/v1/token/introspect"
REVOKE = "/api/v1/token/revoke"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def introspect(client: Any, org: dict[str, Any], access_token: str) -> dict[str, Any]:
    """Introspect with the organisation's admin client."""
    response = await client.post(
        INTROSPECT,
        form={"token": access_token},
        headers=basic(org["client_id"], org["client_secret"]),
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await response.get_json()
    return body


async def token_error(client: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post(TOKEN, **kwargs)
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await response.get_json()
    return response.status_code, body


@pytest.fixture
async def tenant(agentidp_client, agentidp_idp) -> dict[str, Any]:
    """An organisation, its admin's bearer headers, and one agent with a client secret."""
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, credential = await make_agent(agentidp_client, headers)
    return {"org": org, "headers": headers, "agent": agent, "credential": credential}


async def agent_token(client: Any, tenant: dict[str, Any], **params: str) -> dict[str, Any]:
    credential = tenant["credential"]
    return await token(client, credential["client_id"], credential["client_secret"], **params)


# Client authentication -----------------------------------------------------


async def test_unknown_client_and_wrong_secret_are_byte_identical(agentidp_client, tenant):
    credential = tenant["credential"]
    answers = []
    for client_id, secret in (
        (credential["client_id"], "wrong-secret"),
        ("agt_does_not_exist", "wrong-secret"),
        ("", "x"),
    ):
        response = await agentidp_client.post(
            TOKEN, form={"grant_type": "client_credentials"}, headers=basic(client_id, secret)
        )
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="agentidp"'
        answers.append(await response.get_data())
    for client_id, secret in (
        (credential["client_id"], "wrong-secret"),
        ("agt_does_not_exist", "wrong-secret"),
    ):
        response = await agentidp_client.post(
            TOKEN,
            form={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        )
        assert response.status_code == 401
        answers.append(await response.get_data())
    assert len(set(answers)) == 1
    assert json.loads(answers[0])["error"] == "invalid_client"


async def test_two_authentication_methods_at_once_are_refused(agentidp_client, tenant):
    credential = tenant["credential"]
    status, body = await token_error(
        agentidp_client,
        form={
            "grant_type": "client_credentials",
            "client_id": credential["client_id"],
            "client_secret": credential["client_secret"],
        },
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert status == 400
    assert body["error"] == "invalid_request"


async def test_repeated_form_parameters_are_refused(agentidp_client, tenant):
    credential = tenant["credential"]
    for raw in (
        "grant_type=client_credentials&scope=read&scope=write",
        "grant_type=client_credentials&grant_type=client_credentials",
    ):
        status, body = await token_error(
            agentidp_client,
            data=raw,
            headers={
                "Content-Type": FORM,
                **basic(credential["client_id"], credential["client_secret"]),
            },
        )
        assert status == 400
        assert body["error"] == "invalid_request"
        assert "repeated" in body["error_description"]


async def test_json_body_is_accepted_at_the_token_endpoint(agentidp_client, tenant):
    credential = tenant["credential"]
    response = await agentidp_client.post(
        TOKEN,
        json={
            "grant_type": "client_credentials",
            "client_id": credential["client_id"],
            "client_secret": credential["client_secret"],
            "scope": "read",
        },
    )
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["scope"] == "read"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


async def test_token_response_is_not_cached(agentidp_client, tenant):
    credential = tenant["credential"]
    response = await agentidp_client.post(
        TOKEN,
        form={"grant_type": "client_credentials"},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


# Scope and resource -----------------------------------------------------------


async def test_scope_is_a_subset_and_defaults_to_all(agentidp_client, tenant):
    assert (await agent_token(agentidp_client, tenant))["scope"] == "read write"
    assert (await agent_token(agentidp_client, tenant, scope="write"))["scope"] == "write"
    assert (await agent_token(agentidp_client, tenant, scope="write read"))["scope"] == (
        "read write"
    )
    credential = tenant["credential"]
    for scope in ("read admin", "agents:read", "", "read  write"):
        status, body = await token_error(
            agentidp_client,
            form={"grant_type": "client_credentials", "scope": scope},
            headers=basic(credential["client_id"], credential["client_secret"]),
        )
        assert status == 400, scope
        assert body["error"] == "invalid_scope", scope


async def test_resource_becomes_aud_and_a_bad_one_is_invalid_target(agentidp_client, tenant):
    issued = await agent_token(agentidp_client, tenant, resource="https://api.example.com/v1")
    assert unb64(issued["access_token"].split(".")[1])["aud"] == "https://api.example.com/v1"
    default = await agent_token(agentidp_client, tenant)
    assert unb64(default["access_token"].split(".")[1])["aud"] == "http://localhost:3000"
    credential = tenant["credential"]
    for resource in ("not-a-uri", "https://api.example.com/#frag", "/relative/path", ""):
        status, body = await token_error(
            agentidp_client,
            form={"grant_type": "client_credentials", "resource": resource},
            headers=basic(credential["client_id"], credential["client_secret"]),
        )
        assert status == 400, resource
        assert body["error"] == "invalid_target", resource


async def test_management_api_refuses_tokens_for_another_resource(agentidp_client, tenant):
    """RFC 9068 §4 / RFC 8707: a token audienced to another resource server must not be
    replayable against this server's management API."""
    org = tenant["org"]
    elsewhere = await token(
        agentidp_client,
        org["client_id"],
        org["client_secret"],
        resource="https://api.example.com/",
    )
    response = await agentidp_client.get(
        "/api/v1/agents", headers=bearer(elsewhere["access_token"])
    )
    assert response.status_code == 401
    body = await response.get_json()
    assert body["code"] == "UNAUTHORIZED"
    assert body["message"] == "Token audience is not this server"
    # Still a valid token: the other resource server's introspection sees it active.
    assert (await introspect(agentidp_client, org, elsewhere["access_token"]))["active"] is True
    # Asking for this server explicitly works like the default.
    here = await token(
        agentidp_client, org["client_id"], org["client_secret"], resource="http://localhost:3000"
    )
    response = await agentidp_client.get("/api/v1/agents", headers=bearer(here["access_token"]))
    assert response.status_code == 200


# Tenant isolation ---------------------------------------------------------------


async def test_tenants_cannot_see_each_other(agentidp_client, agentidp_idp, tenant):
    other = await make_org(agentidp_idp, "Globex")
    other_headers = await admin_headers(agentidp_client, other)
    _, other_credential = await make_agent(agentidp_client, other_headers)
    issued = await agent_token(agentidp_client, tenant)

    # A's token is inactive to B's admin client and to B's agent.
    assert await introspect(agentidp_client, other, issued["access_token"]) == {"active": False}
    response = await agentidp_client.post(
        INTROSPECT,
        form={"token": issued["access_token"]},
        headers=basic(other_credential["client_id"], other_credential["client_secret"]),
    )
    assert await response.get_json() == {"active": False}
    assert (await introspect(agentidp_client, tenant["org"], issued["access_token"]))["active"]

    # A's agent does not exist for B's admin.
    agent_id = tenant["agent"]["agent_id"]
    credential_id = tenant["credential"]["credential_id"]
    path = f"/api/v1/agents/{agent_id}"
    calls = [
        agentidp_client.get(path, headers=other_headers),
        agentidp_client.patch(path, json={"status": "suspended"}, headers=other_headers),
        agentidp_client.delete(path, headers=other_headers),
        agentidp_client.get(f"{path}/credentials", headers=other_headers),
        agentidp_client.post(
            f"{path}/credentials", json={"type": "client_secret"}, headers=other_headers
        ),
        agentidp_client.delete(f"{path}/credentials/{credential_id}", headers=other_headers),
    ]
    for call in calls:
        response = await call
        assert response.status_code == 404
        assert (await response.get_json())["code"] == "NOT_FOUND"
    listed = await agentidp_client.get("/api/v1/agents", headers=other_headers)
    assert agent_id not in {a["agent_id"] for a in (await listed.get_json())["data"]}

    # Nothing changed for A.
    response = await agentidp_client.get(path, headers=tenant["headers"])
    assert (await response.get_json())["status"] == "active"
    response = await agentidp_client.get(f"{path}/credentials", headers=tenant["headers"])
    assert [c["status"] for c in (await response.get_json())["data"]] == ["active"]
    assert (await introspect(agentidp_client, tenant["org"], issued["access_token"]))["active"]


async def test_revocation_by_another_org_is_refused_by_the_org_admin_works(
    agentidp_client, agentidp_idp, tenant
):
    other = await make_org(agentidp_idp, "Globex")
    issued = await agent_token(agentidp_client, tenant)
    access = issued["access_token"]
    response = await agentidp_client.post(
        REVOKE, form={"token": access}, headers=basic(other["client_id"], other["client_secret"])
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "unauthorized_client"
    assert (await introspect(agentidp_client, tenant["org"], access))["active"] is True

    # Another agent of the same organisation may not revoke it either.
    _, sibling = await make_agent(agentidp_client, tenant["headers"], name="sibling")
    response = await agentidp_client.post(
        REVOKE,
        form={"token": access},
        headers=basic(sibling["client_id"], sibling["client_secret"]),
    )
    assert response.status_code == 400
    assert (await introspect(agentidp_client, tenant["org"], access))["active"] is True

    org = tenant["org"]
    response = await agentidp_client.post(
        REVOKE, form={"token": access}, headers=basic(org["client_id"], org["client_secret"])
    )
    assert response.status_code == 200
    assert await introspect(agentidp_client, org, access) == {"active": False}


# Forged and unacceptable tokens ---------------------------------------------------


def _resign(idp: Any, header: dict[str, Any], claims: dict[str, Any]) -> str:
    key = idp.keys.signing_key()
    return jose_jwt.encode(header, claims, key.key, algorithms=[key.alg])


def _public_pem(idp: Any) -> bytes:
    key = idp.keys.signing_key()
    pem: bytes = key.key.as_pem(private=False)
    return pem


def _hs256(header: dict[str, Any], body: str, secret: bytes) -> str:
    # By hand: PyJWT itself refuses PEM or JWK bytes as an HMAC secret.
    signing_input = f"{b64(json.dumps({**header, 'alg': 'HS256'}).encode())}.{body}".encode()
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64(mac)}"


def forge(kind: str, access: str, idp: Any) -> str:
    head, body, signature = access.split(".")
    header, claims = unb64(head), unb64(body)
    if kind == "alg_none":
        return f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{body}."
    if kind == "alg_none_with_signature":
        return f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{body}.{signature}"
    if kind == "hs256_public_key":
        # The classic confusion: HMAC keyed with the server's public key (PEM).
        return _hs256(header, body, _public_pem(idp))
    if kind == "hs256_jwks_entry":
        # The same keyed with the JWKS entry's bytes (what a JWKS-driven verifier holds).
        return _hs256(header, body, json.dumps(idp.keys.jwks()["keys"][0]).encode())
    if kind == "tampered_scope":
        forged = {**claims, "scope": claims["scope"] + " agents:admin"}
        return f"{head}.{b64(json.dumps(forged).encode())}.{signature}"
    if kind == "tampered_org":
        forged = {**claims, "org_id": "org_someone_else"}
        return f"{head}.{b64(json.dumps(forged).encode())}.{signature}"
    if kind == "unknown_kid":
        return f"{b64(json.dumps({**header, 'kid': 'no-such-kid'}).encode())}.{body}.{signature}"
    if kind == "typ_jwt":
        return _resign(idp, {**header, "typ": "JWT"}, claims)
    if kind == "typ_missing":
        return _resign(idp, {k: v for k, v in header.items() if k != "typ"}, claims)
    if kind == "wrong_issuer":
        return _resign(idp, header, {**claims, "iss": "https://evil.example.com"})
    if kind == "garbage":
        return "not.a.jwt"
    raise AssertionError(kind)


FORGERIES = {
    "alg_none": SIGNATURE_INVALID,
    "alg_none_with_signature": SIGNATURE_INVALID,
    "hs256_public_key": SIGNATURE_INVALID,
    "hs256_jwks_entry": SIGNATURE_INVALID,
    "tampered_scope": SIGNATURE_INVALID,
    "tampered_org": SIGNATURE_INVALID,
    "unknown_kid": SIGNATURE_INVALID,
    "typ_jwt": "Token is not an access token (typ must be at+jwt)",
    "typ_missing": "Token is not an access token (typ must be at+jwt)",
    "wrong_issuer": "Token issuer is not this server",
    "garbage": "Token is malformed",
}


@pytest.mark.parametrize("kind", sorted(FORGERIES))
async def test_forged_tokens_are_rejected(agentidp_client, agentidp_idp, tenant, kind):
    org = tenant["org"]
    # The admin token: accepted by the management API unless forged.
    issued = await token(agentidp_client, org["client_id"], org["client_secret"])
    forged = forge(kind, issued["access_token"], agentidp_idp)
    assert forged != issued["access_token"]

    response = await agentidp_client.get("/api/v1/agents", headers=bearer(forged))
    assert response.status_code == 401
    body = await response.get_json()
    assert body["code"] == "UNAUTHORIZED"
    assert body["message"] == FORGERIES[kind]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await introspect(agentidp_client, org, forged) == {"active": False}

    # The genuine token still works: the rejection was about the forgery.
    response = await agentidp_client.get("/api/v1/agents", headers=bearer(issued["access_token"]))
    assert response.status_code == 200


async def test_expired_token_is_rejected(agentidp_client, agentidp_idp, tenant):
    org = tenant["org"]
    admin = await agents.get_by_client_id(agentidp_idp.db, org["client_id"])
    credential_id = unb64(
        (await token(agentidp_client, org["client_id"], org["client_secret"]))[
            "access_token"
        ].split(".")[1]
    )["credential_id"]
    expired, claims = await agentidp_idp.tokens.mint(
        agent=admin,
        credential_id=credential_id,
        client_id=org["client_id"],
        scopes=list(agents.ADMIN_SCOPES),
        audience=agentidp_idp.issuer,
        grant_type="client_credentials",
        lifetime=-10,
    )
    assert claims["exp"] < time.time()
    response = await agentidp_client.get("/api/v1/agents", headers=bearer(expired))
    assert response.status_code == 401
    assert await response.get_json() == {
        "code": "UNAUTHORIZED",
        "message": "Token has expired",
        "request_id": response.headers["X-Request-Id"],
    }
    assert await introspect(agentidp_client, org, expired) == {"active": False}
    # PyJWT agrees it is expired (and otherwise well-formed).
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(
            expired,
            _public_pem(agentidp_idp),
            algorithms=[agentidp_idp.keys.signing_key().alg],
            audience=agentidp_idp.issuer,
        )


async def test_missing_bearer_and_missing_scope(agentidp_client, tenant):
    response = await agentidp_client.get("/api/v1/agents")
    assert response.status_code == 401
    assert (await response.get_json())["code"] == "UNAUTHORIZED"

    # An agent's own token (read, write) has no management scope.
    issued = await agent_token(agentidp_client, tenant)
    response = await agentidp_client.get("/api/v1/agents", headers=bearer(issued["access_token"]))
    assert response.status_code == 403
    body = await response.get_json()
    assert body["code"] == "FORBIDDEN"
    assert "agents:read" in body["message"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]

    # An admin token narrowed to agents:read cannot write.
    org = tenant["org"]
    narrow = await token(
        agentidp_client, org["client_id"], org["client_secret"], scope="agents:read"
    )
    headers = bearer(narrow["access_token"])
    assert (await agentidp_client.get("/api/v1/agents", headers=headers)).status_code == 200
    response = await agentidp_client.post(
        "/api/v1/agents", json={"name": "x", "deployment_env": "dev"}, headers=headers
    )
    assert response.status_code == 403
    agent_id = tenant["agent"]["agent_id"]
    response = await agentidp_client.get(f"/api/v1/agents/{agent_id}/credentials", headers=headers)
    assert response.status_code == 403


# Revocation and status changes take effect at once ----------------------------


async def _delete_test_kv_keys(idp: Any, backend: str, jti: str) -> None:
    """Lose the kv's revocation state: every key of this test's prefix (Redis), or the
    revocation entry and the sync marker (memory)."""
    if backend == "postgres":
        import redis.asyncio as redis

        prefix = idp.settings.REDIS_KEY_PREFIX
        assert prefix.startswith("agentidp-test:")
        client = redis.Redis.from_url(idp.settings.REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
            assert f"{prefix}revoked:{jti}".encode() in keys
            await client.delete(*keys)
        finally:
            await client.aclose()
    else:
        await idp.kv.delete(f"revoked:{jti}", SYNC_MARKER)
    assert not await idp.kv.exists(f"revoked:{jti}")


async def test_revoked_token_stays_revoked_when_the_kv_is_emptied(
    agentidp_client, agentidp_idp, agentidp_backend, tenant
):
    issued = await agent_token(agentidp_client, tenant)
    access = issued["access_token"]
    credential = tenant["credential"]
    response = await agentidp_client.post(
        REVOKE,
        form={"token": access, "token_type_hint": "access_token"},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert response.status_code == 200
    jti = unb64(access.split(".")[1])["jti"]
    assert await agentidp_idp.kv.exists(f"revoked:{jti}")

    await _delete_test_kv_keys(agentidp_idp, agentidp_backend, jti)
    assert await introspect(agentidp_client, tenant["org"], access) == {"active": False}
    # The database row is the truth; a resync refills the runbook's kv copy.
    assert await agentidp_idp.tokens.resync()
    assert await agentidp_idp.kv.exists(SYNC_MARKER)
    assert await agentidp_idp.kv.exists(f"revoked:{jti}")
    assert await introspect(agentidp_client, tenant["org"], access) == {"active": False}
    # Another token of the same agent is unaffected.
    fresh = await agent_token(agentidp_client, tenant)
    assert (await introspect(agentidp_client, tenant["org"], fresh["access_token"]))["active"]


async def test_revoking_twice_and_unknown_tokens_answer_200(agentidp_client, tenant):
    issued = await agent_token(agentidp_client, tenant)
    credential = tenant["credential"]
    headers = basic(credential["client_id"], credential["client_secret"])
    for value in (issued["access_token"], issued["access_token"], "not-a-token"):
        response = await agentidp_client.post(REVOKE, form={"token": value}, headers=headers)
        assert response.status_code == 200
    response = await agentidp_client.post(
        REVOKE,
        form={"token": issued["access_token"], "token_type_hint": "id_token"},
        headers=headers,
    )
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "unsupported_token_type"


async def test_suspending_an_agent_deactivates_its_tokens_at_once(agentidp_client, tenant):
    issued = await agent_token(agentidp_client, tenant)
    access = issued["access_token"]
    org, headers = tenant["org"], tenant["headers"]
    path = f"/api/v1/agents/{tenant['agent']['agent_id']}"
    assert (await introspect(agentidp_client, org, access))["active"] is True

    response = await agentidp_client.patch(path, json={"status": "suspended"}, headers=headers)
    assert response.status_code == 200
    assert await introspect(agentidp_client, org, access) == {"active": False}
    credential = tenant["credential"]
    status, body = await token_error(
        agentidp_client,
        form={"grant_type": "client_credentials"},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert (status, body["error"]) == (401, "invalid_client")


async def test_deleting_an_agent_deactivates_its_tokens_at_once(agentidp_client, tenant):
    issued = await agent_token(agentidp_client, tenant)
    access = issued["access_token"]
    org, headers = tenant["org"], tenant["headers"]
    path = f"/api/v1/agents/{tenant['agent']['agent_id']}"
    response = await agentidp_client.delete(path, headers=headers)
    assert response.status_code == 204
    assert await introspect(agentidp_client, org, access) == {"active": False}
    credential = tenant["credential"]
    status, _ = await token_error(
        agentidp_client,
        form={"grant_type": "client_credentials"},
        headers=basic(credential["client_id"], credential["client_secret"]),
    )
    assert status == 401


async def test_revoking_a_credential_deactivates_tokens_issued_through_it(agentidp_client, tenant):
    org, headers, agent = tenant["org"], tenant["headers"], tenant["agent"]
    first = tenant["credential"]
    response = await agentidp_client.post(
        f"/api/v1/agents/{agent['agent_id']}/credentials",
        json={"type": "client_secret"},
        headers=headers,
    )
    second = await response.get_json()
    via_first = await token(agentidp_client, first["client_id"], first["client_secret"])
    via_second = await token(agentidp_client, second["client_id"], second["client_secret"])

    response = await agentidp_client.delete(
        f"/api/v1/agents/{agent['agent_id']}/credentials/{first['credential_id']}", headers=headers
    )
    assert response.status_code == 204
    assert await introspect(agentidp_client, org, via_first["access_token"]) == {"active": False}
    assert (await introspect(agentidp_client, org, via_second["access_token"]))["active"] is True
    status, _ = await token_error(
        agentidp_client,
        form={"grant_type": "client_credentials"},
        headers=basic(first["client_id"], first["client_secret"]),
    )
    assert status == 401
    response = await agentidp_client.delete(
        f"/api/v1/agents/{agent['agent_id']}/credentials/{first['credential_id']}", headers=headers
    )
    assert response.status_code == 404


# Credentials --------------------------------------------------------------------


async def test_client_secret_is_never_returned_by_get(agentidp_client, tenant):
    agent_id = tenant["agent"]["agent_id"]
    response = await agentidp_client.get(
        f"/api/v1/agents/{agent_id}/credentials", headers=tenant["headers"]
    )
    assert response.status_code == 200
    raw = (await response.get_data()).decode()
    assert tenant["credential"]["client_secret"] not in raw
    for credential in (await response.get_json())["data"]:
        assert "client_secret" not in credential
        assert "secret_hash" not in credential
    response = await agentidp_client.get(f"/api/v1/agents/{agent_id}", headers=tenant["headers"])
    assert tenant["credential"]["client_secret"] not in (await response.get_data()).decode()


def _iso(delta: timedelta) -> str:
    now = datetime.fromtimestamp(clock_now(), UTC)  # the kernel's clock: a test may stop it
    return (now + delta).isoformat(timespec="milliseconds")


async def test_expired_credential_cannot_authenticate(agentidp_client, tenant, clock):
    agent_id = tenant["agent"]["agent_id"]
    path = f"/api/v1/agents/{agent_id}/credentials"
    response = await agentidp_client.post(
        path,
        json={"type": "client_secret", "expires_at": _iso(timedelta(seconds=-5))},
        headers=tenant["headers"],
    )
    assert response.status_code == 400
    assert (await response.get_json())["code"] == "VALIDATION_ERROR"

    response = await agentidp_client.post(
        path,
        json={"type": "client_secret", "expires_at": _iso(timedelta(seconds=2))},
        headers=tenant["headers"],
    )
    assert response.status_code == 201
    short = await response.get_json()
    issued = await token(agentidp_client, short["client_id"], short["client_secret"])
    clock.advance(1.999)  # the credential's last millisecond: still good
    assert "access_token" in await token(
        agentidp_client, short["client_id"], short["client_secret"]
    )
    clock.advance(ms=1)
    status, body = await token_error(
        agentidp_client,
        form={"grant_type": "client_credentials"},
        headers=basic(short["client_id"], short["client_secret"]),
    )
    assert (status, body["error"]) == (401, "invalid_client")
    # The token obtained before expiry stays valid until its own exp.
    assert (await introspect(agentidp_client, tenant["org"], issued["access_token"]))["active"]


# private_key_jwt assertions -----------------------------------------------------


@pytest.fixture
async def keyed(agentidp_client, tenant) -> dict[str, Any]:
    """The tenant's agent with a registered EC P-256 key; `private` is the PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    response = await agentidp_client.post(
        f"/api/v1/agents/{tenant['agent']['agent_id']}/credentials",
        json={"type": "private_key_jwt", "jwk": public_jwk},
        headers=tenant["headers"],
    )
    created = await response.get_json()
    assert response.status_code == 201, created
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {**tenant, "private": pem, "kid": created["jwk"]["kid"], "key_credential": created}


def assertion(keyed: dict[str, Any], **overrides: Any) -> str:
    client_id = keyed["agent"]["client_id"]
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": "http://localhost:3000/api/v1/token",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 60,
        **overrides,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, keyed["private"], algorithm="ES256", headers={"kid": keyed["kid"]})


async def assert_with(client: Any, value: str) -> tuple[int, dict[str, Any]]:
    return await token_error(
        client,
        form={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": value,
        },
    )


async def test_private_key_jwt_assertion_is_single_use(agentidp_client, keyed):
    value = assertion(keyed)
    status, body = await assert_with(agentidp_client, value)
    assert status == 200, body
    claims = unb64(body["access_token"].split(".")[1])
    assert claims["credential_id"] == keyed["key_credential"]["credential_id"]
    status, body = await assert_with(agentidp_client, value)
    assert (status, body["error"]) == (401, "invalid_client")
    # The same jti in a freshly signed assertion is a replay too.
    jti = unb64(value.split(".")[1])["jti"]
    status, body = await assert_with(agentidp_client, assertion(keyed, jti=jti))
    assert (status, body["error"]) == (401, "invalid_client")


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "https://other.example.com/token"},
        {"aud": "http://localhost:3000/api/v1/token/introspect"},
        {"exp": -120},
        {"exp": 7200},
        {"jti": None},
        {"sub": "someone-else"},
        {"nbf": 600},
    ],
    ids=["foreign_aud", "other_endpoint_aud", "expired", "too_long", "no_jti", "sub", "nbf"],
)
async def test_bad_assertions_are_refused(agentidp_client, keyed, overrides):
    # exp and nbf are offsets from when the test runs, not from collection: a slow
    # run reached an nbf taken "600 s ahead" at collection and got a token.
    now = int(time.time())
    claims = {k: now + v if k in ("exp", "nbf") else v for k, v in overrides.items()}
    status, body = await assert_with(agentidp_client, assertion(keyed, **claims))
    assert (status, body["error"]) == (401, "invalid_client")


async def test_assertions_signed_by_another_key_or_alg_are_refused(agentidp_client, keyed):
    from cryptography.hazmat.primitives.asymmetric import ec

    stranger = ec.generate_private_key(ec.SECP256R1())
    client_id = keyed["agent"]["client_id"]
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": "http://localhost:3000",
        "jti": uuid.uuid4().hex,
        "exp": now + 60,
    }
    forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": keyed["kid"]})
    status, _ = await assert_with(agentidp_client, forged)
    assert status == 401
    none_header = b64(json.dumps({"alg": "none"}).encode())
    unsigned = f"{none_header}.{b64(json.dumps(claims).encode())}."
    status, _ = await assert_with(agentidp_client, unsigned)
    assert status == 401
    # The issuer itself as audience is accepted (RFC 7523 §3).
    status, body = await assert_with(agentidp_client, assertion(keyed, aud="http://localhost:3000"))
    assert status == 200, body
