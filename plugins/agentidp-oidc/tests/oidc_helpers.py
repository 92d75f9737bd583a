"""Shared pieces of the OIDC plugin's tests: an OpenID agent, JWT decoding, PyJWT checks."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
from agentidp_server.testkit import admin_headers, make_agent, make_org

ISSUER = "https://idp.example.com"
ENABLED: dict[str, Any] = {"OIDC_ENABLED": True, "ISSUER": ISSUER}
TOKEN = "/api/v1/token"
USERINFO = "/api/v1/oidc/userinfo"
CONFIGURATION = "/.well-known/openid-configuration"
RFC8414 = "/.well-known/oauth-authorization-server"


def segment(token: str, index: int) -> dict[str, Any]:
    """A decoded (not verified) JOSE header (0) or payload (1)."""
    part = token.split(".")[index]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


async def openid_agent(
    client: Any, idp: Any, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, str]]:
    """An organisation and an agent allowed `openid`: (org, agent, credential, admin headers)."""
    org = await make_org(idp, name="Acme Robotics")
    headers = await admin_headers(client, org)
    data = {"scopes": ["openid", "read"], "owner": "team-robots", **fields}
    agent, credential = await make_agent(client, headers, **data)
    return org, agent, credential, headers


def verify_with_pyjwt(id_token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """An id_token checked by PyJWT (not the server's library) against the JWKS."""
    header = jwt.get_unverified_header(id_token)
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        id_token,
        key=key.key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    return claims
