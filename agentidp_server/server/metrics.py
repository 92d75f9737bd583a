"""`GET /metrics` and the kernel's HTTP, storage and pool metrics.

One process (`agentidp serve`, one worker per pod): the app's registry is
exposed as it is. Several workers (`--workers N`): the supervisor sets
`PROMETHEUS_MULTIPROC_DIR` before it starts them (runner.py), each worker's
metrics live in memory-mapped files there, and a scrape answered by any
worker aggregates every worker's files, so counts are right whichever worker
answers. Multiprocess mode allows no custom collectors, so the pool gauges
are plain gauges (`livesum`) refreshed per request and every few seconds.

`METRICS_PORT` (0: the main port) moves `/metrics` to a second listener of
the same server; the main port then answers 404 for it and the metrics port
answers nothing else.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics
from quart import Blueprint, Response, abort, request

from agentidp_server.hookspecs import hookimpl
from agentidp_server.runtime import runtime
from agentidp_server.server import request_scope
from agentidp_server.server.context import current_idp
from agentidp_server.server.openapi import document_raw_response
from agentidp_server.settings import Setting
from agentidp_server.util.background import BackgroundTask

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
POOL_REFRESH_SECONDS = 5.0

blueprint = Blueprint("metrics", __name__)


def _pid_known_at_fork() -> None:
    """In multiprocess mode prometheus_client calls os.getpid() (a system call) on
    every update, to notice a fork; a pid refreshed at fork gives the same answer
    for nothing. It must be in place before the first metric value exists: this
    module is imported before any plugin and before the app registers metrics."""
    from prometheus_client import values

    pid = os.getpid()

    def forked() -> None:
        nonlocal pid
        pid = os.getpid()

    os.register_at_fork(after_in_child=forked)
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=lambda: pid
    )


if os.environ.get(MULTIPROC_ENV):
    _pid_known_at_fork()


def _port_or_zero(value: Any) -> str | None:
    return None if 0 <= value < 65536 else f"must be between 0 and 65535, got {value!r}"


@hookimpl
def register_settings() -> list[Setting]:
    return [
        Setting(
            "METRICS_PORT",
            0,
            "Serve `GET /metrics` on this separate (internal) port instead of PORT; "
            "0 serves it on PORT",
            int,
            _port_or_zero,
        ),
        Setting(
            "METRICS_HOST",
            "",
            "Address the METRICS_PORT listener binds; empty means HOST",
        ),
    ]


def metrics_port(settings: Any) -> int:
    """The separate metrics port, or 0 when `/metrics` is served on PORT."""
    port = int(settings.get("METRICS_PORT") or 0)
    return 0 if port == int(settings.PORT) else port


def metrics_bind(settings: Any) -> str | None:
    """The extra hypercorn bind for the metrics listener, if any."""
    port = metrics_port(settings)
    if not port:
        return None
    return f"{settings.get('METRICS_HOST') or settings.HOST}:{port}"


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when this process runs in it."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition_registry(idp: IdP) -> CollectorRegistry:
    """What a scrape reads: every worker's files in multiprocess mode, else the app's registry."""
    path = multiprocess_dir()
    if path is None:
        return idp.registry
    state = idp.state.setdefault("core", {})
    registry: CollectorRegistry | None = state.get("multiprocess_registry")
    if registry is None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        state["multiprocess_registry"] = registry
    return registry


def _request_port() -> int | None:
    server = request.scope.get("server")
    if not server or len(server) < 2 or server[1] is None:
        return None
    return int(server[1])


@blueprint.before_app_request
async def split_ports() -> None:
    """With METRICS_PORT set: `/metrics` only there, and nothing else there."""
    idp = current_idp()
    port = idp.state["core"].get("metrics_port")
    if port is None:
        port = idp.state["core"]["metrics_port"] = metrics_port(idp.settings)
    if not port:
        return
    on_metrics_port = _request_port() == port
    if on_metrics_port != (request.path == "/metrics"):
        abort(404)


@blueprint.get("/metrics")
@document_raw_response(200, "text/plain", {"type": "string"}, "Prometheus text (or OpenMetrics)")
async def metrics() -> Response:
    """Prometheus metrics (OpenMetrics when the Accept header asks for it)."""
    idp = current_idp()
    refresh_pool(idp)
    registry = exposition_registry(idp)
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
    # livesum: the workers' pools add up, and a dead worker's connections drop out.
    active = Gauge(
        "agentidp_db_pool_active_connections",
        "Active database connections (in use by a request)",
        registry=registry,
        multiprocess_mode="livesum",
    )
    waiting = Gauge(
        "agentidp_db_pool_waiting_requests",
        "Requests waiting for a pool connection",
        registry=registry,
        multiprocess_mode="livesum",
    )
    queried, commanded = labelled(queries), labelled(commands)
    runtime(idp).query_observer = lambda operation, seconds: queried(operation).observe(seconds)
    runtime(idp).command_observer = lambda command, seconds: commanded(command).observe(seconds)
    state = idp.state.setdefault("core", {})
    state["http_metrics"] = (labelled(requests), labelled(duration))
    state["pool_metrics"] = [active, waiting, None]  # the gauges and the stats they show


def labelled(metric: Any) -> Callable[..., Any]:
    """`child(*label_values)`, each label set's child looked up once: prometheus_client's
    `labels()` takes a lock and builds a key on every call (several per token)."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = children.get(values)
        if found is None:
            found = children[values] = metric.labels(*values)
        return found

    return child


