"""HTTP: the did:web documents (public) and the management API's view of an agent's DID."""

from __future__ import annotations

import json
from typing import Any

from agentidp_server import (
    ApiError,
    IdP,
    current_idp,
    document_errors,
    document_raw_response,
    principal_org,
    require_scope,
)
from quart import Blueprint, Response

from agentidp_did import documents
from agentidp_did.identifiers import server_document_path
from agentidp_did.state import count_document


def _response(body: dict[str, Any], status: int, content_type: str) -> Response:
    response = Response(json.dumps(body), status=status, content_type=content_type)
    max_age = int(current_idp().settings.DID_CACHE_MAX_AGE)
    # Resolvers may cache; with no max-age a suspension is seen on the next resolution.
    response.headers["Cache-Control"] = f"max-age={max_age}" if max_age > 0 else "no-cache"
    return response


_OBJECT: dict[str, Any] = {"type": "object"}


@document_raw_response(200, documents.DID_LD_JSON, _OBJECT, "The DID document")
async def server_did() -> Response:
    """The server's did:web document (did:web spec §3.2.1: `/.well-known/did.json`)."""
    idp = current_idp()
    document = documents.server_document(idp.issuer, idp.keys.jwks())
    count_document(idp)
    return _response(document, 200, documents.DID_LD_JSON)


@document_raw_response(200, documents.DID_LD_JSON, _OBJECT, "The DID document")
@document_raw_response(410, documents.RESOLUTION_JSON, _OBJECT, "Deactivated: a resolution result")
@document_errors(404)
async def agent_did_document(agent_id: str) -> Response:
    """An agent's did:web document (did:web spec §3.2.1: `<path>/did.json`).

    A deactivated DID (suspended or decommissioned agent) answers 410 Gone with a
    DID Resolution Result whose `didDocumentMetadata.deactivated` is true and
    whose document holds no keys (DID Resolution, HTTP(S) binding: deactivated
    is 410). did:web spec §3.2.4 deactivates by no longer serving the document,
    so plain did:web resolvers treat it as unresolvable, which is the safe reading.
    """
    idp = current_idp()
    agent = await idp.agents.get(agent_id)
    if agent is None or agent.is_admin:
        raise ApiError(404, "NOT_FOUND", "no DID for this agent")
    count_document(idp)
    if documents.is_deactivated(agent):
        result = documents.resolution_result(documents.tombstone(idp.issuer, agent), agent)
        return _response(result, 410, documents.RESOLUTION_JSON)
    keys = await idp.agents.public_keys(agent_id)
    document = documents.agent_document(idp.issuer, agent, keys)
    return _response(document, 200, documents.DID_LD_JSON)


@require_scope("agents:read")
@document_raw_response(200, "application/json", _OBJECT, "A DID Resolution Result")
async def management_did(agent_id: str) -> Response:
    """The agent's DID Resolution Result for its organisation, deactivated or not."""
    idp = current_idp()
    agent = await idp.agents.get_in_org(principal_org(), agent_id)
    if agent is None:
        raise ApiError(404, "NOT_FOUND", "agent not found")
    keys = await idp.agents.public_keys(agent_id)
    count_document(idp)
    result = documents.resolution_result(documents.agent_document(idp.issuer, agent, keys), agent)
    return Response(json.dumps(result), status=200, content_type="application/json")


def blueprint(idp: IdP) -> Blueprint:
    """A blueprint per app: where the server's document lives depends on its ISSUER."""
    bp = Blueprint("did", __name__)
    bp.add_url_rule(server_document_path(idp.issuer), view_func=server_did, methods=["GET"])
    bp.add_url_rule("/agents/<agent_id>/did.json", view_func=agent_did_document, methods=["GET"])
    bp.add_url_rule("/api/v1/agents/<agent_id>/did", view_func=management_did, methods=["GET"])
    return bp
