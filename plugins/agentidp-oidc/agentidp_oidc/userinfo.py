"""The UserInfo endpoint (OIDC Core §5.3), an RFC 6750 protected resource."""

from __future__ import annotations

import json
import re
from typing import Any

from agentidp_server import IdP, InvalidToken
from quart import Response, request

from agentidp_oidc.claims import agent_claims
from agentidp_oidc.id_token import OPENID

REALM = "agentidp"
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# RFC 6750 §3: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
MAX_FORM_BYTES = 64 * 1024


class BearerError(Exception):
    """An RFC 6750 §3 answer: `error` None means no credentials were sent (§3.1)."""

    def __init__(self, status: int, error: str | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> Response:
        challenge = [f'realm="{REALM}"']
        body: dict[str, str] = {"error_description": self.description}
        if self.error is not None:
            challenge.append(f'error="{self.error}"')
            challenge.append(f'error_description="{UNSAFE.sub("", self.description)}"')
            body = {"error": self.error, **body}
        if self.error == "insufficient_scope":
            challenge.append(f'scope="{OPENID}"')
        response = Response(json.dumps(body), status=self.status, content_type="application/json")
        response.headers["WWW-Authenticate"] = "Bearer " + ", ".join(challenge)
        response.headers["Cache-Control"] = "no-store"
        return response


def invalid_request(description: str) -> BearerError:
    return BearerError(400, "invalid_request", description)


async def presented_token() -> str:
    """RFC 6750 §2.1 (header) or §2.2 (form body of a POST); exactly one of them."""
    if "access_token" in request.args:
        # §2.3 is optional and leaks tokens into logs and history: not offered.
        raise invalid_request("send the access token in the Authorization header")
    found: list[str] = []
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            found.append(value.strip())
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise invalid_request("request body is too large")
        form = await request.form
        values = form.getlist("access_token")
        if len(values) > 1:
            raise invalid_request("access_token is repeated")
        found.extend(values)
    if not found:
        raise BearerError(401, None, "a Bearer access token is required")
    if len(found) > 1:
        # §2: a client uses one method only.
        raise invalid_request("send the access token one way only")
    if not B64TOKEN.match(found[0]):
        raise invalid_request("the access token is malformed")
    return found[0]


async def userinfo_claims(idp: IdP) -> dict[str, Any]:
    """OIDC Core §5.3.2: the claims of the token's subject, `sub` always."""
    try:
        claims = await idp.tokens.verify(await presented_token())
    except InvalidToken as error:
        raise BearerError(401, "invalid_token", str(error)) from None
    # RFC 9068 §4: a token issued for another resource (RFC 8707) is not for us.
    aud = claims.get("aud")
    audiences = {a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)}
    if not audiences & {idp.issuer, idp.tokens.default_audience()}:
        raise BearerError(401, "invalid_token", "Token audience is not this server")
    if OPENID not in str(claims.get("scope", "")).split():
        raise BearerError(403, "insufficient_scope", f"the token lacks the {OPENID} scope")
    # The same per-client rate and daily tier limits as every protected route.
    await idp.quotas.admit(str(claims["client_id"]), str(claims["org_id"]))
    agent = await idp.agents.get_in_org(str(claims["org_id"]), str(claims["sub"]))
    if agent is None:
        # An admin client's token: a management credential, not an agent identity.
        raise BearerError(401, "invalid_token", "Token's subject is not an agent")
    return {"sub": claims["sub"], **await agent_claims(idp, agent, claims)}