def refresh_pool(idp: Any) -> None:
    """Copy this worker's `pool_stats()` into the pool gauges (no-op before storage opens)."""
    gauges = idp.state.get("core", {}).get("pool_metrics")
    if gauges is None:
        return
    try:
        stats = idp.db.pool_stats()
    except RuntimeError:  # storage not open (yet, or any more)
        return
    # Each set is a write to a memory-mapped file in multiprocess mode: only on change.
    if gauges[2] != stats:
        gauges[0].set(stats[0])
        gauges[1].set(stats[1])
        gauges[2] = stats


@hookimpl
def register_background_tasks(idp: IdP) -> list[BackgroundTask]:
    async def pool() -> None:
        while True:
            refresh_pool(idp)
            await asyncio.sleep(POOL_REFRESH_SECONDS)

    return [BackgroundTask("db-pool-metrics", pool)]


def observe_request(idp: Any, status: int) -> None:
    observe(idp, request.method, route_label(), status, request_scope.started())


def observe(idp: Any, method: str, route: str, status: int, started: float) -> None:
    """Count one answered request and its duration (`started`: perf_counter at arrival)."""
    requests, duration = idp.state["core"]["http_metrics"]
    labels = (method, route, str(status))
    requests(*labels).inc()
    duration(*labels).observe(time.perf_counter() - started)
    refresh_pool(idp)


class MultiprocessDir:
    """The supervisor's side of multiprocess mode (runner.py).

    `PROMETHEUS_MULTIPROC_DIR` from the environment is used (a volume an
    operator wants to inspect), else a fresh temporary directory that is
    removed at exit. Either way it is emptied of the previous run's files
    before any worker starts: stale files would add old counts to new ones.
    The variable is set in this process's environment so the spawned workers
    inherit it before they import prometheus_client.
    """

    def __init__(self) -> None:
        import tempfile

        configured = os.environ.get(MULTIPROC_ENV)
        self.owned = not configured
        self.path = configured or tempfile.mkdtemp(prefix="agentidp-metrics-")
        os.makedirs(self.path, exist_ok=True)
        self.wipe()
        os.environ[MULTIPROC_ENV] = self.path

    def wipe(self) -> None:
        for name in os.listdir(self.path):
            if name.endswith(".db"):
                os.remove(os.path.join(self.path, name))

    def worker_exited(self, pid: int | None) -> None:
        """Drop a dead worker's live gauges (its counters still count)."""
        if pid is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        import shutil

        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
