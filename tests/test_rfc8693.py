"""RFC 8693 token exchange owned by the kernel: §2.1 checks, §2.2 answers, handlers
chosen by subject_token_type (and issuer).

The hello fixture plugin handles `urn:agentidp:params:token-type:hello`; the
delegation plugin handles our own access tokens. Both may be enabled at once.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from agentidp_hello import HELLO_TOKEN_TYPE, state

from agentidp_server import (
    ACCESS_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    ExchangedToken,
    TokenExchange,
    hookimpl,
)
from agentidp_server.app import build_idp, create_app
from agentidp_server.plugins import PluginError
from agentidp_server.settings import load_settings
from agentidp_server.testkit import admin_headers, basic, make_agent, make_org, token

TOKEN = "/api/v1/token"
METADATA = "/.well-known/oauth-authorization-server"


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True, "DELEGATION_ENABLED": True}


def settings_for(tmp_path: Path, **overrides: Any) -> Any:
    base = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/idp.db"}
    return load_settings(env="test", overrides={**base, **overrides}, environ={})


def claims_of(jwt: str) -> dict[str, Any]:
    part = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def exchange(client: Any, org: dict[str, Any], **params: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        TOKEN,
        form={"grant_type": TOKEN_EXCHANGE, **params},
        headers=basic(org["client_id"], org["client_secret"]),
    )
    return response.status_code, await response.get_json()


@pytest.mark.parametrize("agentidp_overrides", [{}])
async def test_without_a_handler_token_exchange_is_neither_served_nor_advertised(
    agentidp_client, agentidp_idp
):
    metadata = await (await agentidp_client.get(METADATA)).get_json()
    assert TOKEN_EXCHANGE not in metadata["grant_types_supported"]
    org = await make_org(agentidp_idp)
    status, body = await exchange(
        agentidp_client, org, subject_token="hello:x", subject_token_type=HELLO_TOKEN_TYPE
    )
    assert status == 400
    assert body["error"] == "unsupported_grant_type"


@pytest.mark.parametrize("agentidp_overrides", [{"HELLO_ENABLED": True}])
async def test_a_plugin_handler_gets_its_subject_token_type(agentidp_client, agentidp_idp):
    metadata = await (await agentidp_client.get(METADATA)).get_json()
    assert metadata["grant_types_supported"].count(TOKEN_EXCHANGE) == 1
    org = await make_org(agentidp_idp)
    status, body = await exchange(
        agentidp_client,
        org,
        subject_token="hello:one",
        subject_token_type=HELLO_TOKEN_TYPE,
        scope="agents:read",
        audience="https://api.example",
    )
    assert status == 200, body
    # RFC 8693 §2.2.1, built by the kernel from what the handler issued.
    assert set(body) >= {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "agents:read"
    assert claims_of(body["access_token"])["aud"] == "https://api.example"
    assert state(agentidp_idp)["exchanges"] == ["hello:one"]
    # The handler's own refusal is answered as it raised it (§2.2.2).
    status, body = await exchange(
        agentidp_client, org, subject_token="bye:one", subject_token_type=HELLO_TOKEN_TYPE
    )
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("agentidp_overrides", [{"HELLO_ENABLED": True}])
@pytest.mark.parametrize(
    ("params", "error", "words"),
    [
        ({"subject_token_type": HELLO_TOKEN_TYPE}, "invalid_request", "subject_token is required"),
        ({"subject_token": "hello:x"}, "invalid_request", "subject_token_type is required"),
        ({"subject_token": "", "subject_token_type": HELLO_TOKEN_TYPE}, "invalid_request", "empty"),
        (
            {"subject_token": "hello:x", "subject_token_type": ACCESS_TOKEN_TYPE},
            "invalid_request",
            f"subject_token_type must be {HELLO_TOKEN_TYPE}",
        ),
        (  # the hello handler takes no actor token
            {
                "subject_token": "hello:x",
                "subject_token_type": HELLO_TOKEN_TYPE,
                "actor_token": "y",
                "actor_token_type": ACCESS_TOKEN_TYPE,
            },
            "invalid_request",
            "actor_token_type must be absent",
        ),
        (
            {
                "subject_token": "hello:x",
                "subject_token_type": HELLO_TOKEN_TYPE,
                "actor_token_type": ACCESS_TOKEN_TYPE,
            },
            "invalid_request",
            "actor_token_type is given without actor_token",
        ),
        (
            {
                "subject_token": "hello:x",
                "subject_token_type": HELLO_TOKEN_TYPE,
                "requested_token_type": JWT_TOKEN_TYPE,
            },
            "invalid_request",
            f"requested_token_type must be {ACCESS_TOKEN_TYPE}",
        ),
        (
            {"subject_token": "hello:x", "subject_token_type": HELLO_TOKEN_TYPE, "scope": "a  b"},
            "invalid_scope",
            "scope tokens",
        ),
        (
            {
                "subject_token": "hello:x",
                "subject_token_type": HELLO_TOKEN_TYPE,
                "resource": "relative/path#x",
            },
            "invalid_target",
            "absolute URI",
        ),
        (
            {"subject_token": "hello:x", "subject_token_type": HELLO_TOKEN_TYPE, "audience": " "},
            "invalid_request",
            "audience must not be empty",
        ),
    ],
)
async def test_the_kernel_checks_section_2_1(agentidp_client, agentidp_idp, params, error, words):
    org = await make_org(agentidp_idp)
    status, body = await exchange(agentidp_client, org, **params)
    assert status == 400, body
    assert body["error"] == error
    assert words in body["error_description"]
    assert state(agentidp_idp)["exchanges"] == []  # refused before the handler


async def test_delegation_and_a_second_handler_each_get_their_own_requests(
    agentidp_client, agentidp_idp
):
    org = await make_org(agentidp_idp)
    headers = await admin_headers(agentidp_client, org)
    a, a_secret = await make_agent(agentidp_client, headers, name="A")
    b, b_secret = await make_agent(agentidp_client, headers, name="B")
    response = await agentidp_client.post(
        "/api/v1/delegations",
        json={"delegator": a["agent_id"], "delegatee": b["agent_id"], "scopes": ["read"]},
        headers=headers,
    )
    assert response.status_code == 201
    subject = (await token(agentidp_client, a_secret["client_id"], a_secret["client_secret"]))[
        "access_token"
    ]
    b_client = {"client_id": b_secret["client_id"], "client_secret": b_secret["client_secret"]}
    status, body = await exchange(
        agentidp_client, b_client, subject_token=subject, subject_token_type=ACCESS_TOKEN_TYPE
    )
    assert status == 200, body
    delegated = claims_of(body["access_token"])
    assert (delegated["sub"], delegated["act"]) == (a["agent_id"], {"sub": b["agent_id"]})
    assert state(agentidp_idp)["exchanges"] == []  # not the hello handler's
    status, body = await exchange(
        agentidp_client, b_client, subject_token="hello:b", subject_token_type=HELLO_TOKEN_TYPE
    )
    assert status == 200, body
    assert "act" not in claims_of(body["access_token"])  # not delegation's
    assert state(agentidp_idp)["exchanges"] == ["hello:b"]
    metadata = await (await agentidp_client.get(METADATA)).get_json()
    assert metadata["grant_types_supported"].count(TOKEN_EXCHANGE) == 1


class PartnerHandler:
    """Subject JWTs of one partner issuer, beside delegation's handler for the same type."""

    subject_token_types = (JWT_TOKEN_TYPE,)
    actor_token_types: tuple[str, ...] = ()
    issued_token_types = (ACCESS_TOKEN_TYPE,)
    issuer = "https://partner.example"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def exchange(self, exchange: TokenExchange) -> ExchangedToken:
        self.seen.append(exchange.subject_token)
        return ExchangedToken("partner-token", ACCESS_TOKEN_TYPE, 60, "read")

    @hookimpl
    def register_token_exchange_handlers(self, idp: Any) -> list[Any]:
        return [self]


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


