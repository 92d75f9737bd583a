"""`GET /metrics`: the runbook's metric table, route labels, OpenMetrics, the
separate metrics port, and exact counts across worker processes.

The runbook table below is copied from the runbook's Monitoring section
(name, type, labels). `NOT_YET_EXPORTED` lists, with the feature each one
arrives with, the metrics of features this repository does not have yet;
every other row must be in a live scrape after real traffic.
"""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentidp_server.app import create_app
from agentidp_server.server.metrics import metrics_bind
from agentidp_server.settings import load_settings
from agentidp_server.testkit import admin_headers, make_org
from tests.test_lifecycle import Server, base_env, free_port
from tests.test_lifecycle import serve as serve  # the fixture

# name -> (type, labels), exactly as the runbook's "Metrics Exposed" table.
RUNBOOK_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "agentidp_tokens_issued_total": ("counter", ("scope",)),
    "agentidp_agents_registered_total": ("counter", ("deployment_env",)),
    "agentidp_http_requests_total": ("counter", ("method", "route", "status_code")),
    "agentidp_http_request_duration_seconds": ("histogram", ("method", "route", "status_code")),
    "agentidp_db_query_duration_seconds": ("histogram", ("operation",)),
    "agentidp_redis_command_duration_seconds": ("histogram", ("command",)),
    "agentidp_webhook_dead_letters_total": ("counter", ("event_type",)),
    "agentidp_credentials_expiring_soon_total": ("gauge", ()),
    "agentidp_audit_chain_integrity": ("gauge", ()),
    "agentidp_rate_limit_hits_total": ("counter", ("client_id",)),
    "agentidp_db_pool_active_connections": ("gauge", ()),
    "agentidp_db_pool_waiting_requests": ("gauge", ()),
    "agentidp_tenant_api_calls_total": ("counter", ("org_id", "tier")),
    "agentidp_billing_limit_rejections_total": ("counter", ("org_id", "limit_type")),
    "agentidp_did_documents_generated_total": ("counter", ()),
    "agentidp_oidc_tokens_issued_total": ("counter", ()),
    "agentidp_federation_events_total": ("counter", ("event_type",)),
    "agentidp_delegation_chains_created_total": ("counter", ()),
    "agentidp_compliance_reports_generated_total": ("counter", ()),
}

# Explicit allowance: runbook metrics whose feature does not exist in this
# repository yet. Each must appear in a scrape once its feature lands (then
# delete its line here); docs/operations.md lists the same ones.
NOT_YET_EXPORTED: dict[str, str] = {
    "agentidp_webhook_dead_letters_total": "arrives with the webhooks feature",
    "agentidp_federation_events_total": "arrives with the federation plugin",
    "agentidp_compliance_reports_generated_total": "arrives with the compliance plugin",
}


# Runbook metrics that the plugins under plugins/ export, by the setting enabling each.
PLUGIN_METRICS: dict[str, str] = {
    "agentidp_did_documents_generated_total": "DID_ENABLED",
    "agentidp_oidc_tokens_issued_total": "OIDC_ENABLED",
    "agentidp_delegation_chains_created_total": "DELEGATION_ENABLED",
}


def family_name(metric: str, kind: str) -> str:
    """The parser names a counter's family without `_total`."""
    return metric.removesuffix("_total") if kind == "counter" else metric


