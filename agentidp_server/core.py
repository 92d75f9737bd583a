"""The kernel's own capabilities, registered through the plugin hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from prometheus_client import CollectorRegistry, Counter, Gauge
from quart import Blueprint

from agentidp_server.directory.agents import KERNEL_SCOPES
from agentidp_server.directory.scopes import Scope
from agentidp_server.hookspecs import hookimpl
from agentidp_server.server.metrics import labelled
from agentidp_server.settings import KERNEL_SETTINGS, Setting
from agentidp_server.storage.migrations import MigrationSet
from agentidp_server.util.background import BackgroundTask
from agentidp_server.util.ids import now_ms

if TYPE_CHECKING:
    from agentidp_server.audit.log import AuditAction
    from agentidp_server.idp import IdP
    from agentidp_server.oauth.client_auth import ClientAuthMethod
    from agentidp_server.oauth.grants import GrantType
    from agentidp_server.oauth.subjects import SubjectKind

EXPIRING_WINDOW_MS = 7 * 24 * 3600 * 1000


def _migrations_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "migrations" / "core"
    return packaged if packaged.is_dir() else here.parent / "migrations" / "core"


@hookimpl
def register_settings() -> list[Setting]:
    return list(KERNEL_SETTINGS)


@hookimpl
def register_migrations(idp: IdP) -> list[MigrationSet]:
    return [MigrationSet("core", _migrations_dir())]


@hookimpl
def register_blueprints(idp: IdP) -> list[Blueprint]:
    from agentidp_server.api import agents, audit, credentials, operator
    from agentidp_server.oauth import endpoints

    return [
        endpoints.blueprint,
        agents.blueprint,
        credentials.blueprint,
        operator.blueprint,
        audit.blueprint,
    ]


@hookimpl
def register_scopes(idp: IdP) -> list[Scope]:
    return list(KERNEL_SCOPES)


@hookimpl
def register_client_auth_methods(idp: IdP) -> list[ClientAuthMethod]:
    from agentidp_server.oauth.client_auth import KERNEL_METHODS

    return list(KERNEL_METHODS.values())


@hookimpl
def register_audit_actions(idp: IdP) -> list[AuditAction]:
    from agentidp_server.audit.log import KERNEL_ACTIONS

    return list(KERNEL_ACTIONS)


@hookimpl
def register_grant_types(idp: IdP) -> list[GrantType]:
    from agentidp_server.oauth.client_credentials import ClientCredentialsGrant
    from agentidp_server.oauth.rfc8693 import TokenExchangeGrant

    grants: list[GrantType] = [ClientCredentialsGrant()]
    handlers = idp._hooks.token_exchange_handlers(idp)
    if handlers:  # RFC 8693 is served (and advertised) only with someone to decide
        grants.append(TokenExchangeGrant(handlers))
    return grants


@hookimpl
def register_subject_kinds(idp: IdP) -> list[SubjectKind]:
    from agentidp_server.oauth.rfc9068 import AGENT_KIND

    return [AGENT_KIND]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    state = idp.state.setdefault("core", {})
    # The two counted on every token are kept as `labelled` child lookups.
    state["tokens_issued"] = labelled(
        Counter(
            "agentidp_tokens_issued_total", "OAuth 2.0 tokens issued", ["scope"], registry=registry
        )
    )
    state["agents_registered"] = Counter(
        "agentidp_agents_registered_total",
        "Agents registered",
        ["deployment_env"],
        registry=registry,
    )
    state["rate_limit_hits"] = Counter(
        "agentidp_rate_limit_hits_total", "Rate limit rejections", ["client_id"], registry=registry
    )
    state["tenant_api_calls"] = labelled(
        Counter(
            "agentidp_tenant_api_calls_total",
            "API calls per tenant per tier",
            ["org_id", "tier"],
            registry=registry,
        )
    )
    state["billing_limit_rejections"] = Counter(
        "agentidp_billing_limit_rejections_total",
        "Tier limit enforcement rejections",
        ["org_id", "limit_type"],
        registry=registry,
    )
    state["rate_limit_fail_open"] = Counter(
        "agentidp_rate_limit_fail_open_total",
        "Requests let through unlimited because the kv was unavailable",
        registry=registry,
    )
    state["audit_integrity"] = Gauge(
        "agentidp_audit_chain_integrity",
        "1 if audit chain is intact, 0 if broken",
        registry=registry,
        # Only the process holding the audit-integrity lease checks and sets it.
        multiprocess_mode="mostrecent",
    )
    # Set by the process holding each consumer's lease (audit_dispatch).
    state["audit_consumer_lag"] = Gauge(
        "agentidp_audit_consumer_lag",
        "Audit events committed but not yet accepted by a plugin consuming them",
        ["consumer"],
        registry=registry,
        multiprocess_mode="mostrecent",
    )
    state["audit_consumer_failures"] = Counter(
        "agentidp_audit_consumer_failures_total",
        "Failed or timed-out deliveries of an audit event to a plugin (each is retried)",
        ["consumer"],
        registry=registry,
    )
    state["credentials_expiring"] = Gauge(
        "agentidp_credentials_expiring_soon_total",
        "Credentials expiring within 7 days",
        registry=registry,
        multiprocess_mode="max",
    )


@hookimpl
def lifespan(idp: IdP) -> AsyncIterator[None]:
    @asynccontextmanager
    async def keys_loaded() -> AsyncIterator[None]:
        await idp.keys.load(idp.db)
        yield
        # Hand plugins what committed before shutdown.
        await idp.audit.dispatcher.drain(float(idp.settings.SHUTDOWN_TASK_TIMEOUT))

    return keys_loaded()  # type: ignore[return-value]


async def refresh_expiring(idp: IdP) -> None:
    now = now_ms()
    count = await idp.db.fetchval(
        "SELECT COUNT(*) FROM credentials WHERE status = 'active' "
        "AND expires_at > $1 AND expires_at <= $2",
        now,
        now + EXPIRING_WINDOW_MS,
    )
    idp.state["core"]["credentials_expiring"].set(int(count or 0))


@hookimpl
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    async def keys() -> None:
        await idp.keys.refresh_forever(idp.db)

    async def expiring() -> None:
        while True:
            await refresh_expiring(idp)
            await asyncio.sleep(60)

    async def audit_checkpoints() -> None:
        from agentidp_server.audit.checkpoints import checkpoint_all, prune

        while True:
            await asyncio.sleep(float(idp.settings.AUDIT_CHECKPOINT_INTERVAL))
            await checkpoint_all(idp)
            await prune(idp)

    async def audit_integrity() -> None:
        from agentidp_server.audit.integrity import IntegrityWatch

        watch = IntegrityWatch(idp)
        while True:
            await watch.round()
            await asyncio.sleep(float(idp.settings.AUDIT_VERIFY_INTERVAL))

    async def client_cache() -> None:
        from agentidp_server.oauth.client_lookup import ClientLookup

        await ClientLookup.of(idp).cache.listen_forever(idp)

    return [
        BackgroundTask("client-cache", client_cache),
        BackgroundTask("keys-refresh", keys),
        BackgroundTask("credentials-expiring", expiring),
        BackgroundTask("audit-dispatch", idp.audit.dispatcher.run_forever),
        BackgroundTask("audit-integrity", audit_integrity),
        BackgroundTask("audit-checkpoints", audit_checkpoints),
    ]


@hookimpl
def register_commands(cli: click.Group) -> None:
    from agentidp_server.cli import audit, keys, orgs

    cli.add_command(audit.audit)
    cli.add_command(orgs.orgs)
    cli.add_command(keys.keys)
