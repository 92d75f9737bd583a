"""The audit log's actions, metrics, delivery, integrity watch and checkpoints, registered
through the plugin hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from agentidp_server.audit.checkpoints import checkpoint_all, prune
from agentidp_server.audit.dispatch import DispatchMetrics
from agentidp_server.audit.integrity import IntegrityWatch
from agentidp_server.audit.log import KERNEL_ACTIONS, AuditAction
from agentidp_server.hookspecs import hookimpl
from agentidp_server.util.background import BackgroundTask

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@hookimpl
def register_audit_actions(idp: IdP) -> list[AuditAction]:
    return list(KERNEL_ACTIONS)


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    idp.audit.integrity_gauge = Gauge(
        "agentidp_audit_chain_integrity",
        "1 if audit chain is intact, 0 if broken",
        registry=registry,
        # Only the process holding the audit-integrity lease checks and sets it.
        multiprocess_mode="mostrecent",
    )
    idp.audit.dispatcher.metrics = DispatchMetrics(
        consumer_lag=Gauge(
            "agentidp_audit_consumer_lag",
            "Audit events committed but not yet accepted by a plugin consuming them",
            ["consumer"],
            registry=registry,
            multiprocess_mode="mostrecent",
        ),
        consumer_failures=Counter(
            "agentidp_audit_consumer_failures_total",
            "Failed or timed-out deliveries of an audit event to a plugin (each is retried)",
            ["consumer"],
            registry=registry,
        ),
    )


@hookimpl
def lifespan(idp: IdP) -> AsyncIterator[None]:
    @asynccontextmanager
    async def drained_at_shutdown() -> AsyncIterator[None]:
        yield
        # Hand plugins what committed before shutdown.
        await idp.audit.dispatcher.drain(float(idp.settings.SHUTDOWN_TASK_TIMEOUT))

    return drained_at_shutdown()  # type: ignore[return-value]


@hookimpl
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    async def audit_checkpoints() -> None:
        while True:
            await asyncio.sleep(float(idp.settings.AUDIT_CHECKPOINT_INTERVAL))
            await checkpoint_all(idp)
            await prune(idp)

    async def audit_integrity() -> None:
        watch = IntegrityWatch(idp)
        while True:
            await watch.round()
            await asyncio.sleep(float(idp.settings.AUDIT_VERIFY_INTERVAL))

    return [
        BackgroundTask("audit-dispatch", idp.audit.dispatcher.run_forever),
        BackgroundTask("audit-integrity", audit_integrity),
        BackgroundTask("audit-checkpoints", audit_checkpoints),
    ]
