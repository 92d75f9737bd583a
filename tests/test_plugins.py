"""Plugin discovery, enabling and the contract the kernel enforces at startup.

Uses the `agentidp-hello` fixture distribution (tests/fixtures/agentidp-hello),
installed into the test environment, plus in-test plugins published through
fake entry points so that every error goes through `load_plugins`/`create_app`.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from quart import Blueprint, jsonify

from agentidp_server import Setting, hookimpl, hookspecs
from agentidp_server.app import build_idp, create_app
from agentidp_server.plugins import PluginError, load_plugins
from agentidp_server.runtime import runtime
from agentidp_server.settings import SettingsError, load_settings
from agentidp_server.testkit import module_imported_by_app

ROOT = Path(__file__).resolve().parent.parent
HELLO_GRANT = "urn:agentidp:params:grant-type:hello"
AGENTIDP = Path(sys.executable).with_name("agentidp")


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"HELLO_ENABLED": True}


def settings_for(tmp_path: Path, environ: dict[str, str] | None = None, **overrides: Any) -> Any:
    base = {"DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/idp.db"}
    return load_settings(env="test", overrides={**base, **overrides}, environ=environ or {})


@dataclass
class FakeEntryPoint:
    """Stands in for an installed distribution's `agentidp` entry point."""

    name: str
    plugin: object
    dist: Any = None

    def load(self) -> object:
        return self.plugin


