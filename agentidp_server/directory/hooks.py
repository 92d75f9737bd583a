"""Organisations, agents and credentials: their scopes, metrics and the expiring-credentials
gauge, registered through the plugin hooks."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from agentidp_server.directory.agents import KERNEL_SCOPES
from agentidp_server.directory.scopes import Scope
from agentidp_server.hookspecs import hookimpl
from agentidp_server.util.background import BackgroundTask
from agentidp_server.util.ids import now_ms

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

EXPIRING_WINDOW_MS = 7 * 24 * 3600 * 1000


@hookimpl
def register_scopes(idp: IdP) -> list[Scope]:
    return list(KERNEL_SCOPES)


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    state = idp.state.setdefault("core", {})
    state["agents_registered"] = Counter(
        "agentidp_agents_registered_total",
        "Agents registered",
        ["deployment_env"],
        registry=registry,
    )
    state["credentials_expiring"] = Gauge(
        "agentidp_credentials_expiring_soon_total",
        "Credentials expiring within 7 days",
        registry=registry,
        multiprocess_mode="max",
    )


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
    async def expiring() -> None:
        while True:
            await refresh_expiring(idp)
            await asyncio.sleep(60)

    return [BackgroundTask("credentials-expiring", expiring)]
