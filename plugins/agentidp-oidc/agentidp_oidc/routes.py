"""The plugin's routes: provider metadata and userinfo."""

from __future__ import annotations

import json
from typing import Any

from agentidp_server import current_idp, document_raw_response
from quart import Blueprint, Response
from quart_schema import security_scheme

from agentidp_oidc.discovery import OPENID_CONFIGURATION_PATH, USERINFO_PATH, openid_configuration
from agentidp_oidc.userinfo import BearerError, userinfo_claims

blueprint = Blueprint("oidc", __name__)


_OBJECT: dict[str, Any] = {"type": "object"}
# RFC 6750 §3 bodies: `error` is absent when no credentials were sent (§3.1).
_BEARER_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    "required": ["error_description"],
}


@blueprint.get(OPENID_CONFIGURATION_PATH)
@document_raw_response(200, "application/json", _OBJECT, "OpenID Provider metadata")
async def configuration() -> Response:
    """OpenID Provider metadata (OpenID Connect Discovery 1.0 §4.2)."""
    document = await openid_configuration(current_idp())
    response = Response(json.dumps(document), content_type="application/json")
    # As the RFC 8414 document: the same fields, cached as long.
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.route(USERINFO_PATH, methods=["GET", "POST"])
@security_scheme([{"bearer": ["openid"]}])
@document_raw_response(200, "application/json", _OBJECT, "The agent's claims")
@document_raw_response(400, "application/json", _BEARER_ERROR, "Invalid request")
@document_raw_response(401, "application/json", _BEARER_ERROR, "Missing or invalid token")
@document_raw_response(403, "application/json", _BEARER_ERROR, "Insufficient scope")
async def userinfo() -> Response:
    """The claims of the access token's agent (OIDC Core §5.3); RFC 6750 errors."""
    try:
        claims = await userinfo_claims(current_idp())
    except BearerError as error:
        return error.response()
    response = Response(json.dumps(claims), content_type="application/json")
    # OIDC Core §5.3.2 answers with personal claims: never store them in a cache.
    response.headers["Cache-Control"] = "no-store"
    return response