def parse(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_names(family: Any) -> set[str]:
    names: set[str] = set()
    for sample in family.samples:
        names |= set(sample.labels) - {"le"}
    return names


def sample_value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    total = 0.0
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            total += s.value
    return total


def assert_runbook_metrics(families: dict[str, Any]) -> None:
    missing, wrong = [], []
    for metric, (kind, labels) in RUNBOOK_METRICS.items():
        if metric in NOT_YET_EXPORTED or metric in PLUGIN_METRICS:
            continue  # plugin metrics: test_plugin_metric_is_exported_as_the_runbook_says
        family = families.get(family_name(metric, kind))
        if family is None:
            missing.append(metric)
            continue
        if family.type != kind:
            wrong.append(f"{metric}: type {family.type}, runbook says {kind}")
        if not family.samples or label_names(family) != set(labels):
            wrong.append(f"{metric}: labels {sorted(label_names(family))}, runbook {labels}")
    assert not missing, f"runbook metrics missing from /metrics: {missing}"
    assert not wrong, wrong


def test_allowances_are_runbook_metrics():
    assert set(NOT_YET_EXPORTED) <= set(RUNBOOK_METRICS)
    assert set(PLUGIN_METRICS) <= set(RUNBOOK_METRICS)
    assert not set(PLUGIN_METRICS) & set(NOT_YET_EXPORTED)


@pytest.mark.parametrize("metric", sorted(PLUGIN_METRICS))
async def test_plugin_metric_is_exported_as_the_runbook_says(metric, tmp_path):
    """Each plugin's own tests drive its counter; here: the name, type and labels."""
    kind, labels = RUNBOOK_METRICS[metric]
    settings = load_settings(
        env="test",
        overrides={"DATA_DIR": str(tmp_path), PLUGIN_METRICS[metric]: True},
        environ={},
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        text = await (await test_app.test_client().get("/metrics")).get_data(as_text=True)
    family = parse(text).get(family_name(metric, kind))
    assert family is not None, f"{metric} missing with {PLUGIN_METRICS[metric]}"
    assert family.type == kind
    assert label_names(family) <= set(labels)


# --- in process, PostgreSQL + Redis: every kernel metric after real traffic ------------


@pytest.fixture
def agentidp_backend() -> str:
    return "postgres"  # the Redis command histogram needs a real Redis


@pytest.fixture
def agentidp_overrides() -> dict[str, Any]:
    return {"RATE_LIMIT_MAX": 6, "TIER_FREE_DAILY_CALLS": 4}


async def _until_429(client: Any, path: str, headers: dict[str, str], code: str) -> None:
    for _ in range(20):
        response = await client.get(path, headers=headers)
        if response.status_code == 429:
            assert (await response.get_json())["code"] == code
            return
        assert response.status_code == 200, await response.get_json()
    raise AssertionError(f"no 429 {code} within 20 requests")


async def test_every_runbook_metric_after_real_traffic(agentidp_client, agentidp_idp):
    client = agentidp_client
    # A free-tier org: register an agent, read it back, run into the tier limit.
    free = await make_org(agentidp_idp, "Free org", "free")
    headers = await admin_headers(client, free)
    response = await client.post(
        "/api/v1/agents",
        json={"name": "worker", "deployment_env": "staging", "scopes": ["read"]},
        headers=headers,
    )
    assert response.status_code == 201, await response.get_json()
    agent_id = (await response.get_json())["agent_id"]
    await _until_429(client, f"/api/v1/agents/{agent_id}", headers, "tier_limit_exceeded")
    # An unlimited org: run into the per-client rate limit instead.
    big = await make_org(agentidp_idp, "Big org", "enterprise")
    big_headers = await admin_headers(client, big)
    await _until_429(client, "/api/v1/agents", big_headers, "RATE_LIMIT_EXCEEDED")

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = await response.get_data(as_text=True)
    families = parse(text)
    assert_runbook_metrics(families)

    # route is the pattern, never the raw path
    assert (
        sample_value(
            families,
            "agentidp_http_requests",
            "agentidp_http_requests_total",
            route="/api/v1/agents/{agent_id}",
            method="GET",
        )
        >= 1
    )
    assert agent_id not in text
    assert sample_value(
        families,
        "agentidp_agents_registered",
        "agentidp_agents_registered_total",
        deployment_env="staging",
    ) == pytest.approx(1)
    assert (
        sample_value(
            families,
            "agentidp_billing_limit_rejections",
            "agentidp_billing_limit_rejections_total",
            org_id=free["org_id"],
        )
        >= 1
    )
    assert sample_value(families, "agentidp_rate_limit_hits", "agentidp_rate_limit_hits_total") >= 1
    assert (
        sample_value(
            families,
            "agentidp_redis_command_duration_seconds",
            "agentidp_redis_command_duration_seconds_count",
        )
        > 0
    )
    for name in ("agentidp_db_pool_active_connections", "agentidp_db_pool_waiting_requests"):
        assert families[name].samples[0].value >= 0


async def test_openmetrics_when_the_scraper_asks(agentidp_client):
    await agentidp_client.get("/health")
    response = await agentidp_client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    text = await response.get_data(as_text=True)
    assert text.rstrip().endswith("# EOF")
    assert "agentidp_http_requests_total{" in text


async def test_metrics_needs_no_authentication(agentidp_client):
    response = await agentidp_client.get("/metrics")
    assert response.status_code == 200


def test_metrics_port_setting():
    settings = load_settings(env="test", environ={"AGENTIDP_METRICS_PORT": "9100"})
    from agentidp_server.app import build_idp
    from agentidp_server.settings import validate

    idp = build_idp(settings)
    assert idp.settings.METRICS_PORT == 9100
    assert metrics_bind(idp.settings) == "0.0.0.0:9100"
    bad = load_settings(env="test", environ={"AGENTIDP_METRICS_PORT": "70000"})
    from agentidp_server.server.metrics import register_settings

    assert any("METRICS_PORT" in p for p in validate(bad, register_settings()))
    same = load_settings(env="test", overrides={"METRICS_PORT": 3000, "PORT": 3000}, environ={})
    assert metrics_bind(same) is None  # the main port already serves it


# --- real `agentidp serve` processes ------------------------------------------------


async def test_separate_metrics_port(tmp_path):
    metrics_port = free_port()
    env = base_env(
        AGENTIDP_ENV="development",
        AGENTIDP_DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path}/agentidp.db",
        AGENTIDP_METRICS_PORT=str(metrics_port),
    )
    server = Server(tmp_path, 1, env)
    try:
        server.wait_until_listening()
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{server.url}/health")).status_code == 200
            assert (await client.get(f"{server.url}/metrics")).status_code == 404
            internal = f"http://127.0.0.1:{metrics_port}"
            scrape = await client.get(f"{internal}/metrics")
            assert scrape.status_code == 200
            assert 'route="/health"' in scrape.text
            assert (await client.get(f"{internal}/health")).status_code == 404
        server.process.send_signal(signal.SIGTERM)
        assert server.wait() == 0
    finally:
        server.close()


REQUESTS = 100
SCRAPES = 10
HEALTH = {"method": "GET", "route": "/health", "status_code": "200"}


def _stale_counter_file(directory: Path) -> None:
    """A previous run's file with a /health count: wiping at start must drop it."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    stale = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key(
        "agentidp_http_requests",
        "agentidp_http_requests_total",
        list(HEALTH),
        list(HEALTH.values()),
        "HTTP requests",
    )
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def _per_worker_health_counts(directory: Path) -> dict[str, float]:
    from prometheus_client.multiprocess import MultiProcessCollector

    counts: dict[str, float] = {}
    for path in sorted(directory.glob("counter_*.db")):
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)], accumulate=False):
            for sample in family.samples:
                if sample.name == "agentidp_http_requests_total" and all(
                    sample.labels.get(k) == v for k, v in HEALTH.items()
                ):
                    total += sample.value
        counts[path.name] = total
    return counts


async def test_two_workers_count_every_request_in_every_scrape(serve, tmp_path, monkeypatch):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    _stale_counter_file(directory)
    # `serve` builds the environment from os.environ: the workers inherit this directory.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    server = serve(2)
    server.wait_until_listening()
    assert not (directory / "counter_999999.db").exists(), "stale files are wiped at start"

    # Fresh connections, many at once: the kernel hands them to both workers.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
        for batch in range(REQUESTS // 20):
            responses = await asyncio.gather(*(client.get("/health") for _ in range(20)))
            assert [r.status_code for r in responses] == [200] * 20, batch
        seen = []
        for _ in range(SCRAPES):
            families = parse((await client.get("/metrics")).text)
            seen.append(
                sample_value(
                    families, "agentidp_http_requests", "agentidp_http_requests_total", **HEALTH
                )
            )
            assert_runbook_metrics_of_a_fresh_server(families)
    assert seen == [REQUESTS] * SCRAPES

    per_worker = {name: n for name, n in _per_worker_health_counts(directory).items() if n}
    assert sum(per_worker.values()) == REQUESTS
    assert len(per_worker) == 2, f"both workers must have served: {per_worker}"

    server.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait) == 0
    # mark_process_dead: no live gauge of a dead worker is left behind
    assert not glob.glob(str(directory / "gauge_live*_*.db")), os.listdir(directory)


def assert_runbook_metrics_of_a_fresh_server(families: dict[str, Any]) -> None:
    """Unlabelled kernel metrics exist in multiprocess mode from the first scrape."""
    for name in (
        "agentidp_db_pool_active_connections",
        "agentidp_db_pool_waiting_requests",
        "agentidp_credentials_expiring_soon_total",
    ):
        assert name in families, name
        assert families[name].type == "gauge"
        assert len(families[name].samples) == 1, families[name].samples  # aggregated, no pid


def test_the_supervisor_cleans_up_its_own_directory(serve, tmp_path, monkeypatch):
    """Without PROMETHEUS_MULTIPROC_DIR the supervisor uses, then removes, a temporary one."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    server = serve(2)
    server.wait_until_listening()
    assert len(list(tmp_path.glob("agentidp-metrics-*"))) == 1
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert 'agentidp_http_requests_total{method="GET",route="/health"' in response.text
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not list(tmp_path.glob("agentidp-metrics-*"))


_FORKED_COUNTS = """
import os, sys
from agentidp_server.server import metrics  # installs the pid-at-fork value class
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client import values

# The value class asks our pid function, not os.getpid (the point of the change).
check = values.ValueClass._MmapedValue__check_for_pid_change
asks = [c.cell_contents for c in check.__closure__ if callable(c.cell_contents)]
assert [f.__qualname__ for f in asks] == ["_pid_known_at_fork.<locals>.<lambda>"], asks

counter = Counter("forked", "counts", registry=CollectorRegistry())
counter.inc()
child = os.fork()
if child == 0:
    counter.inc(5)  # the child's own file, starting from zero
    os._exit(0)
os.waitpid(child, 0)
counter.inc()
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(registry.get_sample_value("forked_total"))
print(sorted(n for n in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
print(os.getpid(), child)
"""


def test_multiprocess_values_follow_a_fork(tmp_path):
    """Workers skip prometheus_client's getpid() per update; a fork must still get its own file."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", _FORKED_COUNTS], env=env, capture_output=True, text=True, check=True
    )
    total, files, pids = result.stdout.strip().splitlines()
    parent, child = pids.split()
    assert float(total) == 7.0
    assert files == str(sorted([f"counter_{parent}.db", f"counter_{child}.db"]))
