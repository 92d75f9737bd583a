"""Declared scopes (register_scopes, issue 16): scopes_supported, org admins' grants,
startup checks, and a plugin's scopes following whether it is enabled."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agentidp_server import Scope, hookimpl
from agentidp_server.app import create_app
from agentidp_server.plugins import PluginError
from agentidp_server.settings import load_settings
from agentidp_server.testkit import basic, make_agent, make_org, token

METADATA = "/.well-known/oauth-authorization-server"


def settings(tmp_path: Path, storage: dict[str, Any], **overrides: Any) -> Any:
    return load_settings(
        env="test", overrides={"DATA_DIR": str(tmp_path), **storage, **overrides}, environ={}
    )


@asynccontextmanager
async def serving(tmp_path: Path, storage: dict[str, Any], **overrides: Any) -> Any:
    app = create_app(settings(tmp_path, storage, **overrides))
    async with app.test_app() as test_app:
        yield test_app.test_client(), app.extensions["agentidp"]


async def test_admins_of_earlier_organisations_hold_a_later_plugins_scopes(
    tmp_path, agentidp_storage
):
    async with serving(tmp_path, agentidp_storage) as (client, idp):
        org = await make_org(idp)  # before hello is enabled
        before = await token(client, org["client_id"], org["client_secret"])
        assert "hello:read" not in before["scope"].split()
        assert (
            "hello:read" not in (await (await client.get(METADATA)).get_json())["scopes_supported"]
        )

    async with serving(tmp_path, agentidp_storage, HELLO_ENABLED=True) as (client, idp):
        issued = await token(client, org["client_id"], org["client_secret"], scope="hello:read")
        assert issued["scope"] == "hello:read"
        bearer = {"Authorization": f"Bearer {issued['access_token']}"}
        assert (await client.get("/hello/private", headers=bearer)).status_code == 200
        everything = await token(client, org["client_id"], org["client_secret"])
        assert "hello:read" in everything["scope"].split()
        assert "agents:read" in everything["scope"].split()

    # Disabled again: the scope is neither issued nor advertised.
    async with serving(tmp_path, agentidp_storage) as (client, idp):
        response = await client.post(
            "/api/v1/token",
            form={"grant_type": "client_credentials", "scope": "hello:read"},
            headers=basic(org["client_id"], org["client_secret"]),
        )
        assert response.status_code == 400
        assert await response.get_json() == {
            "error": "invalid_scope",
            "error_description": "scope not allowed for this client: hello:read",
        }
        assert (
            "hello:read" not in (await (await client.get(METADATA)).get_json())["scopes_supported"]
        )


async def test_agents_hold_only_their_own_scopes(tmp_path, agentidp_storage):
    async with serving(tmp_path, agentidp_storage, HELLO_ENABLED=True) as (client, idp):
        org = await make_org(idp)
        admin = {
            "Authorization": "Bearer "
            + (await token(client, org["client_id"], org["client_secret"]))["access_token"]
        }
        _, credential = await make_agent(client, admin, scopes=["hello:wave"])
        response = await client.post(
            "/api/v1/token",
            form={"grant_type": "client_credentials", "scope": "hello:read"},
            headers=basic(credential["client_id"], credential["client_secret"]),
        )
        assert (await response.get_json())["error"] == "invalid_scope"
        issued = await token(client, credential["client_id"], credential["client_secret"])
        assert issued["scope"] == "hello:wave"
        forbidden = await client.get(
            "/hello/private", headers={"Authorization": f"Bearer {issued['access_token']}"}
        )
        assert forbidden.status_code == 403
        assert (await forbidden.get_json())["code"] == "FORBIDDEN"


async def test_scopes_supported_lists_every_declared_scope(tmp_path, agentidp_storage):
    async with serving(tmp_path, agentidp_storage, HELLO_ENABLED=True) as (client, _):
        supported = (await (await client.get(METADATA)).get_json())["scopes_supported"]
    assert supported == [
        "agents:read",
        "agents:write",
        "credentials:read",
        "credentials:write",
        "tokens:revoke",
        "audit:read",
        "hello:read",
        "hello:wave",
    ]


def declaring(*scopes: Any) -> object:
    class Declares:
        @hookimpl
        def register_scopes(self) -> list[Any]:
            return list(scopes)

    return Declares()


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            [Scope("agents:read", "again", admin=True)],
            "plugin 'rogue': scope 'agents:read' is already declared by 'core'",
        ),
        (
            [Scope("hello:read", "mine")],
            "plugin 'rogue': scope 'hello:read' is already declared by 'hello'",
        ),
        (
            [Scope("rogue:a", "one"), Scope("rogue:a", "two")],
            "plugin 'rogue': scope 'rogue:a' is already declared by 'rogue'",
        ),
        (
            [Scope("rogue read", "a space")],
            "plugin 'rogue': scope 'rogue read' is not an RFC 6749 §3.3 scope token",
        ),
        (
            [Scope('say"hi', "a quote")],
            "plugin 'rogue': scope 'say\"hi' is not an RFC 6749 §3.3 scope token",
        ),
        (
            [Scope("", "empty")],
            "plugin 'rogue': scope '' is not an RFC 6749 §3.3 scope token",
        ),
        ([Scope("rogue:a", " ")], "plugin 'rogue': scope 'rogue:a' needs a description"),
        (["rogue:a"], "plugin 'rogue': register_scopes must return Scope objects"),
    ],
    ids=["kernel-dup", "plugin-dup", "self-dup", "space", "quote", "empty", "no-doc", "str"],
)
def test_bad_declarations_stop_startup(tmp_path, publish_rogue, declared, message):
    publish_rogue(declaring(*declared))
    with pytest.raises(PluginError) as raised:
        create_app(
            settings(tmp_path, {}, DATABASE_URL=f"sqlite:///{tmp_path}/idp.db", HELLO_ENABLED=True,
                     ROGUE_ENABLED=True)
        )  # fmt: skip
    assert str(raised.value) == message


@pytest.fixture
def publish_rogue(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Publish an in-test plugin as the `rogue` entry point beside the installed ones."""
    import agentidp_server.plugins as plugins_module

    real = plugins_module.entry_points

    class EntryPoint:
        name, dist = "rogue", None

        def __init__(self, plugin: object) -> None:
            self.plugin = plugin

        def load(self) -> object:
            return self.plugin

    def install(plugin: object) -> None:
        monkeypatch.setattr(
            plugins_module, "entry_points", lambda group: [*real(group=group), EntryPoint(plugin)]
        )

    return install