@pytest.fixture
def publish(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Publish in-test plugin objects next to the installed ones."""
    import agentidp_server.plugins as plugins_module

    real = plugins_module.entry_points

    def install(**plugins: object) -> None:
        def entry_points(group: str) -> list[Any]:
            return [*real(group=group), *(FakeEntryPoint(n, p) for n, p in plugins.items())]

        monkeypatch.setattr(plugins_module, "entry_points", entry_points)

    return install


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENTIDP_", "HELLO_", "PLUGINS__"))
        and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(AGENTIDP_ENV="test", AGENTIDP_DATA_DIR=str(tmp_path), **extra)
    return env


# Enabled ------------------------------------------------------------------


async def test_enabled_route_answers_with_the_default_greeting(agentidp_client):
    response = await agentidp_client.get("/hello")
    assert response.status_code == 200
    assert await response.get_json() == {"greeting": "hello"}


async def test_enabled_migration_creates_the_table(agentidp_client, agentidp_idp):
    response = await agentidp_client.get("/hello/rows")
    assert response.status_code == 200
    assert await response.get_json() == {"rows": [{"id": 1, "greeting": "hello from a migration"}]}
    applied = await agentidp_idp.db.fetch(
        "SELECT name FROM schema_migrations WHERE migration_set = $1", "hello"
    )
    assert [r["name"] for r in applied] == ["0001_hello_rows"]


@pytest.mark.parametrize(
    "agentidp_overrides", [{"HELLO_ENABLED": True, "HELLO_GREETING": "bonjour"}]
)
async def test_greeting_from_overrides(agentidp_client):
    response = await agentidp_client.get("/hello")
    assert await response.get_json() == {"greeting": "bonjour"}


@pytest.mark.parametrize("prefix", ["", "AGENTIDP_"])
async def test_greeting_from_the_plain_and_prefixed_variable(tmp_path, prefix):
    environ = {f"{prefix}HELLO_ENABLED": "true", f"{prefix}HELLO_GREETING": "hallo"}
    settings = settings_for(tmp_path, environ)
    idp = build_idp(settings)
    assert idp.settings.HELLO_GREETING == "hallo"
    app = create_app(idp=idp)
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/hello")
        assert await response.get_json() == {"greeting": "hallo"}


def test_enabled_plugin_is_listed_with_its_distribution(tmp_path):
    hooks = load_plugins(settings_for(tmp_path, HELLO_ENABLED=True))
    info = next(p for p in hooks.plugins if p.name == "hello")
    assert (info.distribution, info.version, info.enabled) == ("agentidp-hello", "0.1.0", True)
    assert "hello" in hooks.enabled


# Disabled -----------------------------------------------------------------


@pytest.mark.parametrize("agentidp_overrides", [{}, {"HELLO_ENABLED": False}])
async def test_disabled_route_is_404(agentidp_client, agentidp_idp):
    assert (await agentidp_client.get("/hello")).status_code == 404
    assert (await agentidp_client.get("/hello/rows")).status_code == 404
    assert "hello" not in agentidp_idp.state
    applied = await agentidp_idp.db.fetch(
        "SELECT name FROM schema_migrations WHERE migration_set = $1", "hello"
    )
    assert applied == []


def test_disabled_migration_set_is_absent(tmp_path):
    assert [s.name for s in runtime(build_idp(settings_for(tmp_path))).migration_sets()] == ["core"]
    enabled = build_idp(settings_for(tmp_path, HELLO_ENABLED=True))
    assert [s.name for s in runtime(enabled).migration_sets()] == ["core", "hello"]


@pytest.mark.parametrize(("enabled", "imported"), [("false", False), ("true", True)])
def test_disabled_plugin_is_never_imported(enabled, imported):
    assert module_imported_by_app("agentidp_hello", {"HELLO_ENABLED": enabled}) is imported


@pytest.mark.parametrize(
    "environ",
    [
        {"PLUGINS__HELLO__ENABLED": "true"},
        {"AGENTIDP_PLUGINS__HELLO__ENABLED": "true"},
        {"AGENTIDP_HELLO_ENABLED": "true"},
    ],
)
def test_other_spellings_enable_the_plugin(tmp_path, environ):
    idp = build_idp(settings_for(tmp_path, environ))
    assert "hello" in idp._hooks.enabled
    assert idp.settings.HELLO_GREETING == "hello"


@pytest.mark.parametrize(
    "toml", ["[test]\nHELLO_ENABLED = true\n", "[test.plugins.hello]\nenabled = true\n"]
)
def test_settings_file_enables_the_plugin(tmp_path, toml):
    path = tmp_path / "settings.toml"
    path.write_text(toml, encoding="utf-8")
    settings = load_settings(env="test", environ={}, settings_file=path)
    assert "hello" in load_plugins(settings).enabled


def test_nested_variable_false_keeps_it_disabled(tmp_path):
    idp = build_idp(settings_for(tmp_path, {"PLUGINS__HELLO__ENABLED": "false"}))
    assert "hello" not in idp._hooks.enabled


# The contract -------------------------------------------------------------


class RouteThief:
    @hookimpl
    def register_blueprints(self) -> list[Blueprint]:
        blueprint = Blueprint("thief", __name__)

        @blueprint.get("/hello")
        async def stolen() -> Any:
            return jsonify(greeting="mine")

        return [blueprint]


class BlueprintNameThief:
    @hookimpl
    def register_blueprints(self) -> list[Blueprint]:
        return [Blueprint("hello", __name__)]


class GrantThief:
    @hookimpl
    def register_grant_types(self) -> list[Any]:
        class Grant:
            grant_type = HELLO_GRANT

            async def issue(self, request: Any) -> Any:
                return {}

        return [Grant()]


class Raiser:
    @hookimpl
    def register_health_checks(self) -> list[Any]:
        raise RuntimeError("no checks today")


class BadSetting:
    @hookimpl
    def register_settings(self) -> list[Setting]:
        return [Setting("GREETING", "hi", "a key without the plugin's prefix")]


class BadLifespan:
    @hookimpl
    def lifespan(self) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def manager() -> Any:
            raise RuntimeError("cannot start")
            yield

        return manager()


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (RouteThief(), r"plugin 'rogue': route GET /hello is already registered by 'hello'"),
        (BlueprintNameThief(), r"plugin 'rogue': .*hello"),
        (
            GrantThief(),
            rf"plugin 'rogue': grant type '{HELLO_GRANT}' is already handled by 'hello'",
        ),
        (Raiser(), r"plugin 'rogue' failed in register_health_checks: no checks today"),
        (BadSetting(), r"plugin 'rogue': setting GREETING must start with ROGUE_"),
    ],
    ids=["duplicate-route", "duplicate-blueprint", "duplicate-grant", "hook-raises", "bad-setting"],
)
def test_contract_breach_stops_startup_naming_the_plugin(tmp_path, publish, plugin, message):
    publish(rogue=plugin)
    settings = settings_for(tmp_path, HELLO_ENABLED=True, ROGUE_ENABLED=True)
    with pytest.raises(PluginError, match=message):
        create_app(settings)


def test_a_disabled_rogue_plugin_is_harmless(tmp_path, publish):
    publish(rogue=RouteThief())
    app = create_app(settings_for(tmp_path, HELLO_ENABLED=True))
    assert "thief" not in app.blueprints


async def test_lifespan_raising_stops_startup(tmp_path, publish):
    publish(rogue=BadLifespan())
    app = create_app(settings_for(tmp_path, ROGUE_ENABLED=True))
    # The test app wraps startup errors in its own LifespanError; the message is kept.
    with pytest.raises(Exception, match=r"plugin 'rogue' failed in lifespan: cannot start"):
        async with app.test_app():
            pass


def test_bad_setting_value_names_the_key(tmp_path):
    settings = settings_for(tmp_path, {"HELLO_TASK_INTERVAL": "soon"}, HELLO_ENABLED=True)
    with pytest.raises(SettingsError, match="HELLO_TASK_INTERVAL must be"):
        build_idp(settings)


def test_async_register_hook_is_refused(tmp_path, publish):
    class AsyncBlueprints:
        @hookimpl
        async def register_blueprints(self) -> list[Blueprint]:
            return []

    publish(rogue=AsyncBlueprints())
    with pytest.raises(PluginError, match="plugin 'rogue': register_blueprints must not be async"):
        create_app(settings_for(tmp_path, ROGUE_ENABLED=True))


# Hook implementation order (pluggy's options) -------------------------------


def _ordered(name: str, **opts: Any) -> object:
    class Ordered:
        @hookimpl(**opts)
        def discovery_metadata(self) -> dict[str, Any]:
            return {"call_order": [name]}

    return Ordered()


async def test_hookimpl_order_is_pluggys(tmp_path, publish):
    publish(
        aaa=_ordered("aaa", trylast=True),
        bbb=_ordered("bbb"),
        ccc=_ordered("ccc", tryfirst=True),
        ddd=_ordered("ddd"),
    )
    names = {f"{n.upper()}_ENABLED": True for n in ("aaa", "bbb", "ccc", "ddd")}
    idp = build_idp(settings_for(tmp_path, **names))
    merged = await idp._hooks.discovery_metadata(idp)
    # tryfirst first, trylast last, the others kernel first then by entry-point name.
    assert merged["call_order"] == ["ccc", "bbb", "ddd", "aaa"]
    # ... which is the order pluggy itself calls them in.
    native = idp._hooks.pm.hook.discovery_metadata(idp=idp)
    assert [f["call_order"][0] for f in native if "call_order" in f] == merged["call_order"]
    # A plugin added later is called after the others, as if its name sorted last.
    idp._hooks.add(_ordered("late"), "late")
    assert (await idp._hooks.discovery_metadata(idp))["call_order"] == [
        "ccc", "bbb", "ddd", "late", "aaa"
    ]  # fmt: skip


class GeneratorWrapper:
    @hookimpl(wrapper=True)
    def discovery_metadata(self) -> Any:
        return (yield)


class OldStyleWrapper:
    @hookimpl(hookwrapper=True)
    def token_claims(self) -> Any:
        yield


class AsyncWrapper:
    @hookimpl(wrapper=True)
    async def token_status(self) -> Any:
        return None


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [
        (GeneratorWrapper(), "discovery_metadata"),
        (OldStyleWrapper(), "token_claims"),
        (AsyncWrapper(), "token_status"),
    ],
    ids=["wrapper", "hookwrapper", "async-wrapper"],
)
def test_wrapper_hookimpls_are_refused_at_load(tmp_path, publish, plugin, hook):
    publish(rogue=plugin)
    with pytest.raises(PluginError) as raised:
        load_plugins(settings_for(tmp_path, ROGUE_ENABLED=True))
    assert str(raised.value) == (
        f"plugin 'rogue': {hook} is marked wrapper/hookwrapper, which AgentIdP does not "
        "support (hooks may be async); use tryfirst or trylast"
    )


# Plugins import only the package root (issue 16) ----------------------------

PLUGIN_PACKAGES = sorted(
    [*ROOT.glob("plugins/*/agentidp_*/"), ROOT / "tests/fixtures/agentidp-hello/agentidp_hello"]
)


def kernel_imports_beyond_the_root(package: Path) -> list[str]:
    """Each import of the kernel other than a name `agentidp_server` exports, as file:line."""
    import agentidp_server

    exported = set(agentidp_server.__all__)
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [
                    f"{where} import {a.name}"
                    for a in node.names
                    if a.name.startswith("agentidp_server.")
                ]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("agentidp_server."):
                    found.append(f"{where} from {node.module}")
                elif node.module == "agentidp_server":
                    found += [
                        f"{where} from agentidp_server import {a.name}"
                        for a in node.names
                        if a.name not in exported  # a submodule, or a name not exported
                    ]
            elif isinstance(node, ast.Call) and node.args:
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                arg = node.args[0]
                if (
                    name in ("import_module", "__import__")
                    and isinstance(arg, ast.Constant)
                    and str(arg.value).startswith("agentidp_server.")
                ):
                    found.append(f"{where} {name}({arg.value!r})")
    return found


def test_there_are_plugin_packages():
    names = {p.name for p in PLUGIN_PACKAGES}
    assert {"agentidp_did", "agentidp_oidc", "agentidp_delegation", "agentidp_hello"} <= names


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_plugin_imports_only_the_package_root(package):
    assert kernel_imports_beyond_the_root(package) == []


def test_the_import_scan_finds_each_kind_of_breach(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    package = tmp_path / "agentidp_rogue"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import importlib\n"
        "import agentidp_server\n"
        "import agentidp_server.idp\n"
        "from agentidp_server.cli import load_idp\n"
        "from agentidp_server import IdP, agents\n"
        "from . import local\n"
        "def later():\n"
        "    from agentidp_server.oauth import errors\n"
        "    importlib.import_module('agentidp_server.core')\n",
        encoding="utf-8",
    )
    assert kernel_imports_beyond_the_root(package) == [
        "agentidp_rogue/__init__.py:3 import agentidp_server.idp",
        "agentidp_rogue/__init__.py:4 from agentidp_server.cli",
        "agentidp_rogue/__init__.py:5 from agentidp_server import agents",
        "agentidp_rogue/__init__.py:8 from agentidp_server.oauth",
        "agentidp_rogue/__init__.py:9 import_module('agentidp_server.core')",
    ]


# CLI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "state"), [({}, "disabled"), ({"HELLO_ENABLED": "true"}, "enabled")]
)
def test_plugins_command_lists_hello(tmp_path, extra, state):
    result = subprocess.run(
        [str(AGENTIDP), "plugins"],
        env=child_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"hello\tagentidp-hello\t0.1.0\t{state}" in result.stdout.splitlines()


# The contract's documentation ---------------------------------------------


def hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(
        name
        for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(obj, marker)
    )


def test_there_are_hookspecs():
    assert len(hookspec_names()) >= 12


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_has_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"hookspec {name} has no docstring"
    assert len(doc) > 40, f"hookspec {name} needs a docstring saying when and what"


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_is_tested(name):
    source = (ROOT / "tests" / "test_hooks.py").read_text(encoding="utf-8")
    assert re.search(rf"\bdef test_{name}\b", source), f"tests/test_hooks.py has no test_{name}"


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_is_documented(name):
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert re.search(rf"^### `{name}\(", guide, re.M), f"docs/plugins.md has no section for {name}"


# A `<NAME>_ENABLED` switch for a plugin that is not installed (issue 15).


def _production(tmp_path: Path, environ: dict[str, str]) -> Any:
    strong = "p" * 48
    return load_settings(
        env="production",
        overrides={"DATA_DIR": str(tmp_path)},
        environ={
            "DATABASE_URL": "postgresql://127.0.0.1/test",
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "ISSUER": "https://idp.example.com",
            "CREDENTIAL_PEPPER": strong,
            "KEY_STORE_SECRET": strong,
            **environ,
        },
    )


@pytest.mark.parametrize("variable", ["ANALYTICS_ENABLED", "AGENTIDP_ANALYTICS_ENABLED"])
def test_switch_without_its_plugin_stops_production(tmp_path, variable):
    with pytest.raises(PluginError) as raised:
        build_idp(_production(tmp_path, {variable: "true"}))
    assert str(raised.value) == (
        f"{variable} is set but no plugin 'analytics' is installed: "
        f"pip install agentidp-analytics (or unset {variable})"
    )


def test_switch_in_the_settings_file_without_its_plugin_stops_production(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[production.plugins.analytics]\nenabled = true\n", encoding="utf-8")
    settings = load_settings(env="production", environ={}, settings_file=path)
    with pytest.raises(PluginError, match="pip install agentidp-analytics"):
        build_idp(settings)


def test_switch_without_its_plugin_warns_in_development(tmp_path, caplog):
    name = f"NOPE{os.getpid()}X{len(caplog.records)}"  # unique: each line is warned once
    with caplog.at_level("WARNING", logger="agentidp.plugins"):
        idp = build_idp(settings_for(tmp_path, {f"{name}_ENABLED": "yes"}))
    assert idp is not None
    assert f"pip install agentidp-{name.lower()}" in caplog.text


@pytest.mark.parametrize(
    "environ",
    [
        {"HELLO_ENABLED": "true"},  # installed (the fixture plugin)
        {"HELLO_ENABLED": "true", "HELLO_BETA_ENABLED": "true"},  # an installed plugin's own key
        {"HELLO_BETA_ENABLED": "true"},  # ... even while that plugin is off
        {"ANALYTICS_ENABLED": "false"},  # switched off: nothing to install
        {"PLUGINS__HELLO__ENABLED": "true"},
    ],
)
def test_switches_that_are_not_missing_plugins(tmp_path, environ):
    assert build_idp(_production(tmp_path, environ)) is not None


def test_an_unknown_plain_switch_only_warns_in_production(tmp_path, caplog):
    # Other software shares the environment: its FEATURE_X_ENABLED must not stop us.
    name = f"OTHERTOOL{os.getpid()}"
    with caplog.at_level("WARNING", logger="agentidp.plugins"):
        assert build_idp(_production(tmp_path, {f"{name}_ENABLED": "true"})) is not None
    assert f"pip install agentidp-{name.lower()}" in caplog.text
    # The same switch in our own form is surely meant for a plugin: production stops.
    with pytest.raises(PluginError, match=f"agentidp-{name.lower()}"):
        build_idp(_production(tmp_path, {f"AGENTIDP_{name}_ENABLED": "true"}))
