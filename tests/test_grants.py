"""Grants declare the client authentication they accept (TOKEN_ENDPOINT_AUTH_METHODS).

The hello fixture plugin's grant accepts "none", the two secret methods and its
own `hello_token` method (registered through `register_client_auth_methods`),
but not private_key_jwt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agentidp_hello import AUTH_METHOD, GRANT_TYPE, state

from agentidp_server import hookimpl
from agentidp_server.app import build_idp, create_app
from agentidp_server.oauth.client_auth import KERNEL_METHODS
from agentidp_server.plugins import PluginError
from agentidp_server.settings import load_settings
from agentidp_server.testkit import basic, make_org, token

TOKEN = "/api/v1/token"
KERNEL = ["client_secret_basic", "client_secret_post", "private_key_jwt"]


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True}


def settings_for(tmp_path: Path, **overrides: Any) -> Any:
    base = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/idp.db"}
    return load_settings(env="test", overrides={**base, **overrides}, environ={})


async def post(client: Any, form: dict[str, str], headers: dict[str, str] | None = None) -> Any:
    response = await client.post(TOKEN, form=form, headers=headers or {})
    return response.status_code, await response.get_json()


async def test_a_grant_accepting_none_is_served_without_client_authentication(
    agentidp_client, agentidp_idp
):
    status, body = await post(agentidp_client, {"grant_type": GRANT_TYPE})
    assert status == 200, body
    assert body == {"greeting": "hello", "client_id": None, "unauthenticated_client_id": None}
    # The client_id parameter reaches the grant, marked as vouched for by nobody.
    status, body = await post(agentidp_client, {"grant_type": GRANT_TYPE, "client_id": "someone"})
    assert status == 200, body
    assert body["client_id"] is None
    assert body["unauthenticated_client_id"] == "someone"


async def test_a_grant_accepting_none_still_authenticates_a_client_that_presents_itself(
    agentidp_client, agentidp_idp
):
    org = await make_org(agentidp_idp)
    status, body = await post(
        agentidp_client, {"grant_type": GRANT_TYPE}, basic(org["client_id"], org["client_secret"])
    )
    assert status == 200, body
    assert body["client_id"] == org["client_id"]
    assert body["unauthenticated_client_id"] is None
    # A wrong secret is refused, not downgraded to "none".
    status, body = await post(
        agentidp_client, {"grant_type": GRANT_TYPE}, basic(org["client_id"], "wrong")
    )
    assert status == 401
    assert body["error"] == "invalid_client"
    failures = await agentidp_idp.db.fetchval(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'client.authentication_failed'"
    )
    assert failures == 1
    status, body = await post(
        agentidp_client,
        {"grant_type": GRANT_TYPE, "client_id": org["client_id"], "client_secret": "wrong"},
    )
    assert status == 401
    assert body["error"] == "invalid_client"


async def test_a_method_the_grant_does_not_accept_is_invalid_client(agentidp_client, agentidp_idp):
    form = {
        "grant_type": GRANT_TYPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "a.b.c",
    }
    status, body = await post(agentidp_client, form)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert "private_key_jwt is not accepted" in body["error_description"]


async def test_client_credentials_still_requires_client_authentication(
    agentidp_client, agentidp_idp
):
    status, body = await post(agentidp_client, {"grant_type": "client_credentials"})
    assert status == 401
    assert body["error"] == "invalid_client"
    # An unknown grant_type is still answered after authentication, as before.
    status, body = await post(agentidp_client, {"grant_type": "urn:example:unknown"})
    assert status == 401
    assert body["error"] == "invalid_client"


async def test_a_registered_method_authenticates_at_the_token_endpoint(
    agentidp_client, agentidp_idp
):
    org = await make_org(agentidp_idp)
    own = (await token(agentidp_client, org["client_id"], org["client_secret"]))["access_token"]
    status, body = await post(agentidp_client, {"grant_type": GRANT_TYPE, "hello_token": own})
    assert status == 200, body
    assert body["client_id"] == org["client_id"]
    status, body = await post(
        agentidp_client, {"grant_type": GRANT_TYPE, "hello_token": "not-a-token"}
    )
    assert status == 401
    assert body["error"] == "invalid_client"
    # client_credentials keeps the default methods, the kernel's three.
    status, body = await post(
        agentidp_client, {"grant_type": "client_credentials", "hello_token": own}
    )
    assert status == 401
    assert "hello_token is not accepted" in body["error_description"]
    # Introspection and revocation take the kernel's methods only: an access token must
    # not act as its client there (it could revoke every token of an admin's org).
    for path in ("/api/v1/token/introspect", "/api/v1/token/revoke"):
        response = await agentidp_client.post(path, form={"token": own, "hello_token": own})
        assert response.status_code == 401, path
        assert (await response.get_json())["error"] == "invalid_client"
    # Two methods in one request (RFC 6749 §2.3).
    status, body = await post(
        agentidp_client,
        {"grant_type": GRANT_TYPE, "hello_token": own},
        basic(org["client_id"], org["client_secret"]),
    )
    assert status == 400
    assert body["error"] == "invalid_request"


async def test_metadata_lists_registered_methods_and_none(agentidp_client):
    body = await (await agentidp_client.get("/.well-known/oauth-authorization-server")).get_json()
    assert body["token_endpoint_auth_methods_supported"] == [*KERNEL, AUTH_METHOD, "none"]
    assert body["introspection_endpoint_auth_methods_supported"] == KERNEL
    assert body["revocation_endpoint_auth_methods_supported"] == KERNEL


@pytest.mark.parametrize("agentidp_overrides", [{}])
async def test_metadata_without_plugins_lists_the_kernel_methods(agentidp_client):
    body = await (await agentidp_client.get("/.well-known/oauth-authorization-server")).get_json()
    assert body["token_endpoint_auth_methods_supported"] == KERNEL


class DuplicateMethod:
    @hookimpl
    def register_client_auth_methods(self, idp: Any) -> list[Any]:
        return [KERNEL_METHODS["client_secret_post"]]


class NoneMethod:
    name = "none"

    @hookimpl
    def register_client_auth_methods(self, idp: Any) -> list[Any]:
        return [self]


class UnknownMethodGrant:
    grant_type = "urn:example:grant"
    TOKEN_ENDPOINT_AUTH_METHODS = ("tls_client_auth",)

    async def issue(self, request: Any) -> dict[str, Any]:
        return {}

    @hookimpl
    def register_grant_types(self, idp: Any) -> list[Any]:
        return [self]


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (
            DuplicateMethod(),
            r"plugin 'rogue': client auth method 'client_secret_post' is already registered "
            r"by 'core'",
        ),
        (NoneMethod(), r"plugin 'rogue': a client auth method has no usable name"),
        (
            UnknownMethodGrant(),
            r"grant type 'urn:example:grant' accepts unregistered client auth methods",
        ),
    ],
    ids=["duplicate", "none", "unknown-in-grant"],
)
def test_client_auth_method_contract_breaches_stop_startup(tmp_path, plugin, message):
    idp = build_idp(settings_for(tmp_path))
    idp._hooks.add(plugin, "rogue")
    with pytest.raises(PluginError, match=message):
        create_app(idp=idp)


async def test_a_registered_methods_secret_parameters_never_reach_plugins(
    agentidp_client, agentidp_idp
):
    org = await make_org(agentidp_idp)
    own = (await token(agentidp_client, org["client_id"], org["client_secret"]))["access_token"]
    status, body = await post(
        agentidp_client, {"grant_type": GRANT_TYPE, "hello_token": own, "mint": "yes"}
    )
    assert status == 200, body
    context = state(agentidp_idp)["token_responses"][-1]
    assert context["grant_type"] == GRANT_TYPE
    assert context["params"] == {"grant_type": GRANT_TYPE, "mint": "yes"}
    # Without client authentication the grant has no client to mint for.
    status, body = await post(agentidp_client, {"grant_type": GRANT_TYPE, "mint": "yes"})
    assert (status, body["error"]) == (401, "invalid_client")
