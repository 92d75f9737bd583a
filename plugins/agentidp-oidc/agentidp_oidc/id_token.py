"""The id_token returned beside an access token (OIDC Core §2, §3.1.3.6)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from agentidp_server import IdP, OAuthError

from agentidp_oidc.claims import agent_claims, subject_agent
from agentidp_oidc.state import count_id_token

OPENID = "openid"
CLIENT_CREDENTIALS = "client_credentials"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def at_hash(access_token: str, alg: str) -> str:
    """OIDC Core §3.1.3.6: the left half of the access token's hash, with the hash of
    the id_token's `alg` (SHA-256 for RS256/ES256; SHA-512 for EdDSA with Ed25519,
    per the Core errata and RFC 8032 §5.1)."""
    if alg == "EdDSA":
        digest = hashlib.sha512(access_token.encode("ascii")).digest()
    elif alg[2:] in ("256", "384", "512"):
        digest = hashlib.new(f"sha{alg[2:]}", access_token.encode("ascii")).digest()
    else:
        raise ValueError(f"no at_hash is defined for alg {alg}")
    return _b64(digest[: len(digest) // 2])


def _header_alg(token: str) -> str:
    part = token.split(".", 1)[0]
    header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return str(header["alg"])


def sign(idp: IdP, claims: dict[str, Any], access_token: str | None) -> str:
    """Sign with the current key; `at_hash` must use that key's alg, so a key that
    changed between reading its alg and signing (rotation) means signing again."""
    for _ in range(2):
        alg = idp.keys.signing_key().alg
        payload = dict(claims)
        if access_token is not None:
            payload["at_hash"] = at_hash(access_token, alg)
        token = idp.keys.sign(payload, typ="JWT")
        if _header_alg(token) == alg:
            return token
    raise RuntimeError("the signing key changed while signing an id_token")


def wants_id_token(context: Mapping[str, Any]) -> bool:
    """OIDC Core §3.1.2.1: an OpenID request names `openid` in `scope`; a request that
    leaves scope out gets no id_token even if `openid` was granted by default."""
    requested = str(context.get("params", {}).get("scope") or "").split()
    granted = str(context["claims"].get("scope", "")).split()
    return OPENID in requested and OPENID in granted


async def id_token_fields(idp: IdP, context: Mapping[str, Any]) -> dict[str, Any] | None:
    """`{"id_token": ...}` for an OpenID token request, else None."""
    if not wants_id_token(context):
        return None
    client_agent: Mapping[str, Any] | None = context["agent"]
    if client_agent is None:
        # A grant without client authentication: no client to be the id_token's audience.
        raise OAuthError("invalid_scope", "openid needs an authenticated client")
    access: Mapping[str, Any] = context["claims"]
    if client_agent.get("kind") == "admin":
        # Admin clients are management credentials, not agent identities.
        raise OAuthError("invalid_scope", "organisation admin clients have no OpenID identity")
    subject = await subject_agent(idp, client_agent, access)
    if subject is None:
        raise OAuthError("invalid_scope", "the token's subject has no OpenID identity")
    claims: dict[str, Any] = {
        "iss": idp.issuer,
        "sub": access["sub"],
        # OIDC Core §2: the audience is the client that asked (for a delegated token, the
        # actor); the access token's own `aud` is the resource it is for.
        "aud": str(client_agent["client_id"]),
        "iat": access["iat"],
        "exp": access["exp"],
    }
    if access["sub"] == client_agent.get("agent_id") and context.get("grant_type") == (
        CLIENT_CREDENTIALS
    ):
        # The subject authenticated in this very request (RFC 6749 §4.4.2). For a
        # delegated subject the server does not know when it last authenticated.
        claims["auth_time"] = access["iat"]
    nonce = context.get("params", {}).get("nonce")
    if nonce:
        # OIDC Core §3.1.2.1 / §3.1.3.7: passed through unmodified.
        claims["nonce"] = nonce
    claims.update(await agent_claims(idp, subject, access))
    token = sign(idp, claims, context.get("access_token"))
    count_id_token(idp)
    return {"id_token": token}
