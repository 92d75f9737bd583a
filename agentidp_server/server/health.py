"""Liveness and readiness: `/health` and `/health/ready`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quart import Blueprint, Response, jsonify

from agentidp_server.hookspecs import hookimpl
from agentidp_server.server.context import current_idp
from agentidp_server.server.openapi import document_raw_response
from agentidp_server.storage.errors import StorageUnavailable, log_outage

if TYPE_CHECKING:
    from agentidp_server.idp import IdP


@dataclass(frozen=True)
class HealthCheck:
    """A named readiness check: an async callable that raises when the part is down."""

    name: str
    check: Callable[[], Awaitable[None]]


blueprint = Blueprint("health", __name__)


_HEALTH_SCHEMA = {"type": "object", "properties": {"status": {"type": "string"}}}


@blueprint.get("/health")
@document_raw_response(200, "application/json", _HEALTH_SCHEMA, "The process is alive")
async def live() -> Response:
    """Liveness: the process answers (no dependency is checked)."""
    return jsonify(status="ok")


async def _run(check: HealthCheck, timeout: float) -> str | None:
    try:
        await asyncio.wait_for(check.check(), timeout=timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except Exception as error:
        if isinstance(error, StorageUnavailable):
            log_outage(error)
        return str(error) or type(error).__name__
    return None


@blueprint.get("/health/ready")
@document_raw_response(200, "application/json", _HEALTH_SCHEMA, "Every check passes")
@document_raw_response(503, "application/json", _HEALTH_SCHEMA, "A check is failing")
async def ready() -> tuple[Response, int]:
    """Readiness: the database, the kv store and the plugins' checks, each within a bound."""
    idp = current_idp()
    checks: list[HealthCheck] = idp.state["core"]["health_checks"]
    timeout = float(idp.settings.HEALTH_CHECK_TIMEOUT)
    results = await asyncio.gather(*(_run(c, timeout) for c in checks))
    failing = {c.name: r for c, r in zip(checks, results, strict=True) if r is not None}
    body: dict[str, object] = {
        "status": "unavailable" if failing else "ok",
        "checks": {
            c.name: ("ok" if r is None else "failing") for c, r in zip(checks, results, strict=True)
        },
    }
    if failing:
        body["failing"] = sorted(failing)
        body["message"] = "; ".join(f"{name}: {reason}" for name, reason in sorted(failing.items()))
        return jsonify(body), 503
    return jsonify(body), 200


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [blueprint]


@hookimpl
def register_health_checks(idp: IdP) -> list[HealthCheck]:
    return [
        HealthCheck("database", lambda: idp.db.ping()),
        HealthCheck("kv", lambda: idp.kv.ping()),
    ]
