"""Plugin discovery, enable/disable, and a typed facade over the hook calls."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

import click
import pluggy

from agentidp_server import hookspecs
from agentidp_server.hookspecs import PluginError as PluginError  # kept here for its importers
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.settings import Setting, apply_environment

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart import Blueprint

    from agentidp_server.audit.log import AuditAction
    from agentidp_server.directory.scopes import ScopeRegistry
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import ClientAuthMethod
    from agentidp_server.oauth.grants import GrantType
    from agentidp_server.oauth.rfc8693 import TokenExchangeHandler
    from agentidp_server.oauth.subjects import SubjectKind
    from agentidp_server.server.health import HealthCheck
    from agentidp_server.storage.migrations import MigrationSet
    from agentidp_server.util.background import BackgroundTask

log = logging.getLogger("agentidp.plugins")
T = TypeVar("T")

ENTRY_POINT_GROUP = "agentidp"
CORE = "core"
# The kernel's own capabilities, registered through the same hooks as any plugin.
KERNEL_PLUGINS = (
    "agentidp_server.storage.hooks",
    "agentidp_server.server.hooks",
    "agentidp_server.oauth.hooks",
    "agentidp_server.keys.hooks",
    "agentidp_server.directory.hooks",
    "agentidp_server.audit.hooks",
    "agentidp_server.quotas.hooks",
    "agentidp_server.api.hooks",
    "agentidp_server.cli.hooks",
    "agentidp_server.server.health",
    "agentidp_server.server.metrics",
)
# Token response fields the grant owns (RFC 6749 §5.1, RFC 8693 §2.2.1).
RESPONSE_FIELDS = frozenset(
    {"access_token", "token_type", "expires_in", "scope", "issued_token_type", "refresh_token"}
)
# Claims a plugin may never set (RFC 9068 §2.2, RFC 8693 §4.1).
REGISTERED_CLAIMS = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "scope",
        "client_id",
        "org_id",
        "act",
        "credential_id",
        "iat_ms",  # the kernel's precise issue time (oauth/rfc9068.py ISSUED_MS)
        "agentidp_subject_kind",  # decides how a token is verified (oauth/subjects.py)
    }
)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    enabled: bool
    builtin: bool = False


def plugin_enabled(settings: Any, name: str) -> bool:
    """`<NAME>_ENABLED` (plain or `AGENTIDP_`-prefixed) or `PLUGINS__<NAME>__ENABLED`."""
    key = f"{name.upper()}_ENABLED"
    apply_environment(settings, key, settings.get("_ENVIRON", {}), settings.get("_OVERRIDES", {}))
    value = settings.get(key)
    if value is None:
        environ = settings.get("_ENVIRON", {})
        nested = f"PLUGINS__{name.upper()}__ENABLED"
        raw = environ.get(f"AGENTIDP_{nested}", environ.get(nested))
        if raw is not None:
            value = raw
        else:
            section = settings.get("PLUGINS") or {}
            value = (section.get(name) or section.get(name.upper()) or {}).get("enabled")
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


# The reference system's feature plugins: a plain `ANALYTICS_ENABLED=true` is surely
# meant for us. Any other plain `FOO_ENABLED` may belong to other software in the
# same environment, so only a warning names it, even in production.
KNOWN_PLUGINS = frozenset(
    {"DID", "OIDC", "DELEGATION", "FEDERATION", "WEBHOOKS", "ANALYTICS", "COMPLIANCE",
     "AUTHORIZE", "PORTAL"}
)  # fmt: skip


def _enabled_switches(settings: Any) -> dict[str, tuple[str, bool]]:
    """Plugin names switched on by a `<NAME>_ENABLED` or `PLUGINS__<NAME>__ENABLED`
    variable or setting, each with the variable that named it and whether that
    variable is surely ours (prefixed, from our settings files, or a known plugin)."""
    found: dict[str, tuple[str, bool]] = {}
    environ = [(k, v, False) for k, v in settings.get("_ENVIRON", {}).items()]
    declared = [
        (str(k), v, True) for k, v in settings.as_dict().items() if not str(k).startswith("_")
    ]
    for variable, raw, ours in environ + declared:
        key = variable.upper().removeprefix("AGENTIDP_")
        if key.startswith("PLUGINS__") and key.endswith("__ENABLED"):
            name = key[len("PLUGINS__") : -len("__ENABLED")]
        elif key.endswith("_ENABLED") and not key.startswith("PLUGINS__"):
            name = key[: -len("_ENABLED")]
        else:
            continue
        on = raw.strip().lower() in _TRUE if isinstance(raw, str) else raw is True
        sure = (
            ours or key != variable.upper() or key.startswith("PLUGINS__") or name in KNOWN_PLUGINS
        )
        if name and on and (name not in found or (sure and not found[name][1])):
            found[name] = (variable, sure)
    for name, section in (settings.get("PLUGINS") or {}).items():  # [plugins.<name>] tables
        value = section.get("enabled") if isinstance(section, Mapping) else None
        if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
            found.setdefault(str(name).upper(), (f"plugins.{name}.enabled", True))
    return found


_warned: set[str] = set()


def check_switches(settings: Any, hooks: Hooks, known_keys: set[str]) -> None:
    """`ANALYTICS_ENABLED=true` without the plugin installed (issue 15): a stop in
    production, a warning elsewhere; silently ignoring it hides a missing feature.

    Not a plugin switch: a declared setting (the kernel's or an enabled plugin's),
    or a key under an installed plugin's prefix (a disabled plugin's own settings).
    """
    installed = {p.name.upper() for p in hooks.plugins}
    missing: list[str] = []
    fatal: list[str] = []
    for name, (variable, sure) in sorted(_enabled_switches(settings).items()):
        if f"{name}_ENABLED" in known_keys or name in installed:
            continue
        if any(name.startswith(f"{plugin}_") for plugin in installed):
            continue
        dist = "agentidp-" + name.lower().replace("_", "-")
        line = (
            f"{variable} is set but no plugin {name.lower()!r} is installed: "
            f"pip install {dist} (or unset {variable})"
        )
        missing.append(line)
        if sure:
            fatal.append(line)
    if fatal and settings.get("ENV") == "production":
        raise PluginError(fatal[0])
    for line in missing:
        if line not in _warned:
            _warned.add(line)
            log.warning("%s", line)


def load_plugins(settings: Any) -> Hooks:
    """A fresh plugin manager: kernel plugins, then enabled entry points.

    A disabled plugin is blocked before its entry point is loaded, so its code
    is never imported.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    order: list[tuple[str, object]] = [
        (
            f"{CORE}:{module_name.removeprefix('agentidp_server.')}",
            importlib.import_module(module_name),
        )
        for module_name in KERNEL_PLUGINS
    ]
    infos: list[PluginInfo] = []
    seen: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if ep.name in seen:
            raise PluginError(
                f"plugin {ep.name!r} is published by two distributions: {seen[ep.name]} and {dist}"
            )
        seen[ep.name] = dist or "?"
        enabled = plugin_enabled(settings, ep.name)
        infos.append(PluginInfo(ep.name, dist, version, enabled))
        if not enabled:
            pm.set_blocked(ep.name)
            continue
        try:
            order.append((ep.name, ep.load()))
        except Exception as error:
            raise PluginError(f"plugin {ep.name!r} failed to load: {error}") from error
    hooks = Hooks(pm, infos)
    hooks.register_all(order)
    return hooks


