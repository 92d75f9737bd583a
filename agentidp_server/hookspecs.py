# mypy: disable-error-code="empty-body"
"""The plugin contract: every hook AgentIdP calls, grouped by phase.

A plugin is a module (or object) with functions marked `@hookimpl`, published
under the `agentidp` entry-point group. The kernel registers its own
capabilities through these same hooks. Read `docs/plugins.md` for a worked
example.

Rules that hold for every hook:

* An implementation takes any subset of its hook's arguments.
* The `register_*` hooks return plain values (an `async def` one is refused:
  they run while the app is built, and Quart cannot add routes once it
  serves). Serving-phase implementations may return a value or an awaitable;
  the kernel awaits it.
* An implementation that raises at startup stops the server with a message
  naming the plugin. A serving-phase hook that raises is logged with the
  plugin's name and does not fail the request, except `token_claims` and
  `token_response`, whose failure fails the token request (a token missing
  claims is worse than none), `token_status`, whose failure makes the token
  inactive, and `audit_event`, whose failure is retried.
* Implementations of one hook run in pluggy's order: `tryfirst=True` first,
  `trylast=True` last, the others the kernel first, then plugins by
  entry-point name, then plugins added later (`Hooks.add`). Where two
  collide (a claim, a scalar metadata field) the later one is blamed or
  dropped. `wrapper`/`hookwrapper` implementations are refused when loaded or
  added (a wrapper would see coroutines, not results).
* `idp` is the kernel's public facade (`agentidp_server.IdP`): settings, db,
  kv, metrics registry and the services a plugin may call. Plugins never
  import kernel internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import click
import pluggy

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from quart import Blueprint

    from agentidp_server.audit.log import AuditAction
    from agentidp_server.directory.scopes import Scope
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import ClientAuthMethod
    from agentidp_server.oauth.grants import GrantType
    from agentidp_server.oauth.rfc8693 import TokenExchangeHandler
    from agentidp_server.oauth.subjects import SubjectKind
    from agentidp_server.server.health import HealthCheck
    from agentidp_server.settings import Setting
    from agentidp_server.storage.migrations import MigrationSet
    from agentidp_server.util.background import BackgroundTask

PROJECT = "agentidp"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# Beside the hooks, so a capability (oauth/grants) can raise it without importing plugins.
class PluginError(Exception):
    """A plugin broke the contract; the message names it."""


# --------------------------------------------------------------------------
# Configuration: called once settings are loaded, before anything is built.
# --------------------------------------------------------------------------


@hookspec
def register_settings() -> list[Setting]:
    """Declare the plugin's settings.

    Called before validation. Return a list of `agentidp_server.Setting`, each
    with a default and a description; keys must start with the plugin's name in
    upper case (`ANALYTICS_RETENTION_DAYS`). The runbook-style plain variable
    and the `AGENTIDP_`-prefixed one both set it. A bad value stops startup
    with one line naming the key.
    """


# --------------------------------------------------------------------------
# Assembly: called while the app is built, in plugin order (see above).
# --------------------------------------------------------------------------


@hookspec
def register_blueprints(idp: IdP) -> list[Blueprint]:
    """Return Quart blueprints to mount.

    Called once per app. A blueprint whose name or whose (method, route) pair
    another plugin already registered stops startup with both plugins named.
    """


@hookspec
def register_migrations(idp: IdP) -> list[MigrationSet]:
    """Return the plugin's named migration sets (`agentidp_server.MigrationSet`).

    Called by `agentidp db migrate`, `agentidp db status` and, where
    MIGRATE_ON_START is on, at startup. The kernel orders, locks and records
    them in `schema_migrations`; a set name must be unique (use the plugin's
    name).
    """


@hookspec
def register_client_auth_methods(idp: IdP) -> list[ClientAuthMethod]:
    """Return client authentication methods (`agentidp_server.ClientAuthMethod`).

    Each has a `name` (as in the IANA OAuth Token Endpoint Authentication
    Methods registry, e.g. `tls_client_auth`), `secret_params` (parameters
    carrying the credential, kept from other hooks), `presented(params, header)`
    (whether a request uses it; no I/O) and `async authenticate(idp, params,
    endpoint)` returning an `agentidp_server.Client` or raising
    `OAuthError("invalid_client", ..., 401)`. The kernel registers
    `client_secret_basic`, `client_secret_post` and `private_key_jwt` here.
    A name another plugin (or the kernel) registered, or `none`, stops startup.
    A registered method is accepted at the token endpoint for the grants naming
    it in TOKEN_ENDPOINT_AUTH_METHODS and listed in
    `token_endpoint_auth_methods_supported`; introspection and revocation take
    the kernel's three only. A request presenting two is `invalid_request`.
    """


@hookspec
def register_grant_types(idp: IdP) -> list[GrantType]:
    """Return grant handlers for the token endpoint, each with a `grant_type`.

    A grant type another plugin (or the kernel) already handles stops startup.
    The token endpoint finds the grant first, then authenticates the client with
    only the methods in the grant's `TOKEN_ENDPOINT_AUTH_METHODS` (default: the
    kernel's three; a name no plugin registered stops startup). A grant listing
    `none` gets requests without client authentication, with `request.client`
    None, and the metadata's `token_endpoint_auth_methods_supported` lists
    `none`. Authenticated clients pass the failure and rate limits before the
    handler's `issue(request: TokenRequest)`. Every registered grant is listed in
    the RFC 8414 `grant_types_supported`.
    """


@hookspec
def register_token_exchange_handlers(idp: IdP) -> list[TokenExchangeHandler]:
    """Return RFC 8693 token exchange handlers (`agentidp_server.TokenExchangeHandler`).

    The kernel serves `urn:ietf:params:oauth:grant-type:token-exchange`, checks
    the §2.1 parameters and answers §2.2.1 / §2.2.2; a handler is chosen by the
    request's `subject_token_type` (its `subject_token_types`) and, for a
    handler with an `issuer`, by the subject token's unverified `iss`. It lists
    the `actor_token_types` and `issued_token_types` it accepts and implements
    `async exchange(exchange: TokenExchange) -> ExchangedToken`. Two handlers
    for the same (type, issuer) stop startup. A `subject_token_type` no handler
    takes is §2.2.2's `invalid_request`, naming the types taken. With no
    handler the grant is neither served nor advertised.
    """


@hookspec
def register_scopes(idp: IdP) -> list[Scope]:
    """Declare the OAuth scopes the plugin's routes require (`agentidp_server.Scope`).

    Called once per app. Each `Scope(name, description, admin=...)` has an RFC
    6749 §3.3 scope-token name (`analytics:read`); a name another plugin (or the
    kernel) already declared stops startup with both named. Declared scopes are
    listed in the RFC 8414 `scopes_supported`; with `admin=True`, every
    organisation's admin client may be issued it, including admins created
    before the plugin was enabled. Disabling the plugin withdraws its scopes.
    """


@hookspec
def register_subject_kinds(idp: IdP) -> list[SubjectKind]:
    """Declare the kinds of token subject the plugin serves (`agentidp_server.SubjectKind`).

    Called once per app. A `SubjectKind(name, status)` lets `idp.tokens.mint(subject=
    Subject(name, subject_id, org_id), ...)` issue tokens for subjects that are not
    local agents (a person, a partner-mapped subject); they carry the kind in the
    `agentidp_subject_kind` claim (`SUBJECT_KIND_CLAIM`). On every verification of
    such a token the kernel checks revocation, then awaits `status(idp, claims)`,
    which returns why the token is no longer valid (a message safe to show:
    "Token's person is suspended") or None; keep it to one indexed lookup. A
    status check that raises makes the token inactive. The kernel registers
    `agent`; a name another plugin (or the kernel) registered stops startup with
    both named. While the plugin is disabled its tokens are inactive ("Token's
    subject kind is not served"), never an error.
    """


@hookspec
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    """Create the plugin's Prometheus metrics on `registry` (never the global one).

    Called only while the plugin is enabled, so a disabled plugin's metrics
    never appear on /metrics. Keep the objects (e.g. on the plugin's state)
    to update them later. A duplicate metric name stops startup.
    """


@hookspec
def register_health_checks(idp: IdP) -> list[HealthCheck]:
    """Return named readiness checks (`agentidp_server.HealthCheck`).

    `GET /health/ready` runs every check concurrently, each bounded by
    HEALTH_CHECK_TIMEOUT; a check that raises or times out makes readiness 503
    and is named in the answer. Names must be unique.
    """


@hookspec
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    """Return long-running tasks (`agentidp_server.BackgroundTask`) to supervise.

    Started after storage and lifespans are up, restarted with backoff if they
    raise, cancelled at shutdown and given SHUTDOWN_TASK_TIMEOUT to finish.
    """


@hookspec
def register_audit_actions(idp: IdP) -> list[AuditAction]:
    """Declare the audit actions the plugin records (`agentidp_server.AuditAction`:
    a name such as `delegation.created` and what it means).

    The kernel declares its own the same way; only enabled plugins declare. An
    action declared by two plugins stops startup. With `AUDIT_STRICT_ACTIONS`
    on (the kernel's pytest plugin turns it on; off by default in production),
    recording an action no plugin declared raises `UndeclaredAuditAction`, so
    a test catches a typo or a forgotten declaration. Called once, while the
    app is built (`idp.audit.actions` lists the result).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add `agentidp` subcommands to `cli` (a click group).

    Called when the CLI starts, for enabled plugins only. A command that needs
    storage should use `agentidp_server.open_idp()`.
    """


# --------------------------------------------------------------------------
# Serving: called while the server runs.
# --------------------------------------------------------------------------


@hookspec
def lifespan(idp: IdP) -> AbstractAsyncContextManager[None] | None:
    """Return an async context manager entered at startup, exited at shutdown.

    Entered after storage opens and migrations are applied (or checked), in
    plugin order, before background tasks start; exited in reverse order, after
    in-flight requests finish. Raising on entry stops startup.
    """


@hookspec
def token_claims(
    idp: IdP, context: Mapping[str, Any]
) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Return extra claims for an access token being minted (`idp.tokens.mint`,
    so every grant's tokens).

    `context` (read-only) holds `agent` (the agent the token is for, a
    mapping; None for a subject that is not an agent, see
    `register_subject_kinds`), `subject` (its `agentidp_server.Subject`, for
    such a subject), `grant_type` (as the minting grant passed it) and `claims`
    (a copy of the claims so far; the client is `claims["client_id"]`). The
    registered claims (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`,
    `scope`, `client_id`, `org_id`, `act`, `credential_id`, `iat_ms`,
    `agentidp_subject_kind`; `plugins.REGISTERED_CLAIMS`) cannot be set: a
    plugin returning one, or a claim an earlier plugin set, fails the request
    with the plugin named.
    """


@hookspec
def token_response(
    idp: IdP, context: Mapping[str, Any]
) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Return extra fields for a successful token response (an OIDC `id_token`).

    `context` holds `agent` (the authenticated client's agent; None for a
    request without client authentication to a grant accepting "none"), `grant_type`,
    `params` (the request's parameters without credentials or presented
    tokens), `claims` (the issued access token's claims) and `access_token`
    (the issued access token, e.g. for an id_token's `at_hash`). The response's
    own fields (`access_token`, `token_type`, `expires_in`, `scope`,
    `issued_token_type`, `refresh_token`) cannot be overwritten. As with
    `token_claims`, a failure fails the token request.
    """


@hookspec
def token_status(idp: IdP, claims: Mapping[str, Any]) -> str | Awaitable[str | None] | None:
    """Return why a signed, unexpired, unrevoked access token is nevertheless
    inactive (a message safe to show), or None if this plugin has no objection.

    Called on every verification (introspection, the management API, userinfo)
    after the kernel's own checks, so keep it to one indexed lookup. A plugin
    that raises makes the token inactive: verification fails closed.
    """


@hookspec
def discovery_metadata(idp: IdP) -> Mapping[str, Any] | Awaitable[Mapping[str, Any]] | None:
    """Return fields to merge into the RFC 8414 authorization-server metadata.

    Only called for enabled plugins, so nothing of a disabled plugin is
    advertised. List-valued fields are merged, scalar fields may not clash.
    """


@hookspec
def audit_event(idp: IdP, event: Mapping[str, Any]) -> Awaitable[None] | None:
    """Receive a committed audit event, after commit and off the request path.

    Each plugin implementing this hook is a consumer of its own: its own
    cursor per organisation chain (in the database), its own lease (one
    process at a time delivers to it, `audit-consumer:<plugin>`, renewed while
    the handler runs), whichever process committed the event (a worker, the
    CLI). Events arrive in chain order per organisation. A call that raises or
    does not finish within `AUDIT_CONSUMER_TIMEOUT` seconds is retried with
    backoff (`AUDIT_CONSUMER_RETRY_MIN` doubling up to `_MAX`), and the cursor
    does not pass the event until a call returns: delivery is at least once,
    so deduplicate by `(org_id, seq)`. While one consumer is stuck on an event,
    the other consumers, and its other organisations' chains, go on.
    """
