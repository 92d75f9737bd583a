"""Generate the provisioned Grafana dashboard (grafana/dashboards/agentidp.json).

The JSON is committed; tests/test_deploy.py checks it equals this script's
output and that every metric its queries use is one the app exports (or a
documented "arrives with ..." allowance). Edit this file, then run:

    python deploy/monitoring/generate_dashboard.py          # rewrite the JSON
    python deploy/monitoring/generate_dashboard.py --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "agentidp.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
WINDOW = "$__rate_interval"


def _target(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": "A"}


def timeseries(title: str, targets: list[tuple[str, str]], unit: str = "short") -> dict[str, Any]:
    panel_targets = [_target(expr, legend) for expr, legend in targets]
    for i, target in enumerate(panel_targets):
        target["refId"] = chr(ord("A") + i)
    return {
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": panel_targets,
    }


def stat(
    title: str,
    expr: str,
    unit: str = "short",
    thresholds: list[tuple[float | None, str]] | None = None,
) -> dict[str, Any]:
    steps = [{"color": color, "value": value} for value, color in thresholds or []] or [
        {"color": "green", "value": None}
    ]
    return {
        "type": "stat",
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [_target(expr, title)],
    }


def p95(metric: str, by: str) -> str:
    return f"histogram_quantile(0.95, sum by (le, {by}) (rate({metric}_bucket[{WINDOW}])))"


# (row title, panels). Each panel is 8 wide; three to a line.
KERNEL_ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "HTTP",
        [
            timeseries(
                "Request rate by route",
                [(f"sum by (route) (rate(agentidp_http_requests_total[{WINDOW}]))", "{{route}}")],
                "reqps",
            ),
            timeseries(
                "Error rate (5xx) by route",
                [
                    (
                        "sum by (route) (rate(agentidp_http_requests_total"
                        f'{{status_code=~"5.."}}[{WINDOW}]))'
                        " / sum by (route) (rate(agentidp_http_requests_total"
                        f"[{WINDOW}]))",
                        "{{route}}",
                    )
                ],
                "percentunit",
            ),
            timeseries(
                "Latency p95 by route",
                [(p95("agentidp_http_request_duration_seconds", "route"), "{{route}}")],
                "s",
            ),
        ],
    ),
    (
        "Tokens and limits",
        [
            timeseries(
                "Tokens issued by scope",
                [(f"sum by (scope) (rate(agentidp_tokens_issued_total[{WINDOW}]))", "{{scope}}")],
                "ops",
            ),
            timeseries(
                "Rate-limit rejections",
                [(f"sum(rate(agentidp_rate_limit_hits_total[{WINDOW}]))", "rejections")],
                "reqps",
            ),
            timeseries(
                "Tier-limit rejections by limit type",
                [
                    (
                        "sum by (limit_type) (rate(agentidp_billing_limit_rejections_total"
                        f"[{WINDOW}]))",
                        "{{limit_type}}",
                    )
                ],
                "reqps",
            ),
            timeseries(
                "API calls by tier",
                [(f"sum by (tier) (rate(agentidp_tenant_api_calls_total[{WINDOW}]))", "{{tier}}")],
                "reqps",
            ),
            timeseries(
                "Agents registered by environment",
                [
                    (
                        "sum by (deployment_env) (increase(agentidp_agents_registered_total"
                        f"[{WINDOW}]))",
                        "{{deployment_env}}",
                    )
                ],
            ),
            timeseries(
                "Limits failing open (kv unavailable)",
                [(f"sum(rate(agentidp_rate_limit_fail_open_total[{WINDOW}]))", "fail-open")],
                "reqps",
            ),
        ],
    ),
    (
        "Storage",
        [
            timeseries(
                "PostgreSQL query p95 by operation",
                [(p95("agentidp_db_query_duration_seconds", "operation"), "{{operation}}")],
                "s",
            ),
            timeseries(
                "Redis command p95 by command",
                [(p95("agentidp_redis_command_duration_seconds", "command"), "{{command}}")],
                "s",
            ),
            timeseries(
                "DB pool saturation",
                [
                    ("sum(agentidp_db_pool_active_connections)", "active connections"),
                    ("sum(agentidp_db_pool_waiting_requests)", "waiting requests"),
                ],
            ),
        ],
    ),
    (
        "Security and lifecycle",
        [
            stat(
                "Audit chain integrity",
                "min(agentidp_audit_chain_integrity)",
                thresholds=[(None, "red"), (1, "green")],
            ),
            stat(
                "Credentials expiring within 7 days",
                "max(agentidp_credentials_expiring_soon_total)",
                thresholds=[(None, "green"), (1, "orange")],
            ),
            # arrives with the webhooks feature
            timeseries(
                "Webhook dead letters by event type",
                [
                    (
                        "sum by (event_type) (increase(agentidp_webhook_dead_letters_total"
                        f"[{WINDOW}]))",
                        "{{event_type}}",
                    )
                ],
            ),
        ],
    ),
]

# One row per plugin, with the runbook's metric of each; every one arrives with its plugin.
PLUGIN_ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    (
        "Plugin: DID",
        [
            timeseries(
                "DID documents generated",
                [(f"sum(rate(agentidp_did_documents_generated_total[{WINDOW}]))", "documents")],
                "ops",
            )
        ],
    ),
    (
        "Plugin: OIDC",
        [
            timeseries(
                "OIDC ID tokens issued",
                [(f"sum(rate(agentidp_oidc_tokens_issued_total[{WINDOW}]))", "ID tokens")],
                "ops",
            )
        ],
    ),
    (
        "Plugin: Federation",
        [
            timeseries(
                "Federation partner events by type",
                [
                    (
                        f"sum by (event_type) (rate(agentidp_federation_events_total[{WINDOW}]))",
                        "{{event_type}}",
                    )
                ],
                "ops",
            )
        ],
    ),
    (
        "Plugin: A2A delegation",
        [
            timeseries(
                "Delegation chains created",
                [(f"sum(rate(agentidp_delegation_chains_created_total[{WINDOW}]))", "chains")],
                "ops",
            )
        ],
    ),
    (
        "Plugin: Compliance",
        [
            timeseries(
                "Compliance reports generated",
                [
                    (
                        f"sum(increase(agentidp_compliance_reports_generated_total[{WINDOW}]))",
                        "reports",
                    )
                ],
            )
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for title, row_panels in KERNEL_ROWS + PLUGIN_ROWS:
        panels.append(
            {
                "type": "row",
                "title": title,
                "id": next_id,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for i, panel in enumerate(row_panels):
            if i and i % 3 == 0:
                y += 8
            panels.append(
                {"id": next_id, "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y}, **panel}
            )
            next_id += 1
        y += 8
    return {
        "uid": "agentidp",
        "title": "SentryAgent.ai — AgentIdP",
        "tags": ["agentidp"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT} is stale: run {Path(__file__).name}\n")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
