"""create_app(settings) -> Quart app. Nothing else lives here."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from quart import Quart, Response

from agentidp_server.idp import IdP
from agentidp_server.oauth.grants import grant_auth_methods
from agentidp_server.oauth.token_asgi import TokenEndpoint
from agentidp_server.plugins import CORE, PluginError, check_switches, load_plugins
from agentidp_server.runtime import runtime
from agentidp_server.server import http, openapi
from agentidp_server.server.logs import configure_logging
from agentidp_server.server.metrics import observe_request
from agentidp_server.server.startup import MIGRATE_HINT, StartupError, database_where, describe
from agentidp_server.settings import (
    KERNEL_SETTINGS,
    SettingsError,
    apply_defaults,
    load_settings,
    validate,
)
from agentidp_server.storage.migrations import migrate, status
from agentidp_server.util.background import TaskSupervisor

log = logging.getLogger("agentidp")
# app.extensions key: the one-line reason startup failed, for the runner to print.
STARTUP_ERROR = "agentidp.startup_error"


def build_idp(settings: Any | None = None) -> IdP:
    """Settings, plugins and their validated settings: what the app and the CLI share."""
    settings = settings if settings is not None else load_settings()
    hooks = load_plugins(settings)
    specs = [spec for _, spec in hooks.settings()]
    check_switches(settings, hooks, {s.key for s in (*KERNEL_SETTINGS, *specs)})
    apply_defaults(settings, specs)
    problems = validate(settings, specs)
    if problems:
        raise SettingsError(problems)
    return IdP(settings, hooks)


def create_app(settings: Any | None = None, *, idp: IdP | None = None) -> Quart:
    """Build the app; raises SettingsError or PluginError when it cannot start."""
    idp = idp or build_idp(settings)
    settings = idp.settings
    configure_logging(settings)
    app = Quart("agentidp_server", static_folder=None)
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["agentidp"] = idp
    core_state = idp.state.setdefault("core", {})

    http.install(app, settings)
    openapi.install(app)
    idp._hooks.metrics(idp, idp.registry)
    _mount_blueprints(app, idp)
    core_state["client_auth_methods"] = idp._hooks.client_auth_methods(idp)
    core_state["grant_types"] = idp._hooks.grant_types(idp)
    idp._hooks.scopes(idp)  # collected and checked now: a duplicate stops startup
    idp.audit.actions  # noqa: B018 - likewise (read lazily, only strict mode would see a clash)
    idp._hooks.subject_kinds(idp)  # as scopes: a duplicate kind stops startup
    core_state["grant_auth_methods"] = grant_auth_methods(
        core_state["grant_types"], core_state["client_auth_methods"]
    )
    core_state["health_checks"] = idp._hooks.health_checks(idp)

    @app.after_request
    async def count(response: Response) -> Response:
        observe_request(idp, response.status_code)
        return response

    # The hot path skips Quart's per-request machinery (oauth/token_asgi.py).
    app.asgi_app = TokenEndpoint(app, idp, app.asgi_app)  # type: ignore[method-assign,assignment]

    stack = AsyncExitStack()
    supervisor = TaskSupervisor([])

    @app.before_serving
    async def start() -> None:
        nonlocal supervisor
        try:
            await runtime(idp).open_storage()
            stack.push_async_callback(runtime(idp).close_storage)
            if not settings.DATABASE_URL or not settings.REDIS_URL:
                log.info(
                    "Using embedded storage: %s and %s (development only; set DATABASE_URL and "
                    "REDIS_URL for production)",
                    idp.db.description,
                    idp.kv.description,
                )
            if settings.MIGRATE_ON_START:
                applied = await migrate(idp.db, runtime(idp).migration_sets())
                for migration in applied:
                    log.info("Applied migration %s/%s", migration.migration_set, migration.name)
            else:
                await _require_migrated(idp)
            for plugin, manager in idp._hooks.lifespans(idp):
                try:
                    await stack.enter_async_context(manager)
                except Exception as error:
                    if plugin == CORE:
                        raise  # the kernel's own failures are worded for the operator already
                    raise PluginError(f"plugin {plugin!r} failed in lifespan: {error}") from error
            supervisor = TaskSupervisor(idp._hooks.background_tasks(idp))
        except BaseException as error:
            # after_serving never runs when startup fails: exit the lifespans already
            # entered and close storage here, or the pool and connections leak.
            await stack.aclose()
            # The runner prints this one line instead of the server's traceback (issue 15).
            app.extensions[STARTUP_ERROR] = describe(error, settings)
            raise
        supervisor.start()

    @app.after_serving
    async def stop() -> None:
        await supervisor.stop(float(settings.SHUTDOWN_TASK_TIMEOUT))
        await stack.aclose()

    return app


async def _require_migrated(idp: IdP) -> None:
    """Without MIGRATE_ON_START, a schema behind the code is one clear line, not a
    `no such table` from whichever query runs first."""
    rows = await status(idp.db, runtime(idp).migration_sets())
    pending = [f"{r.migration_set}/{r.name}" for r in rows if not r.applied]
    if pending:
        raise StartupError(
            f"{database_where(idp.settings)} has {len(pending)} pending migration(s) "
            f"(first: {pending[0]}): {MIGRATE_HINT}"
        )


def _mount_blueprints(app: Quart, idp: IdP) -> None:
    owners: dict[tuple[str, str], str] = {}
    for plugin, blueprint in idp._hooks.blueprints(idp):
        before = len(list(app.url_map.iter_rules()))
        try:
            app.register_blueprint(blueprint)
        except ValueError as error:
            raise PluginError(f"plugin {plugin!r}: {error}") from error
        for rule in list(app.url_map.iter_rules())[before:]:
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                key = (method, rule.rule)
                if key in owners:
                    raise PluginError(
                        f"plugin {plugin!r}: route {method} {rule.rule} is already registered "
                        f"by {owners[key]!r}"
                    )
                owners[key] = plugin
