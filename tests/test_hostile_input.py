"""Hostile input is a 4xx in the endpoint's own error shape, never a 500 (issue 25
items 2, 5 and 7; issue 15's malformed JSON), on both storage backends."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from agentidp_server.oauth.client_lookup import ClientLookup
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org

TOKEN = "/api/v1/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
NESTED = b"[" * 30_000 + b"]" * 30_000
# An EC P-256 public key (RFC 7517 appendix A.1) with a NUL in its kid.
JWK_NUL_KID = {
    "kty": "EC",
    "crv": "P-256",
    "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
    "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
    "kid": "a\u0000b",
}


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    # The plugins whose routes the probe reached: their bad input is refused centrally.
    return {"DID_ENABLED": True, "DELEGATION_ENABLED": True, "RATE_LIMIT_MAX": 1000}


async def _oauth_error(response: Any) -> str:
    body = await response.get_json()
    assert set(body) == {"error", "error_description"}, body
    return str(body["error"])


async def _api_error(response: Any) -> str:
    body = await response.get_json()
    assert set(body) == {"code", "message", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-Id"]
    return str(body["code"])


# Item 1: NUL and lone surrogates at the OAuth endpoints (form and JSON bodies).
OAUTH_CASES = [
    (TOKEN, b"grant_type=client_credentials&client_id=%00&client_secret=x", FORM),
    (TOKEN, b'{"grant_type":"client_credentials","client_secret":"x","client_id":"\\ud800"}', JSON),
    (TOKEN, b'{"grant_type":"client_credentials","client_secret":"x","client_id":"\\u0000"}', JSON),
    (TOKEN + "/introspect", b"token=x&client_id=%00&client_secret=x", FORM),
    (TOKEN + "/revoke", b"token=x&client_id=a%00b&client_secret=x", FORM),
    (TOKEN + "/revoke", b'{"token":"\\udc00","client_id":"x","client_secret":"x"}', JSON),
    (TOKEN + "/introspect?token_type_hint=%00", b"token=x&client_id=x&client_secret=x", FORM),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "headers"), OAUTH_CASES)
async def test_nul_and_lone_surrogates_are_invalid_request_at_oauth_endpoints(
    agentidp_client: Any, path: str, body: bytes, headers: dict[str, str]
) -> None:
    response = await agentidp_client.post(path, data=body, headers=headers)
    assert response.status_code == 400
    assert await _oauth_error(response) == "invalid_request"


async def test_nul_and_lone_surrogates_are_invalid_input_in_the_management_api(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    agent, _ = await make_agent(agentidp_client, headers)
    base = f"/api/v1/agents/{agent['agent_id']}"
    delegation = {"delegator": agent["agent_id"], "delegatee": "b\u0000", "scopes": ["read"]}
    probes: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/v1/agents/a%00b", {}),
        ("PATCH", "/api/v1/agents/a%00b", {"json": {"name": "x"}}),
        ("GET", "/api/v1/agents?status=%00", {}),
        ("GET", "/api/v1/agents?cursor=a%00", {}),
        ("GET", "/api/v1/audit?action=%00", {}),
        ("GET", "/api/v1/audit?agent_id=%ED%A0%80%00", {}),
        ("POST", "/api/v1/agents", {"json": {"name": "a\u0000", "deployment_env": "production"}}),
        (
            "POST",
            "/api/v1/agents",
            {"data": b'{"name":"\\ud800","deployment_env":"production"}', "headers": JSON},
        ),
        ("PATCH", base, {"json": {"metadata": {"k\u0000": "v"}}}),
        ("DELETE", f"{base}/credentials/a%00b", {}),
        ("POST", f"{base}/credentials", {"json": {"type": "private_key_jwt", "jwk": JWK_NUL_KID}}),
        ("POST", "/api/v1/delegations", {"json": delegation}),
        ("GET", "/api/v1/delegations/a%00b", {}),
        ("GET", "/api/v1/delegations?status=%00", {}),
        ("GET", "/api/v1/agents/a%00b/did", {}),
    ]
    for method, path, request in probes:
        extra = request.pop("headers", {})
        response = await agentidp_client.open(
            path, method=method, headers={**headers, **extra}, **request
        )
        assert response.status_code == 400, (method, path, await response.get_data())
        assert await _api_error(response) == "INVALID_INPUT", (method, path)


async def test_the_public_did_document_refuses_a_nul_in_the_agent_id(
    agentidp_client: Any,
) -> None:
    response = await agentidp_client.get("/agents/a%00b/did.json")
    assert response.status_code == 400
    assert await _api_error(response) == "INVALID_INPUT"


# Item 2: one poisoned request among many fails only itself.
async def test_a_poisoned_token_request_fails_only_itself(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    credentials = [(await make_agent(agentidp_client, headers))[1] for _ in range(6)]
    legitimate = [
        agentidp_client.post(
            TOKEN,
            form={"grant_type": "client_credentials"},
            headers=basic(c["client_id"], c["client_secret"]),
        )
        for c in credentials
        for _ in range(10)
    ]
    poisoned = agentidp_client.post(
        TOKEN, data=b"grant_type=client_credentials&client_id=%00&client_secret=x", headers=FORM
    )
    responses = await asyncio.gather(poisoned, *legitimate)
    assert responses[0].status_code == 400
    assert [r.status_code for r in responses[1:]] == [200] * 60


async def test_client_ids_that_cannot_be_ours_never_join_a_lookup_batch(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    lookup = ClientLookup.of(agentidp_idp)
    outcomes = await asyncio.gather(
        *(lookup.for_secret(org["client_id"], fresh=True) for _ in range(30)),
        lookup.for_secret("a\u0000b", fresh=True),
        lookup.for_secret("\ud800", fresh=True),
        *(lookup.for_secret(org["client_id"], fresh=True) for _ in range(30)),
    )
    agents = [agent for (agent, _, _), _ in outcomes]
    assert agents[30:32] == [None, None]
    assert all(a is not None and a["client_id"] == org["client_id"] for a in agents[:30])
    assert all(a is not None and a["client_id"] == org["client_id"] for a in agents[32:])


# Item 3: deep JSON, out-of-range cursors, raw bytes in Basic credentials.
async def test_json_nested_30000_deep_is_a_400(agentidp_client: Any, agentidp_idp: Any) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    response = await agentidp_client.post(
        "/api/v1/agents", data=NESTED, headers={**headers, **JSON}
    )
    assert response.status_code == 400
    assert await _api_error(response) == "INVALID_JSON"
    response = await agentidp_client.post(TOKEN, data=NESTED, headers=JSON)
    assert response.status_code == 400
    assert await _oauth_error(response) == "invalid_request"


@pytest.mark.parametrize(
    "cursor", ["9223372036854775808", "99999999999999999999", "-1", "x", "1" * 5000]
)
async def test_an_audit_cursor_outside_int64_is_a_400(
    agentidp_client: Any, agentidp_idp: Any, cursor: str
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    response = await agentidp_client.get(
        "/api/v1/audit", query_string={"cursor": cursor}, headers=headers
    )
    assert response.status_code == 400
    assert await _api_error(response) == "VALIDATION_ERROR"
    largest = await agentidp_client.get(
        "/api/v1/audit", query_string={"cursor": str(2**63 - 1)}, headers=headers
    )
    assert largest.status_code == 200


@pytest.mark.parametrize("quart", [False, True], ids=["fast-path", "quart"])
@pytest.mark.parametrize(
    "authorization",
    [
        "Basic \xff\xfe",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
        "Basic " + base64.b64encode(b"a%00b:x").decode(),
        "Basic " + base64.b64encode(b"a:x%00").decode(),
    ],
)
async def test_raw_bytes_and_nul_in_basic_credentials_are_invalid_client(
    agentidp_app: Any, authorization: str, quart: bool
) -> None:
    app = agentidp_app.app
    endpoint = app.asgi_app
    if quart:
        app.asgi_app = endpoint.downstream
    try:
        response = await agentidp_app.test_client().post(
            TOKEN,
            form={"grant_type": "client_credentials"},
            headers={"Authorization": authorization},
        )
    finally:
        app.asgi_app = endpoint
    assert response.status_code == 401
    assert await _oauth_error(response) == "invalid_client"


def _unsigned_assertion(iss: str) -> str:
    """A client assertion whose (unverified) iss the server reads before any key check."""
    part = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'ES256', 'kid': 'k'})}.{part({'iss': iss, 'sub': iss})}.c2ln"


@pytest.mark.parametrize("iss", ["a\u0000b", "\ud800", "x" * 5000])
async def test_an_assertion_iss_that_cannot_be_a_client_is_invalid_client(
    agentidp_client: Any, iss: str
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _unsigned_assertion(iss),
    }
    for path in (TOKEN, TOKEN + "/introspect", TOKEN + "/revoke"):
        response = await agentidp_client.post(path, form={**form, "token": "x"})
        assert response.status_code == 401, (path, await response.get_data())
        assert await _oauth_error(response) == "invalid_client"


# Item 4: duplicate keys in a JSON token request, refused as repeated form parameters are.
async def test_duplicate_keys_in_a_json_token_request_are_refused(
    agentidp_client: Any, agentidp_idp: Any
) -> None:
    org = await make_org(agentidp_idp)
    pair = f'"client_id":"{org["client_id"]}","client_secret":"{org["client_secret"]}"'
    body = f'{{"grant_type":"password","grant_type":"client_credentials",{pair}}}'
    response = await agentidp_client.post(TOKEN, data=body.encode(), headers=JSON)
    assert response.status_code == 400
    assert await _oauth_error(response) == "invalid_request"
    form = "grant_type=password&grant_type=client_credentials"
    response = await agentidp_client.post(
        TOKEN, data=form.encode(), headers={**FORM, **basic(org["client_id"], org["client_secret"])}
    )
    assert response.status_code == 400
    assert await _oauth_error(response) == "invalid_request"


# Item 5 (issue 15): malformed JSON is the API's own 400, with a message about JSON.
@pytest.mark.parametrize("body", [b"{bad", b"", b'{"name": "a", "name": "b"}'])
async def test_malformed_json_is_a_400_in_the_api_error_shape(
    agentidp_client: Any, agentidp_idp: Any, body: bytes
) -> None:
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    response = await agentidp_client.post("/api/v1/agents", data=body, headers={**headers, **JSON})
    assert response.status_code == 400
    assert await _api_error(response) == "INVALID_JSON"
    message = (await response.get_json())["message"]
    assert message.startswith("request body is not valid JSON: "), message
    listed = await agentidp_client.get("/api/v1/agents", headers=headers)
    assert json.loads(await listed.get_data())["data"] == []  # nothing was created


def _nested_jws(deep_part: int) -> str:
    """A compact JWS whose header (0) or payload (1) is JSON nested 5,000 deep."""
    nested = base64.urlsafe_b64encode(b"[" * 5_000 + b"]" * 5_000).rstrip(b"=").decode()
    plain = base64.urlsafe_b64encode(b'{"alg":"ES256"}').rstrip(b"=").decode()
    parts = [plain, plain, "c2ln"]
    parts[deep_part] = nested
    return ".".join(parts)


@pytest.mark.parametrize("deep_part", [0, 1])
async def test_jws_segments_nested_too_deep_are_refused_not_500(
    agentidp_client: Any, agentidp_idp: Any, deep_part: int
) -> None:
    org = await make_org(agentidp_idp)
    assertion = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _nested_jws(deep_part),
    }
    for path in (TOKEN, TOKEN + "/introspect", TOKEN + "/revoke"):
        response = await agentidp_client.post(path, form={**assertion, "token": "x"})
        assert response.status_code == 401, (path, await response.get_data())
    # The presented token itself (introspection reads its header; exchange its payload).
    good = basic(org["client_id"], org["client_secret"])
    response = await agentidp_client.post(
        TOKEN + "/introspect", form={"token": _nested_jws(deep_part)}, headers=good
    )
    assert (response.status_code, (await response.get_json())["active"]) == (200, False)
    response = await agentidp_client.post(
        TOKEN,
        form={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": _nested_jws(deep_part),
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
        headers=good,
    )
    assert response.status_code == 400, await response.get_data()
