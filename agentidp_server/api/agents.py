"""`/api/v1/agents`: register, list, read, change and decommission agents."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify, request
from quart_schema import document_querystring, document_response, validate_request

from agentidp_server.api.auth import ApiError, principal_actor, principal_org, require_scope
from agentidp_server.api.models import Agent, AgentCreate, AgentListQuery, AgentPage, AgentUpdate
from agentidp_server.directory import agents
from agentidp_server.idp import current_idp
from agentidp_server.server.openapi import document_empty, document_errors

blueprint = Blueprint("agents", __name__)


def _bad(error: ValueError) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", str(error))


async def agent_or_404(agent_id: str) -> dict[str, Any]:
    agent = await agents.get_agent(current_idp().db, principal_org(), agent_id)
    if agent is None:
        raise ApiError(404, "NOT_FOUND", "agent not found")
    return agent


@blueprint.post("/api/v1/agents")
@require_scope("agents:write")
@validate_request(AgentCreate)
@document_response(Agent, 201)
async def create(data: AgentCreate) -> tuple[Response, int]:
    """Register an agent in the caller's organisation."""
    idp = current_idp()
    try:
        async with idp.db.transaction() as conn:
            agent = await agents.create_agent(conn, principal_org(), data.model_dump())
            event = await idp.audit.append(
                conn,
                org_id=agent["org_id"],
                action="agent.created",
                actor=principal_actor(),
                target_type="agent",
                target_id=agent["agent_id"],
                details={
                    "name": agent["name"],
                    "deployment_env": agent["deployment_env"],
                    "scopes": agent["scopes"],
                },
            )
    except agents.AgentError as error:
        raise _bad(error) from None
    idp.audit.published(event)
    counter = idp.state["core"].get("agents_registered")
    if counter is not None:
        counter.labels(agent["deployment_env"]).inc()
    return jsonify(agents.public_view(agent)), 201


@blueprint.get("/api/v1/agents")
@require_scope("agents:read")
@document_querystring(AgentListQuery)
@document_response(AgentPage)
async def list_() -> Response:
    """List the organisation's agents, a page at a time."""
    args = request.args
    try:
        limit = int(args.get("limit", "50"))
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", "limit must be an integer") from None
    if not 1 <= limit <= 200:
        raise ApiError(400, "VALIDATION_ERROR", "limit must be between 1 and 200")
    try:
        page, cursor = await agents.list_agents(
            current_idp().db,
            principal_org(),
            status=args.get("status"),
            deployment_env=args.get("deployment_env"),
            cursor=args.get("cursor"),
            limit=limit,
        )
    except agents.AgentError as error:
        raise _bad(error) from None
    return jsonify(data=[agents.public_view(a) for a in page], next_cursor=cursor)


@blueprint.get("/api/v1/agents/<agent_id>")
@require_scope("agents:read")
@document_response(Agent)
async def read(agent_id: str) -> Response:
    """Read one agent of the caller's organisation."""
    return jsonify(agents.public_view(await agent_or_404(agent_id)))


@blueprint.patch("/api/v1/agents/<agent_id>")
@require_scope("agents:write")
@validate_request(AgentUpdate)
@document_response(Agent)
@document_errors(409)
async def update(agent_id: str, data: AgentUpdate) -> Response:
    """Change an agent; `status: suspended` makes its tokens inactive at once."""
    idp = current_idp()
    patch = data.model_dump(exclude_unset=True)
    if any(v is None for v in patch.values()):
        raise ApiError(400, "VALIDATION_ERROR", "fields may not be set to null")
    try:
        async with idp.db.transaction() as conn:
            agent = await agents.update_agent(conn, principal_org(), agent_id, patch)
            event = None
            if agent is not None:
                action = {"suspended": "agent.suspended", "active": "agent.changed"}.get(
                    str(patch.get("status")), "agent.changed"
                )
                event = await idp.audit.append(
                    conn,
                    org_id=agent["org_id"],
                    action=action,
                    actor=principal_actor(),
                    target_type="agent",
                    target_id=agent_id,
                    details={"fields": sorted(patch)},
                )
    except agents.AgentError as error:
        raise ApiError(
            409 if "decommissioned" in str(error) else 400,
            "CONFLICT" if "decommissioned" in str(error) else "VALIDATION_ERROR",
            str(error),
        ) from None
    if agent is None or event is None:
        raise ApiError(404, "NOT_FOUND", "agent not found")
    idp.audit.published(event)
    await idp.settle_client_changes()
    return jsonify(agents.public_view(agent))


@blueprint.delete("/api/v1/agents/<agent_id>")
@require_scope("agents:write")
@document_empty(204, "Decommissioned")
async def delete(agent_id: str) -> Response:
    """Decommission an agent: its credentials and tokens stop working at once."""
    idp = current_idp()
    await agent_or_404(agent_id)
    async with idp.db.transaction() as conn:
        if not await agents.decommission_agent(conn, principal_org(), agent_id):
            raise ApiError(404, "NOT_FOUND", "agent not found")
        event = await idp.audit.append(
            conn,
            org_id=principal_org(),
            action="agent.deleted",
            actor=principal_actor(),
            target_type="agent",
            target_id=agent_id,
        )
    idp.audit.published(event)
    await idp.settle_client_changes()
    return Response(status=204)
