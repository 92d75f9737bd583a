"""`/api/v1/agents/{agent_id}/credentials`: issue, list and revoke credentials."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from agentidp_server import credentials
from agentidp_server.api.agents import agent_or_404
from agentidp_server.api.auth import ApiError, json_body, require_scope
from agentidp_server.idp import current_idp
from agentidp_server.ids import parse_iso

blueprint = Blueprint("credentials", __name__)


@blueprint.post("/api/v1/agents/<agent_id>/credentials")
@require_scope("credentials:write")
async def create(agent_id: str) -> tuple[Response, int]:
    idp = current_idp()
    agent = await agent_or_404(agent_id)
    if agent["status"] != "active":
        raise ApiError(409, "CONFLICT", f"the agent is {agent['status']}")
    data = await json_body()
    unknown = sorted(set(data) - {"type", "jwk", "expires_at"})
    if unknown:
        raise ApiError(400, "VALIDATION_ERROR", f"unknown field(s): {', '.join(unknown)}")
    expires_at = None
    if data.get("expires_at") is not None:
        try:
            expires_at = parse_iso(str(data["expires_at"]))
        except ValueError:
            raise ApiError(
                400, "VALIDATION_ERROR", "expires_at must be an RFC 3339 time with an offset"
            ) from None
    try:
        if data.get("type") == "client_secret":
            if "jwk" in data:
                raise credentials.CredentialError("a client_secret credential takes no jwk")
            created = await credentials.create_secret(
                idp.db, agent, idp.settings.CREDENTIAL_PEPPER, expires_at
            )
        elif data.get("type") == "private_key_jwt":
            created = await credentials.create_key(idp.db, agent, data.get("jwk"), expires_at)
        else:
            raise credentials.CredentialError("type must be client_secret or private_key_jwt")
    except credentials.CredentialError as error:
        raise ApiError(400, "VALIDATION_ERROR", str(error)) from None
    response = jsonify(created)
    response.headers["Cache-Control"] = "no-store"  # the secret is shown once
    return response, 201


@blueprint.get("/api/v1/agents/<agent_id>/credentials")
@require_scope("credentials:read")
async def list_(agent_id: str) -> Response:
    agent = await agent_or_404(agent_id)
    rows = await credentials.list_for_agent(current_idp().db, agent["agent_id"])
    return jsonify(data=[credentials.public_view(r) for r in rows])


@blueprint.delete("/api/v1/agents/<agent_id>/credentials/<credential_id>")
@require_scope("credentials:write")
async def revoke(agent_id: str, credential_id: str) -> Response:
    agent = await agent_or_404(agent_id)
    if not await credentials.revoke(current_idp().db, agent["agent_id"], credential_id):
        raise ApiError(404, "NOT_FOUND", "credential not found or already revoked")
    return Response(status=204)
