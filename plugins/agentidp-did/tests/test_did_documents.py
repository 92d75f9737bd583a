"""The DID plugin enabled, in process, on both storage backends."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from agentidp_server.testkit import admin_headers, make_agent, make_org, token

sys.path.insert(0, str(Path(__file__).resolve().parent))

from did_helpers import new_key, public_jwk, sign, verify_with_document

from agentidp_did.identifiers import did_key

ISSUER = "https://idp.example.com:8443"
SERVER_DID = "did:web:idp.example.com%3A8443"
CARD = "https://agents.example.com/worker/.well-known/agent-card.json"
DID_CONTEXT = "https://www.w3.org/ns/did/v1"
JWS_2020_CONTEXT = "https://w3id.org/security/suites/jws-2020/v1"
COUNTER = "agentidp_did_documents_generated_total"


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"DID_ENABLED": True, "ISSUER": ISSUER}


def claims_of(access_token: str) -> dict[str, Any]:
    part = access_token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


async def register_key(client: Any, headers: dict[str, str], agent_id: str, jwk: dict[str, Any]):
    response = await client.post(
        f"/api/v1/agents/{agent_id}/credentials",
        json={"type": "private_key_jwt", "jwk": jwk},
        headers=headers,
    )
    assert response.status_code == 201, await response.get_json()
    return (await response.get_json())["jwk"]


async def setup_agent(client: Any, idp: Any, **fields: Any) -> dict[str, Any]:
    org = await make_org(idp)
    headers = await admin_headers(client, org)
    agent, secret = await make_agent(client, headers, **fields)
    keys = {kind: new_key(kind) for kind in ("Ed25519", "P-256", "RSA")}
    registered = {
        kind: await register_key(client, headers, agent["agent_id"], public_jwk(key))
        for kind, key in keys.items()
    }
    return {
        "org": org,
        "headers": headers,
        "agent": agent,
        "secret": secret,
        "keys": keys,
        "jwks": registered,
        "did": f"{SERVER_DID}:agents:{agent['agent_id']}",
    }


async def test_agent_document(agentidp_client, agentidp_idp):
    setup = await setup_agent(agentidp_client, agentidp_idp, metadata={"a2a_agent_card": CARD})
    did = setup["did"]
    response = await agentidp_client.get(f"/agents/{setup['agent']['agent_id']}/did.json")
    assert response.status_code == 200
    # DID Core §6.3: a JSON-LD representation is application/did+ld+json.
    assert response.mimetype == "application/did+ld+json"
    document = json.loads(await response.get_data())
    assert document["id"] == did
    assert document["@context"] == [DID_CONTEXT, JWS_2020_CONTEXT]
    assert document["controller"] == SERVER_DID
    methods = document["verificationMethod"]
    assert [m["type"] for m in methods] == ["JsonWebKey2020"] * 3
    assert all(m["controller"] == did for m in methods)
    assert [m["publicKeyJwk"] for m in methods] == list(setup["jwks"].values())
    assert [m["id"] for m in methods] == [f"{did}#{j['kid']}" for j in setup["jwks"].values()]
    ids = [m["id"] for m in methods]
    assert document["authentication"] == ids
    assert document["assertionMethod"] == ids
    assert document["alsoKnownAs"] == [
        did_key(setup["jwks"]["Ed25519"]),
        did_key(setup["jwks"]["P-256"]),
    ]
    assert document["alsoKnownAs"][0].startswith("did:key:z6Mk")
    assert document["alsoKnownAs"][1].startswith("did:key:zDna")
    assert document["service"] == [
        {
            "id": f"{did}#service-oauth-token",
            "type": "OAuth2TokenEndpoint",
            "serviceEndpoint": f"{ISSUER}/api/v1/token",
        },
        {"id": f"{did}#service-agent-card", "type": "AgentCard", "serviceEndpoint": CARD},
    ]


@pytest.mark.parametrize("kind", ["Ed25519", "P-256", "RSA"])
async def test_agent_signed_jwt_verifies_with_document_key(agentidp_client, agentidp_idp, kind):
    setup = await setup_agent(agentidp_client, agentidp_idp)
    response = await agentidp_client.get(f"/agents/{setup['agent']['agent_id']}/did.json")
    document = json.loads(await response.get_data())
    kid = f"{setup['did']}#{setup['jwks'][kind]['kid']}"
    jwt = sign(setup["keys"][kind], kind, {"iss": setup["did"], "aud": "did:web:peer"}, kid)
    assert verify_with_document(jwt, document, "did:web:peer")["iss"] == setup["did"]


@pytest.mark.parametrize("card", ["no url", "http://[::1"])  # the second makes urlsplit raise
async def test_agent_without_keys_or_card(agentidp_client, agentidp_idp, card):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers, metadata={"a2a_agent_card": card})
    response = await agentidp_client.get(f"/agents/{agent['agent_id']}/did.json")
    document = json.loads(await response.get_data())
    assert response.status_code == 200
    for absent in ("verificationMethod", "authentication", "assertionMethod", "alsoKnownAs"):
        assert absent not in document
    assert [s["type"] for s in document["service"]] == ["OAuth2TokenEndpoint"]


async def test_server_document(agentidp_client, agentidp_idp):
    response = await agentidp_client.get("/.well-known/did.json")
    assert response.status_code == 200
    assert response.mimetype == "application/did+ld+json"
    document = json.loads(await response.get_data())
    assert document["id"] == SERVER_DID
    jwks = (await (await agentidp_client.get("/.well-known/jwks.json")).get_json())["keys"]
    assert jwks
    assert [m["publicKeyJwk"] for m in document["verificationMethod"]] == jwks
    assert [m["id"] for m in document["verificationMethod"]] == [
        f"{SERVER_DID}#{k['kid']}" for k in jwks
    ]
    assert document["assertionMethod"] == [m["id"] for m in document["verificationMethod"]]
    # The server's access tokens verify with the key its DID document lists.
    org = await make_org(agentidp_idp)
    access = (await token(agentidp_client, org["client_id"], org["client_secret"]))["access_token"]
    header = jwt.get_unverified_header(access)
    method = next(m for m in document["verificationMethod"] if m["id"].endswith(header["kid"]))
    key = jwt.PyJWK(method["publicKeyJwk"])
    jwt.decode(access, key.key, algorithms=[header["alg"]], options={"verify_aud": False})


@pytest.mark.parametrize("agentidp_overrides", [{"DID_ENABLED": True, "ISSUER": ISSUER + "/idp/"}])
async def test_issuer_with_a_path(agentidp_client, agentidp_idp):
    # did:web spec §3.2.1: a DID with a path resolves to <path>/did.json, not .well-known.
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers)
    assert (await agentidp_client.get("/.well-known/did.json")).status_code == 404
    server = json.loads(await (await agentidp_client.get("/did.json")).get_data())
    assert server["id"] == f"{SERVER_DID}:idp"
    document = json.loads(
        await (await agentidp_client.get(f"/agents/{agent['agent_id']}/did.json")).get_data()
    )
    assert document["id"] == f"{SERVER_DID}:idp:agents:{agent['agent_id']}"
    assert document["service"][0]["serviceEndpoint"] == f"{ISSUER}/idp/api/v1/token"


async def test_unknown_agent_and_admin_client_are_404(agentidp_client, agentidp_idp):
    assert (await agentidp_client.get("/agents/no-such-agent/did.json")).status_code == 404
    org = await make_org(agentidp_idp)
    admin = await agentidp_idp.agents.by_client_id(org["client_id"])
    assert (await agentidp_client.get(f"/agents/{admin.agent_id}/did.json")).status_code == 404


async def _deactivated(client: Any, agent_id: str, did: str) -> dict[str, Any]:
    response = await client.get(f"/agents/{agent_id}/did.json")
    # DID Resolution, HTTP(S) binding: a deactivated DID answers 410 Gone.
    assert response.status_code == 410
    assert response.mimetype == "application/ld+json"
    assert 'profile="https://w3id.org/did-resolution"' in response.headers["Content-Type"]
    result: dict[str, Any] = json.loads(await response.get_data())
    assert result["didDocumentMetadata"]["deactivated"] is True
    assert result["didDocument"] == {"@context": [DID_CONTEXT], "id": did}
    return result


async def test_suspended_then_decommissioned_agent_is_deactivated(agentidp_client, agentidp_idp):
    setup = await setup_agent(agentidp_client, agentidp_idp)
    agent_id, headers = setup["agent"]["agent_id"], setup["headers"]
    path = f"/api/v1/agents/{agent_id}"
    response = await agentidp_client.patch(path, json={"status": "suspended"}, headers=headers)
    assert response.status_code == 200
    await _deactivated(agentidp_client, agent_id, setup["did"])
    owner = await (await agentidp_client.get(f"{path}/did", headers=headers)).get_json()
    assert owner["didDocumentMetadata"]["deactivated"] is True
    assert owner["didDocument"]["verificationMethod"]  # the owner still sees its keys

    # Reactivated: the document is back.
    await agentidp_client.patch(path, json={"status": "active"}, headers=headers)
    response = await agentidp_client.get(f"/agents/{agent_id}/did.json")
    assert response.status_code == 200

    assert (await agentidp_client.delete(path, headers=headers)).status_code in (200, 204)
    result = await _deactivated(agentidp_client, agent_id, setup["did"])
    assert "updated" in result["didDocumentMetadata"]


async def test_management_api(agentidp_client, agentidp_idp):
    setup = await setup_agent(agentidp_client, agentidp_idp, metadata={"a2a_agent_card": CARD})
    path = f"/api/v1/agents/{setup['agent']['agent_id']}/did"
    response = await agentidp_client.get(path, headers=setup["headers"])
    assert response.status_code == 200
    result = await response.get_json()
    public = json.loads(
        await (
            await agentidp_client.get(f"/agents/{setup['agent']['agent_id']}/did.json")
        ).get_data()
    )
    assert result["didDocument"] == public
    assert result["didDocumentMetadata"]["created"].endswith("Z")
    assert "deactivated" not in result["didDocumentMetadata"]

    assert (await agentidp_client.get(path)).status_code == 401
    # Another organisation's admin: 404, not 403 (tenants see only their own objects).
    other = await admin_headers(agentidp_client, await make_org(agentidp_idp, "Other"))
    response = await agentidp_client.get(path, headers=other)
    assert response.status_code == 404
    assert (await response.get_json())["code"] == "NOT_FOUND"
    # The agent's own token has no agents:read scope.
    own = await token(
        agentidp_client, setup["agent"]["client_id"], setup["secret"]["client_secret"]
    )
    response = await agentidp_client.get(
        path, headers={"Authorization": f"Bearer {own['access_token']}"}
    )
    assert response.status_code == 403


async def test_access_token_carries_did_claim(agentidp_client, agentidp_idp):
    setup = await setup_agent(agentidp_client, agentidp_idp)
    body = await token(
        agentidp_client, setup["agent"]["client_id"], setup["secret"]["client_secret"]
    )
    claims = await agentidp_idp.tokens.verify(body["access_token"])
    assert claims["did"] == setup["did"]
    # Organisation admin clients are not agents: no DID.
    admin = await token(agentidp_client, setup["org"]["client_id"], setup["org"]["client_secret"])
    assert "did" not in claims_of(admin["access_token"])


def _counter(text: str) -> float:
    for line in text.splitlines():
        if line.startswith(COUNTER + " "):
            return float(line.split()[1])
    raise AssertionError(f"{COUNTER} not in /metrics")


async def test_documents_counter(agentidp_client, agentidp_idp):
    setup = await setup_agent(agentidp_client, agentidp_idp)
    before = _counter((await (await agentidp_client.get("/metrics")).get_data()).decode())
    await agentidp_client.get(f"/agents/{setup['agent']['agent_id']}/did.json")
    await agentidp_client.get("/.well-known/did.json")
    await agentidp_client.get(
        f"/api/v1/agents/{setup['agent']['agent_id']}/did", headers=setup["headers"]
    )
    await agentidp_client.get("/agents/unknown/did.json")  # no document generated
    after = _counter((await (await agentidp_client.get("/metrics")).get_data()).decode())
    assert after - before == 3


async def test_cache_control_defaults_to_no_cache(agentidp_client):
    response = await agentidp_client.get("/.well-known/did.json")
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "agentidp_overrides", [{"DID_ENABLED": True, "ISSUER": ISSUER, "DID_CACHE_MAX_AGE": 60}]
)
async def test_cache_max_age_setting(agentidp_client):
    response = await agentidp_client.get("/.well-known/did.json")
    assert response.headers["Cache-Control"] == "max-age=60"
