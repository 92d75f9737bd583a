"""`/api/v1/agents/{agent_id}/credentials`: issue, list and revoke credentials."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify
from quart_schema import document_response, validate_request

from agentidp_server.api.agents import agent_or_404
from agentidp_server.api.auth import ApiError, principal_actor, require_scope
from agentidp_server.api.models import CreatedCredential, CredentialCreate, CredentialList
from agentidp_server.directory import credentials
from agentidp_server.idp import current_idp
from agentidp_server.server.openapi import document_empty, document_errors

blueprint = Blueprint("credentials", __name__)


@blueprint.post("/api/v1/agents/<agent_id>/credentials")
@require_scope("credentials:write")
@validate_request(CredentialCreate)
@document_response(CreatedCredential, 201)
@document_errors(409)
async def create(agent_id: str, data: CredentialCreate) -> tuple[Response, int]:
    """Issue a client secret (shown once) or register the agent's public key."""
    idp = current_idp()
    agent = await agent_or_404(agent_id)
    if agent["status"] != "active":
        raise ApiError(409, "CONFLICT", f"the agent is {agent['status']}")
    expires_at = int(data.expires_at.timestamp() * 1000) if data.expires_at else None
    try:
        async with idp.db.transaction() as conn:
            if data.type == "client_secret":
                if data.jwk is not None:
                    raise credentials.CredentialError("a client_secret credential takes no jwk")
                created = await credentials.create_secret(
                    conn, agent, idp.settings.CREDENTIAL_PEPPER, expires_at
                )
            else:
                created = await credentials.create_key(conn, agent, data.jwk, expires_at)
            event = await idp.audit.append(
                conn,
                org_id=agent["org_id"],
                action="credential.created",
                actor=principal_actor(),
                target_type="credential",
                target_id=created["credential_id"],
                details={
                    "agent_id": agent["agent_id"],
                    "type": data.type,
                    "expires_at": created["expires_at"],
                },
            )
    except credentials.CredentialError as error:
        raise ApiError(400, "VALIDATION_ERROR", str(error)) from None
    idp.audit.published(event)
    response = jsonify(created)
    response.headers["Cache-Control"] = "no-store"  # the secret is shown once
    return response, 201


@blueprint.get("/api/v1/agents/<agent_id>/credentials")
@require_scope("credentials:read")
@document_response(CredentialList)
async def list_(agent_id: str) -> Response:
    """List an agent's credentials, revoked ones included."""
    agent = await agent_or_404(agent_id)
    rows = await credentials.list_for_agent(current_idp().db, agent["agent_id"])
    return jsonify(data=[credentials.public_view(r) for r in rows])


@blueprint.delete("/api/v1/agents/<agent_id>/credentials/<credential_id>")
@require_scope("credentials:write")
@document_empty(204, "Revoked")
async def revoke(agent_id: str, credential_id: str) -> Response:
    """Revoke a credential; the tokens it obtained are inactive from now on."""
    idp = current_idp()
    agent = await agent_or_404(agent_id)
    async with idp.db.transaction() as conn:
        if not await credentials.revoke(conn, agent["agent_id"], credential_id):
            raise ApiError(404, "NOT_FOUND", "credential not found or already revoked")
        event = await idp.audit.append(
            conn,
            org_id=agent["org_id"],
            action="credential.revoked",
            actor=principal_actor(),
            target_type="credential",
            target_id=credential_id,
            details={"agent_id": agent["agent_id"]},
        )
    idp.audit.published(event)
    await idp.settle_client_changes()
    return Response(status=204)
