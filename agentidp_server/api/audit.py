"""`/api/v1/audit`: an organisation's audit events, and verification of its chain."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_response

from agentidp_server.api.auth import ApiError, principal_org, require_scope
from agentidp_server.api.models import AuditPage, AuditQuery, ChainReport
from agentidp_server.audit.log import public_view, verify_chain
from agentidp_server.idp import current_idp
from agentidp_server.util.ids import parse_iso

blueprint = Blueprint("audit", __name__)


def _time(name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", f"{name} must be an RFC 3339 time") from None


# seq is a BIGINT: a larger cursor would fail in the driver, not answer 400.
_MAX_SEQ = 2**63 - 1


def _cursor(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 19) or int(value) > _MAX_SEQ:
        raise ApiError(400, "VALIDATION_ERROR", "cursor must be the next_cursor of a previous page")
    return int(value)


@blueprint.get("/api/v1/audit")
@require_scope("audit:read")
@document_querystring(AuditQuery)
@document_response(AuditPage)
async def list_events() -> Response:
    """Events in chain order; filter by action, agent and time range; cursor = last seq."""
    args = request.args
    try:
        limit = int(args.get("limit", "100"))
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", "limit must be an integer") from None
    after = _cursor(args.get("cursor", "0"))
    if not 1 <= limit <= 500:
        raise ApiError(400, "VALIDATION_ERROR", "limit must be between 1 and 500")
    where, params = ["org_id = $1", "seq > $2"], [principal_org(), after]
    filters: list[tuple[str, Any]] = [
        ("action = ${}", args.get("action")),
        ("(actor_agent_id = ${0} OR target_id = ${0})", args.get("agent_id")),
        ("occurred_at >= ${}", _time("since")),
        ("occurred_at < ${}", _time("until")),
    ]
    for clause, value in filters:
        if value is not None:
            params.append(value)
            where.append(clause.format(len(params)))
    params.append(limit + 1)
    rows = await current_idp().db.fetch(
        f"SELECT * FROM audit_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(params)}",
        *params,
    )
    page = rows[:limit]
    cursor = str(page[-1]["seq"]) if len(rows) > limit else None
    return jsonify(data=[public_view(r) for r in page], next_cursor=cursor)


@blueprint.get("/api/v1/audit/verify")
@require_scope("audit:read")
@document_response(ChainReport)
async def verify() -> Response:
    """Recompute the caller's chain; name the first broken sequence number and why."""
    idp = current_idp()
    report = await verify_chain(idp.db, principal_org(), idp.keys)
    return jsonify(report.as_dict())
