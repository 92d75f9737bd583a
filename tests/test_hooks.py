"""One test per hook in agentidp_server/hookspecs.py, through the app or the Hooks facade.

Each drives the `agentidp-hello` fixture plugin (tests/fixtures/agentidp-hello),
which records what the kernel asked of it in `idp.state["hello"]`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from agentidp_hello import AUTH_METHOD, GRANT_TYPE, HELLO_TOKEN_TYPE, HelloGrant, state

from agentidp_server import (
    TOKEN_EXCHANGE,
    AuditAction,
    InvalidToken,
    Subject,
    SubjectKind,
    hookimpl,
)
from agentidp_server.app import build_idp, create_app
from agentidp_server.plugins import REGISTERED_CLAIMS, RESPONSE_FIELDS, PluginError
from agentidp_server.runtime import runtime
from agentidp_server.settings import SettingsError, load_settings
from agentidp_server.storage.migrations import migrate
from agentidp_server.testkit import basic, make_org, token

INTROSPECT = "/api/v1/token/introspect"

AGENTIDP = Path(sys.executable).with_name("agentidp")


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True}


def settings_for(tmp_path: Path, environ: dict[str, str] | None = None, **overrides: Any) -> Any:
    base = {
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/idp.db",
        "HELLO_ENABLED": True,
    }
    return load_settings(env="test", overrides={**base, **overrides}, environ=environ or {})


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


# Configuration ------------------------------------------------------------


def test_register_settings(tmp_path):
    idp = build_idp(settings_for(tmp_path))
    assert idp.settings.HELLO_GREETING == "hello"
    assert idp.settings.HELLO_TASK_INTERVAL == 0.05
    assert "HELLO_GREETING" in [spec.key for _, spec in idp._hooks.settings()]
    with pytest.raises(SettingsError, match="HELLO_GREETING must be a string, got 42"):
        build_idp(settings_for(tmp_path, HELLO_GREETING=42))


# Assembly -----------------------------------------------------------------


async def test_register_blueprints(agentidp_client, agentidp_idp):
    assert "register_blueprints" in state(agentidp_idp)["events"]
    response = await agentidp_client.get("/hello")
    assert response.status_code == 200
    assert response.headers["X-Request-Id"]
    slow = await agentidp_client.get("/hello/slow?ms=10")
    assert await slow.get_json() == {"slept_ms": 10}


async def test_register_migrations(agentidp_client, agentidp_idp):
    assert [s.name for s in runtime(agentidp_idp).migration_sets()] == ["core", "hello"]
    count = await agentidp_idp.db.fetchval("SELECT COUNT(*) FROM hello_rows")
    assert count == 1
    rows = await (await agentidp_client.get("/hello/rows")).get_json()
    assert rows["rows"][0]["greeting"] == "hello from a migration"


async def test_register_grant_types(agentidp_idp):
    grants = agentidp_idp.state["core"]["grant_types"]
    assert isinstance(grants[GRANT_TYPE], HelloGrant)


async def test_register_scopes(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    issued = await token(agentidp_client, org["client_id"], org["client_secret"])
    # An admin holds hello's admin scope, and not the one hello keeps for agents.
    assert "hello:read" in issued["scope"].split()
    assert "hello:wave" not in issued["scope"].split()
    private = await agentidp_client.get(
        "/hello/private", headers={"Authorization": f"Bearer {issued['access_token']}"}
    )
    assert (private.status_code, (await private.get_json())["org_id"]) == (200, org["org_id"])
    metadata = await (
        await agentidp_client.get("/.well-known/oauth-authorization-server")
    ).get_json()
    assert {"agents:read", "hello:read", "hello:wave"} <= set(metadata["scopes_supported"])


async def test_register_client_auth_methods(agentidp_client, agentidp_idp):
    methods = agentidp_idp.state["core"]["client_auth_methods"]
    assert list(methods) == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        AUTH_METHOD,
    ]
    org = await make_org(agentidp_idp)
    own = (await token(agentidp_client, org["client_id"], org["client_secret"]))["access_token"]
    response = await agentidp_client.post(
        "/api/v1/token", form={"grant_type": GRANT_TYPE, AUTH_METHOD: own}
    )
    assert (await response.get_json())["client_id"] == org["client_id"]


async def test_register_token_exchange_handlers(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    response = await agentidp_client.post(
        "/api/v1/token",
        form={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": "hello:hooks",
            "subject_token_type": HELLO_TOKEN_TYPE,
        },
        headers=basic(org["client_id"], org["client_secret"]),
    )
    assert response.status_code == 200, await response.get_json()
    assert state(agentidp_idp)["exchanges"] == ["hello:hooks"]


class Robots:
    """A `robot` subject kind (tests/test_subjects.py covers kinds in depth)."""

    def __init__(self) -> None:
        self.retired: set[str] = set()

    async def status(self, idp: Any, claims: Mapping[str, Any]) -> str | None:
        return "Token's robot is retired" if claims["sub"] in self.retired else None

    @hookimpl
    def register_subject_kinds(self, idp: Any) -> list[SubjectKind]:
        return [SubjectKind("robot", self.status, "A robot")]


async def test_register_subject_kinds(tmp_path):
    idp = build_idp(settings_for(tmp_path))
    robots = Robots()
    idp._hooks.add(robots, "robots")
    app = create_app(idp=idp)
    async with app.test_app():
        assert list(idp._hooks.subject_kinds(idp)) == ["agent", "robot"]
        org = await make_org(idp)
        access, _ = await idp.tokens.mint(
            subject=Subject("robot", "r2", org["org_id"]),
            scopes=[],
            audience=idp.tokens.default_audience(),
            grant_type="urn:example:robot",
        )
        assert (await idp.tokens.verify(access))["sub"] == "r2"
        robots.retired.add("r2")
        with pytest.raises(InvalidToken, match="Token's robot is retired"):
            await idp.tokens.verify(access)


async def test_register_metrics(agentidp_client):
    for _ in range(3):
        await agentidp_client.get("/hello")
    text = (await (await agentidp_client.get("/metrics")).get_data()).decode()
    assert "agentidp_hello_requests_total 3.0" in text


async def test_register_health_checks(agentidp_client, agentidp_idp):
    ready = await agentidp_client.get("/health/ready")
    assert ready.status_code == 200
    assert (await ready.get_json())["checks"]["hello"] == "ok"
    state(agentidp_idp)["healthy"] = False
    ready = await agentidp_client.get("/health/ready")
    body = await ready.get_json()
    assert ready.status_code == 503
    assert body["failing"] == ["hello"]
    assert body["checks"] == {"database": "ok", "kv": "ok", "hello": "failing"}
    assert "hello: hello is unhappy" in body["message"]


async def test_register_background_tasks(agentidp_idp):
    hello = state(agentidp_idp)
    await wait_for(lambda: hello["task_runs"] >= 2)
    assert hello["task_starts"] == 1
    hello["task_failures"] = 1
    # The supervisor restarts it after its first backoff (1 s).
    await wait_for(lambda: hello["task_starts"] == 2, timeout=5)
    runs = hello["task_runs"]
    await wait_for(lambda: hello["task_runs"] > runs)


class ClashingAction:
    @hookimpl
    def register_audit_actions(self) -> list[AuditAction]:
        return [AuditAction("token.issued", "again")]


async def test_register_audit_actions(tmp_path):
    idp = build_idp(settings_for(tmp_path))
    actions = idp._hooks.audit_actions(idp)
    assert actions["hello.greeted"] == AuditAction(
        "hello.greeted", "Someone was greeted (test fixture)"
    )
    assert "token.issued" in actions  # the kernel declares its own through the same hook

    idp._hooks.pm.register(ClashingAction(), name="clash")
    with pytest.raises(PluginError, match=r"audit action 'token\.issued' is already declared"):
        idp._hooks.audit_actions(idp)


def test_a_duplicate_audit_action_stops_startup_even_when_not_strict(tmp_path):
    idp = build_idp(settings_for(tmp_path, AUDIT_STRICT_ACTIONS=False))  # production's default
    idp._hooks.add(ClashingAction(), "clash")
    with pytest.raises(
        PluginError, match=r"plugin 'clash': audit action 'token\.issued' is already declared"
    ):
        create_app(idp=idp)


def test_register_commands(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
    }
    env.update(AGENTIDP_ENV="test", AGENTIDP_DATA_DIR=str(tmp_path))
    enabled = subprocess.run(
        [str(AGENTIDP), "hello"],
        env={**env, "HELLO_ENABLED": "true", "HELLO_GREETING": "moin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (enabled.returncode, enabled.stdout) == (0, "moin\n"), enabled.stderr
    disabled = subprocess.run(
        [str(AGENTIDP), "hello"], env=env, capture_output=True, text=True, timeout=60
    )
    assert disabled.returncode == 2
    assert "No such command 'hello'" in disabled.stderr


# Serving ------------------------------------------------------------------


class Second:
    """A second plugin, registered after hello, that records into hello's trace."""

    def __init__(self, idp: Any) -> None:
        self.events: list[str] = state(idp)["events"]

    @hookimpl
    def lifespan(self) -> Any:
        @asynccontextmanager
        async def manager() -> AsyncIterator[None]:
            self.events.append("second:enter")
            try:
                yield
            finally:
                self.events.append("second:exit")

        return manager()

    @hookimpl
    async def discovery_metadata(self) -> Mapping[str, Any]:
        return {
            "grant_types_supported": ["client_credentials", GRANT_TYPE],
            "hello_endpoint": "https://elsewhere.example/hello",
            "second_endpoint": "https://second.example/",
        }

    @hookimpl
    def audit_event(self, event: Mapping[str, Any]) -> None:
        self.events.append(f"second:audit:{event['seq']}")
        raise RuntimeError("second cannot handle events")


