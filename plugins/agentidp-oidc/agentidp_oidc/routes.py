"""The plugin's routes: provider metadata and userinfo."""

from __future__ import annotations

import json

from agentidp_server import current_idp
from quart import Blueprint, Response

from agentidp_oidc.discovery import OPENID_CONFIGURATION_PATH, USERINFO_PATH, openid_configuration
from agentidp_oidc.userinfo import BearerError, userinfo_claims

blueprint = Blueprint("oidc", __name__)


@blueprint.get(OPENID_CONFIGURATION_PATH)
async def configuration() -> Response:
    """OpenID Provider metadata (OpenID Connect Discovery 1.0 §4.2)."""
    document = await openid_configuration(current_idp())
    response = Response(json.dumps(document), content_type="application/json")
    # As the RFC 8414 document: the same fields, cached as long.
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.route(USERINFO_PATH, methods=["GET", "POST"])
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