async def test_a_handler_keyed_by_issuer_gets_only_that_issuers_tokens(tmp_path):
    idp = build_idp(settings_for(tmp_path, DELEGATION_ENABLED=True))
    partner = PartnerHandler()
    idp._hooks.add(partner, "partner")
    app = create_app(idp=idp)
    async with app.test_app():
        client = app.test_client()
        org = await make_org(idp)
        theirs = unsigned_jwt({"iss": "https://partner.example", "sub": "p"})
        status, body = await exchange(
            client, org, subject_token=theirs, subject_token_type=JWT_TOKEN_TYPE
        )
        assert status == 200, body
        assert body["access_token"] == "partner-token"
        assert partner.seen == [theirs]
        # Another issuer's JWT goes to delegation (the handler without an issuer).
        other = unsigned_jwt({"iss": "https://elsewhere.example", "sub": "p"})
        status, body = await exchange(
            client, org, subject_token=other, subject_token_type=JWT_TOKEN_TYPE
        )
        assert (status, body["error"]) == (400, "invalid_grant")
        assert partner.seen == [theirs]


class SecondDelegation:
    subject_token_types = (ACCESS_TOKEN_TYPE,)
    actor_token_types: tuple[str, ...] = ()
    issued_token_types = (ACCESS_TOKEN_TYPE,)
    issuer = None

    async def exchange(self, exchange: TokenExchange) -> ExchangedToken:
        raise AssertionError("never served")

    @hookimpl
    def register_token_exchange_handlers(self, idp: Any) -> list[Any]:
        return [self]


def test_two_handlers_for_one_subject_token_type_stop_startup(tmp_path):
    idp = build_idp(settings_for(tmp_path, DELEGATION_ENABLED=True))
    idp._hooks.add(SecondDelegation(), "rogue")
    message = (
        f"plugin 'rogue': subject_token_type '{ACCESS_TOKEN_TYPE}' is already handled by "
        "'delegation'"
    )
    with pytest.raises(PluginError, match=message):
        create_app(idp=idp)
