"""`GET /metrics` and the kernel's HTTP and storage metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics
from quart import Blueprint, Response, g, request

from agentidp_server.hookspecs import hookimpl

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
async def metrics() -> Response:
    from agentidp_server.idp import current_idp

    registry = current_idp().registry
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        return Response(
            openmetrics.generate_latest(registry),  # type: ignore[no-untyped-call]
            content_type=openmetrics.CONTENT_TYPE_LATEST,
        )
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def route_label() -> str:
    """The route pattern (`/api/v1/agents/{agent_id}`), never the raw path."""
    rule = request.url_rule
    if rule is None:
        return "unmatched"
    return (
        rule.rule.replace("<", "{").replace(">", "}").replace("{string:", "{").replace("{int:", "{")
    )


@hookimpl
def register_blueprints() -> list[Blueprint]:
    return [blueprint]


@hookimpl
def register_metrics(idp: IdP, registry: CollectorRegistry) -> None:
    requests = Counter(
        "agentidp_http_requests_total",
        "HTTP requests",
        ["method", "route", "status_code"],
        registry=registry,
    )
    duration = Histogram(
        "agentidp_http_request_duration_seconds",
        "HTTP latency",
        ["method", "route", "status_code"],
        registry=registry,
    )
    queries = Histogram(
        "agentidp_db_query_duration_seconds",
        "Database query duration",
        ["operation"],
        registry=registry,
    )
    commands = Histogram(
        "agentidp_redis_command_duration_seconds",
        "Redis command duration",
        ["command"],
        registry=registry,
    )
    idp.query_observer = lambda operation, seconds: queries.labels(operation).observe(seconds)
    idp.command_observer = lambda command, seconds: commands.labels(command).observe(seconds)
    idp.state.setdefault("core", {})["http_metrics"] = (requests, duration)


def observe_request(idp: Any, status: int) -> None:
    requests, duration = idp.state["core"]["http_metrics"]
    labels = (request.method, route_label(), str(status))
    requests.labels(*labels).inc()
    duration.labels(*labels).observe(time.perf_counter() - g.get("started", time.perf_counter()))
