"""The operator API: changes only the server's operator may make (tiers).

Authenticated by OPERATOR_TOKEN (compared in constant time); with no token
configured the API does not exist (404).
"""

from __future__ import annotations

import hmac
from typing import Literal

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, Response, abort, jsonify, request
from quart_schema import document_response, security_scheme, validate_request

from agentidp_server.api.models import TierChanged
from agentidp_server.directory import tenants
from agentidp_server.idp import current_idp
from agentidp_server.server.http import ApiError
from agentidp_server.server.openapi import document_errors

blueprint = Blueprint("operator", __name__)


class TierChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: Literal["free", "pro", "enterprise"]


@blueprint.before_request
async def operator_only() -> None:
    expected = str(current_idp().settings.OPERATOR_TOKEN or "")
    if not expected:
        abort(404)
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(
            401, "UNAUTHORIZED", "operator token required", {"WWW-Authenticate": "Bearer"}
        )


@blueprint.put("/api/v1/operator/orgs/<org_id>/tier")
@validate_request(TierChange)
@document_response(TierChanged)
@security_scheme([{"operator": []}])
@document_errors(401, 404)
async def change_tier(org_id: str, data: TierChange) -> Response:
    """Move an organisation to another tier; applies to its next request."""
    idp = current_idp()
    async with idp.db.transaction() as conn:
        changed = await tenants.change_tier(idp, conn, org_id, data.tier, "operator-api")
    if not changed:
        raise ApiError(404, "NOT_FOUND", "organisation not found")
    await idp.settle_client_changes()
    return jsonify(org_id=org_id, tier=data.tier)