def with_second(tmp_path: Path) -> Any:
    idp = build_idp(settings_for(tmp_path))
    idp._hooks.add(Second(idp), "second")
    return idp


async def test_lifespan(tmp_path):
    idp = with_second(tmp_path)
    app = create_app(idp=idp)
    events = state(idp)["events"]
    async with app.test_app():
        assert events[-2:] == ["lifespan:enter", "second:enter"]
        assert "lifespan:exit" not in events
    # Exited in reverse order of entry, and after the storage they rely on is still open.
    assert events[-2:] == ["second:exit", "lifespan:exit"]


async def test_token_claims(agentidp_idp):
    context = {"grant_type": "client_credentials", "claims": {"sub": "agent-1"}}
    assert await agentidp_idp._hooks.token_claims(agentidp_idp, context) == {"hello": "hello"}
    for claim in sorted(REGISTERED_CLAIMS):
        state(agentidp_idp)["extra_claims"] = {claim: "forged"}
        with pytest.raises(PluginError, match=rf"plugin 'hello' may not set .*'{claim}'"):
            await agentidp_idp._hooks.token_claims(agentidp_idp, context)


async def test_token_response(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    body = await token(
        agentidp_client, org["client_id"], org["client_secret"], scope="agents:read", nonce="n-1"
    )
    assert body["hello_scope"] == "agents:read"
    (context,) = state(agentidp_idp)["token_responses"]
    assert context["grant_type"] == "client_credentials"
    assert context["params"] == {
        "grant_type": "client_credentials",
        "scope": "agents:read",
        "nonce": "n-1",
    }
    assert context["claims"]["jti"]
    assert context["agent"]["client_id"] == org["client_id"]
    assert context["access_token"] == body["access_token"]
    for field in sorted(RESPONSE_FIELDS):
        state(agentidp_idp)["extra_response"] = {field: "forged"}
        with pytest.raises(PluginError, match=rf"plugin 'hello' may not set .*'{field}'"):
            await agentidp_idp._hooks.token_response(agentidp_idp, context)


async def test_token_status(agentidp_client, agentidp_idp):
    org = await make_org(agentidp_idp)
    access = (await token(agentidp_client, org["client_id"], org["client_secret"]))["access_token"]
    introspect = {"token": access}
    auth = basic(org["client_id"], org["client_secret"])

    async def active() -> bool:
        response = await agentidp_client.post(INTROSPECT, form=introspect, headers=auth)
        return bool((await response.get_json())["active"])

    assert await active()
    state(agentidp_idp)["inactive_reason"] = "Token's delegation was revoked"
    assert not await active()
    response = await agentidp_client.get(
        "/api/v1/agents", headers={"Authorization": f"Bearer {access}"}
    )
    assert response.status_code == 401
    assert (await response.get_json())["message"] == "Token's delegation was revoked"
    state(agentidp_idp)["inactive_reason"] = None
    assert await active()


async def test_discovery_metadata(tmp_path):
    idp = with_second(tmp_path)
    merged = await idp._hooks.discovery_metadata(idp)
    # Lists merge without duplicates; a clashing scalar keeps the first plugin's value.
    assert merged["grant_types_supported"] == [GRANT_TYPE, "client_credentials"]
    assert merged["hello_endpoint"] == f"{idp.issuer}/hello"
    assert merged["second_endpoint"] == "https://second.example/"
    disabled = build_idp(settings_for(tmp_path, HELLO_ENABLED=False))
    assert "hello_endpoint" not in await disabled._hooks.discovery_metadata(disabled)


async def test_discovery_metadata_is_served(agentidp_client, agentidp_idp):
    response = await agentidp_client.get("/.well-known/oauth-authorization-server")
    body = await response.get_json()
    assert body["hello_endpoint"] == f"{agentidp_idp.issuer}/hello"
    assert body["grant_types_supported"].count(GRANT_TYPE) == 1


async def test_audit_event(tmp_path, caplog):
    idp = with_second(tmp_path)
    create_app(idp=idp)  # configures the kernel's loggers, as at startup
    await runtime(idp).open_storage()
    logging.getLogger("agentidp.audit").addHandler(caplog.handler)
    try:
        await migrate(idp.db, runtime(idp).migration_sets())
        for _ in (1, 2):
            async with idp.db.transaction() as conn:
                await idp.audit.append(conn, org_id="org-a", action="agent.changed")
        assert await idp.audit.dispatcher.deliver_pending() == 2
    finally:
        logging.getLogger("agentidp.audit").removeHandler(caplog.handler)
        await runtime(idp).close_storage()
    # The failing plugin is isolated: hello still receives every event, in order.
    assert [e["seq"] for e in state(idp)["audit"]] == [1, 2]
    # The other is held at its first event, to be retried after its backoff.
    assert [e for e in state(idp)["events"] if e.startswith("second:audit")] == ["second:audit:1"]
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert failures == [
        "audit consumer second failed on event org-a/1 (agent.changed, attempt 1): "
        "RuntimeError: second cannot handle events; retrying in 1s"
    ]


async def test_facade_metadata_and_plugin_switches(agentidp_client, agentidp_idp):
    served = await (await agentidp_client.get("/.well-known/oauth-authorization-server")).get_json()
    assert await agentidp_idp.oauth_metadata() == served
    assert agentidp_idp.plugin_enabled("hello")
    assert not agentidp_idp.plugin_enabled("no-such-plugin")


# Ordering: tryfirst/trylast on serving hooks, wrappers refused ---------------
# (load-time order and refusal through entry points: tests/test_plugins.py)


def traced(name: str, events: list[str], **opts: Any) -> object:
    """A plugin whose lifespan and token_claims leave `name` in the trace."""

    class Traced:
        @hookimpl(**opts)
        def lifespan(self) -> Any:
            @asynccontextmanager
            async def manager() -> AsyncIterator[None]:
                events.append(f"{name}:enter")
                try:
                    yield
                finally:
                    events.append(f"{name}:exit")

            return manager()

        @hookimpl(**opts)
        async def token_claims(self) -> Mapping[str, Any]:
            events.append(f"{name}:claims")
            return {"hello": name}  # the claim hello sets too: the later one is blamed

    return Traced()


async def test_tryfirst_and_trylast_order_the_serving_hooks(tmp_path):
    idp = build_idp(settings_for(tmp_path))
    events = state(idp)["events"]
    # Added after hello, yet tryfirst puts "early" before it and trylast keeps "late" after.
    idp._hooks.add(traced("late", events, trylast=True), "late")
    idp._hooks.add(traced("early", events, tryfirst=True), "early")
    app = create_app(idp=idp)
    async with app.test_app():
        entered = [e for e in events if e.endswith(":enter")]
        assert entered == ["early:enter", "lifespan:enter", "late:enter"]
        context = {"grant_type": "client_credentials", "claims": {"sub": "agent-1"}}
        with pytest.raises(PluginError, match="plugin 'hello': claim 'hello' is already set by "
                           "'early'"):  # fmt: skip
            await idp._hooks.token_claims(idp, context)
        assert [e for e in events if e.endswith(":claims")] == ["early:claims"]
    # Exited in reverse order of entry.
    assert [e for e in events if e.endswith(":exit")] == [
        "late:exit",
        "lifespan:exit",
        "early:exit",
    ]


class RenamedWrapper:
    """A wrapper under another function name, bound to its hook by `specname`."""

    @hookimpl(specname="token_claims", hookwrapper=True)
    def around_claims(self) -> Any:
        yield


class NewStyleWrapper:
    @hookimpl(wrapper=True, tryfirst=True)
    def discovery_metadata(self) -> Any:
        return (yield)


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [(RenamedWrapper(), "token_claims"), (NewStyleWrapper(), "discovery_metadata")],
    ids=["hookwrapper-specname", "wrapper"],
)
async def test_a_wrapper_added_later_is_refused_and_the_others_stay(tmp_path, plugin, hook):
    idp = build_idp(settings_for(tmp_path))
    with pytest.raises(PluginError) as raised:
        idp._hooks.add(plugin, "rogue")
    assert str(raised.value) == (
        f"plugin 'rogue': {hook} is marked wrapper/hookwrapper, which AgentIdP does not "
        "support (hooks may be async); use tryfirst or trylast"
    )
    # The refusal leaves the plugins already registered in place, in their order.
    context = {"grant_type": "client_credentials", "claims": {"sub": "agent-1"}}
    assert await idp._hooks.token_claims(idp, context) == {"hello": "hello"}
    assert "rogue" not in [name for name, _ in idp._hooks.pm.list_name_plugin()]


def test_a_second_plugin_of_the_same_name_is_refused_and_the_first_stays(tmp_path):
    idp = build_idp(settings_for(tmp_path))
    with pytest.raises(PluginError, match="plugin 'hello' is already registered"):
        idp._hooks.add(traced("again", []), "hello")
    assert [name for name, _ in idp._hooks.pm.list_name_plugin()].count("hello") == 1