def _refuse_wrappers(pm: pluggy.PluginManager, name: str, plugin: object) -> None:
    """Wrappers wrap a synchronous call chain; ours are awaited one by one, so a
    wrapper would see the coroutines, not the results: refused rather than misused."""
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts and (opts.get("wrapper") or opts.get("hookwrapper")):
            hook = opts.get("specname") or attr
            raise PluginError(
                f"plugin {_plugin_label(name)!r}: {hook} is marked wrapper/hookwrapper, which "
                "AgentIdP does not support (hooks may be async); use tryfirst or trylast"
            )


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Hooks may return a value or an awaitable (Datasette's pattern)."""
    if inspect.isawaitable(value):
        return await value
    return value


def _plugin_label(name: str) -> str:
    return CORE if name.startswith(f"{CORE}:") else name


class Hooks:
    """Typed calls over the plugin manager; each error names the plugin at fault."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]) -> None:
        self.pm = pm
        self.plugins = plugins
        self._order: list[tuple[str, object]] = []  # plugins in call order (kernel first)
        self._scopes: ScopeRegistry | None = None
        self._subject_kinds: dict[str, SubjectKind] | None = None

    def register_all(self, plugins: list[tuple[str, object]]) -> None:
        """Register `plugins` so that pluggy's own order (last registered first) calls
        them in the order given, kernel first; tryfirst/trylast move one impl from it."""
        for name, plugin in plugins:
            _refuse_wrappers(self.pm, name, plugin)
        for name, plugin in reversed(plugins):
            try:
                self.pm.register(plugin, name=name)
            except (ValueError, pluggy.PluginValidationError) as error:
                raise PluginError(f"plugin {_plugin_label(name)!r}: {error}") from error
        self._order.extend(plugins)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as error:
            raise PluginError(f"plugin {error.plugin!r}: {error}") from error

    def add(self, plugin: object, name: str) -> None:
        """Register one more plugin, called after those already registered (tests,
        embedding); pluggy would call a late registration first."""
        # Refused before anything is unregistered: a refusal must not empty the manager.
        _refuse_wrappers(self.pm, name, plugin)
        if any(registered == name for registered, _ in self._order):
            raise PluginError(f"plugin {name!r} is already registered")
        for registered, _ in self._order:
            self.pm.unregister(name=registered)
        order, self._order = [*self._order, (name, plugin)], []
        self.register_all(order)

    @property
    def enabled(self) -> list[str]:
        return [p.name for p in self.plugins if p.enabled]

    def _impls(self, hook: str) -> Iterator[tuple[str, Callable[..., Any], list[str]]]:
        caller = getattr(self.pm.hook, hook)
        # pluggy keeps impls in reverse call order (trylast first) and calls them backwards.
        for impl in reversed(caller.get_hookimpls()):
            yield _plugin_label(impl.plugin_name), impl.function, list(impl.argnames)

    def implemented(self, hook: str) -> bool:
        """Whether any enabled plugin implements `hook` (skip building its context if not)."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    def _call(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        for plugin, function, argnames in self._impls(hook):
            try:
                result = function(**{name: kwargs[name] for name in argnames})
            except PluginError:
                raise
            except Exception as error:
                raise PluginError(f"plugin {plugin!r} failed in {hook}: {error}") from error
            if inspect.isawaitable(result) and hook.startswith("register_"):
                if inspect.iscoroutine(result):
                    result.close()  # no "never awaited" warning on top of the error
                raise PluginError(f"plugin {plugin!r}: {hook} must not be async")
            yield plugin, result

    def _lists(self, hook: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        for plugin, result in self._call(hook, **kwargs):
            for item in result or ():
                yield plugin, item

    # Configuration ---------------------------------------------------------

    def settings(self) -> list[tuple[str, Setting]]:
        specs: list[tuple[str, Setting]] = []
        for plugin, spec in self._lists("register_settings"):
            if not isinstance(spec, Setting):
                raise PluginError(
                    f"plugin {plugin!r}: register_settings must return Setting objects"
                )
            if plugin != CORE and not spec.key.startswith(f"{plugin.upper()}_"):
                raise PluginError(
                    f"plugin {plugin!r}: setting {spec.key} must start with {plugin.upper()}_"
                )
            specs.append((plugin, spec))
        return specs

    # Assembly --------------------------------------------------------------

    def blueprints(self, idp: IdP) -> list[tuple[str, Blueprint]]:
        return list(self._lists("register_blueprints", idp=idp))

    def migrations(self, idp: IdP) -> list[MigrationSet]:
        sets: list[MigrationSet] = []
        owners: dict[str, str] = {}
        for plugin, migration_set in self._lists("register_migrations", idp=idp):
            if migration_set.name in owners:
                raise PluginError(
                    f"plugin {plugin!r}: migration set {migration_set.name!r} is already "
                    f"registered by {owners[migration_set.name]!r}"
                )
            owners[migration_set.name] = plugin
            sets.append(migration_set)
        return sets

    def client_auth_methods(self, idp: IdP) -> dict[str, ClientAuthMethod]:
        methods: dict[str, ClientAuthMethod] = {}
        owners: dict[str, str] = {}
        for plugin, method in self._lists("register_client_auth_methods", idp=idp):
            name = getattr(method, "name", None)
            if not isinstance(name, str) or not name or name == "none":
                raise PluginError(f"plugin {plugin!r}: a client auth method has no usable name")
            if name in methods:
                raise PluginError(
                    f"plugin {plugin!r}: client auth method {name!r} is already registered "
                    f"by {owners[name]!r}"
                )
            methods[name], owners[name] = method, plugin
        return methods

    def token_exchange_handlers(
        self, idp: IdP
    ) -> dict[tuple[str, str | None], TokenExchangeHandler]:
        handlers: dict[tuple[str, str | None], TokenExchangeHandler] = {}
        owners: dict[tuple[str, str | None], str] = {}
        for plugin, handler in self._lists("register_token_exchange_handlers", idp=idp):
            types = getattr(handler, "subject_token_types", None)
            if isinstance(types, str) or not types:
                raise PluginError(
                    f"plugin {plugin!r}: a token exchange handler has no subject_token_types"
                )
            issuer = getattr(handler, "issuer", None)
            for token_type in types:
                key = (token_type, issuer)
                if key in handlers:
                    where = f" from {issuer}" if issuer else ""
                    raise PluginError(
                        f"plugin {plugin!r}: subject_token_type {token_type!r}{where} is "
                        f"already handled by {owners[key]!r}"
                    )
                handlers[key], owners[key] = handler, plugin
        return handlers

    def grant_types(self, idp: IdP) -> dict[str, GrantType]:
        grants: dict[str, GrantType] = {}
        owners: dict[str, str] = {}
        for plugin, grant in self._lists("register_grant_types", idp=idp):
            name = getattr(grant, "grant_type", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r}: a grant type has no grant_type")
            if name in grants:
                raise PluginError(
                    f"plugin {plugin!r}: grant type {name!r} is already handled by {owners[name]!r}"
                )
            grants[name], owners[name] = grant, plugin
        return grants

    def scopes(self, idp: IdP) -> ScopeRegistry:
        """Every enabled plugin's declared scopes, collected once (the token endpoint
        reads the admin set on each admin request without calling a hook)."""
        if self._scopes is None:
            from agentidp_server.directory.scopes import ScopeRegistry, check_scope

            owners: dict[str, str] = {}
            declared = []
            for plugin, item in self._lists("register_scopes", idp=idp):
                try:
                    scope = check_scope(item)
                except ValueError as error:
                    raise PluginError(f"plugin {plugin!r}: {error}") from None
                if scope.name in owners:
                    raise PluginError(
                        f"plugin {plugin!r}: scope {scope.name!r} is already declared by "
                        f"{owners[scope.name]!r}"
                    )
                owners[scope.name] = plugin
                declared.append(scope)
            self._scopes = ScopeRegistry.of(declared)
        return self._scopes

    def subject_kinds(self, idp: IdP) -> dict[str, SubjectKind]:
        """Every enabled plugin's subject kinds by name, collected once (verification
        looks a kind up on each non-agent token without calling a hook)."""
        if self._subject_kinds is None:
            from agentidp_server.oauth.subjects import check_kind

            kinds: dict[str, SubjectKind] = {}
            owners: dict[str, str] = {}
            for plugin, item in self._lists("register_subject_kinds", idp=idp):
                try:
                    kind = check_kind(item)
                except ValueError as error:
                    raise PluginError(f"plugin {plugin!r}: {error}") from None
                if kind.name in kinds:
                    raise PluginError(
                        f"plugin {plugin!r}: subject kind {kind.name!r} is already registered "
                        f"by {owners[kind.name]!r}"
                    )
                kinds[kind.name], owners[kind.name] = kind, plugin
            self._subject_kinds = kinds
        return self._subject_kinds

    def metrics(self, idp: IdP, registry: CollectorRegistry) -> None:
        for _ in self._call("register_metrics", idp=idp, registry=registry):
            pass

    def health_checks(self, idp: IdP) -> list[HealthCheck]:
        checks: list[HealthCheck] = []
        names: dict[str, str] = {}
        for plugin, check in self._lists("register_health_checks", idp=idp):
            if check.name in names:
                raise PluginError(
                    f"plugin {plugin!r}: health check {check.name!r} is already registered "
                    f"by {names[check.name]!r}"
                )
            names[check.name] = plugin
            checks.append(check)
        return checks

    def background_tasks(self, idp: IdP) -> list[BackgroundTask]:
        from agentidp_server.util.background import BackgroundTask

        return [
            BackgroundTask(task.name, task.run, plugin)
            for plugin, task in self._lists("register_background_tasks", idp=idp)
        ]

    def audit_actions(self, idp: IdP) -> dict[str, AuditAction]:
        from agentidp_server.audit import log as audit

        actions: dict[str, AuditAction] = {}
        owners: dict[str, str] = {}
        for plugin, action in self._lists("register_audit_actions", idp=idp):
            if not isinstance(action, audit.AuditAction):
                raise PluginError(
                    f"plugin {plugin!r}: register_audit_actions must return AuditAction objects"
                )
            if action.name in actions:
                raise PluginError(
                    f"plugin {plugin!r}: audit action {action.name!r} is already declared "
                    f"by {owners[action.name]!r}"
                )
            actions[action.name], owners[action.name] = action, plugin
        return actions

    def commands(self, cli: click.Group) -> None:
        for _ in self._call("register_commands", cli=cli):
            pass

    # Serving ---------------------------------------------------------------

    def lifespans(self, idp: IdP) -> list[tuple[str, AbstractAsyncContextManager[None]]]:
        return [(plugin, cm) for plugin, cm in self._call("lifespan", idp=idp) if cm is not None]

    async def token_claims(self, idp: IdP, context: Mapping[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for plugin, function, argnames in self._impls("token_claims"):
            kwargs = {"idp": idp, "context": context}
            try:
                claims = await await_me_maybe(function(**{n: kwargs[n] for n in argnames}))
            except Exception as error:
                raise PluginError(f"plugin {plugin!r} failed in token_claims: {error}") from error
            for name, value in (claims or {}).items():
                if name in REGISTERED_CLAIMS:
                    raise PluginError(
                        f"plugin {plugin!r} may not set the registered claim {name!r}"
                    )
                if name in extra:
                    raise PluginError(
                        f"plugin {plugin!r}: claim {name!r} is already set by {owners[name]!r}"
                    )
                extra[name], owners[name] = value, plugin
        return extra

    async def token_response(self, idp: IdP, context: Mapping[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for plugin, function, argnames in self._impls("token_response"):
            kwargs = {"idp": idp, "context": context}
            try:
                fields = await await_me_maybe(function(**{n: kwargs[n] for n in argnames}))
            except OAuthError:
                raise  # a plugin may refuse the request with a proper OAuth error
            except Exception as error:
                raise PluginError(f"plugin {plugin!r} failed in token_response: {error}") from error
            for name, value in (fields or {}).items():
                if name in RESPONSE_FIELDS or name in extra:
                    raise PluginError(f"plugin {plugin!r} may not set the response field {name!r}")
                extra[name] = value
        return extra

    async def token_status(self, idp: IdP, claims: Mapping[str, Any]) -> str | None:
        for plugin, function, argnames in self._impls("token_status"):
            kwargs = {"idp": idp, "claims": claims}
            try:
                reason = await await_me_maybe(function(**{n: kwargs[n] for n in argnames}))
            except Exception:
                log.exception("plugin %s failed in token_status; token treated as inactive", plugin)
                return "Token status could not be checked"
            if reason:
                return str(reason)
        return None

    async def discovery_metadata(self, idp: IdP) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for plugin, function, argnames in self._impls("discovery_metadata"):
            kwargs = {"idp": idp}
            try:
                fields = await await_me_maybe(function(**{n: kwargs[n] for n in argnames}))
            except Exception:
                log.exception("plugin %s failed in discovery_metadata", plugin)
                continue
            for name, value in (fields or {}).items():
                if isinstance(value, list) and isinstance(merged.get(name), list):
                    merged[name] = merged[name] + [v for v in value if v not in merged[name]]
                elif name in merged and merged[name] != value:
                    log.error("plugin %s: discovery field %s clashes; ignored", plugin, name)
                else:
                    merged[name] = value
        return merged

    def audit_consumers(self) -> list[tuple[str, Callable[..., Any], list[str]]]:
        """Each `audit_event` implementation as a consumer of its own: (name, function,
        argnames); the dispatcher gives each its cursor, lease and retries."""
        caller = self.pm.hook.audit_event
        return [(i.plugin_name, i.function, list(i.argnames)) for i in caller.get_hookimpls()]
