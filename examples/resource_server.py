"""A resource server (an API that agents call) checking AgentIdP access tokens.

Two ways to check a token, and when to use which:

* **Locally, with the published keys** (`verify_locally`). The access token is
  a signed JWT (RFC 9068); the server's public keys are at `jwks_uri` (from
  `/.well-known/oauth-authorization-server`). Checking the signature, `typ`,
  `iss`, `aud` and `exp` needs no request per call, so it is fast and keeps
  working while AgentIdP is unreachable. The price: a token that was revoked,
  or whose agent was suspended, still verifies until it expires (at most
  `ACCESS_TOKEN_TTL`, 15 minutes by default), because nothing in the token
  changes when it is revoked.
* **By introspection** (`introspect`, RFC 7662). AgentIdP answers
  `{"active": false}` at once after a revocation or suspension. The price: one
  round trip per check, load on AgentIdP, a dependency on it being up, and
  the resource server needs its own credential (an agent of the same
  organisation: each organisation sees only its own tokens).

So `authorize` verifies every call locally and additionally introspects the
calls where acting on a revoked token would do harm (`revocation_sensitive`:
payments, deletions, granting access), and it fails closed there when
AgentIdP cannot be asked. The JWKS is cached and fetched again when a token
names a key id the cache does not have (AgentIdP publishes a new key before it
signs with it, so a rotation needs no restart).

Needs `httpx` and `joserfc`. Run with a token to check::

    AGENTIDP_URL=http://localhost:3000 CLIENT_ID=... CLIENT_SECRET=... \\
        python examples/resource_server.py "$ACCESS_TOKEN" read

CLIENT_ID/CLIENT_SECRET are the resource server's own credential, for
introspection. It prints the decision of a normal and of a revocation-sensitive
call as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ALGORITHMS = ["RS256", "ES256", "EdDSA"]  # what AgentIdP signs with (JWT_ALGORITHM)
CLOCK_SKEW = 30  # seconds of clock difference tolerated on exp/nbf
JWKS_MIN_REFRESH = 30  # seconds: an unknown kid refetches at most this often


class Unauthorized(Exception):
    """The token must not be accepted; the message says why (never the token itself)."""


class ResourceServer:
    def __init__(
        self,
        base_url: str,
        audience: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self._http = http or httpx.Client(timeout=5)
        metadata = self._http.get(f"{base_url}/.well-known/oauth-authorization-server")
        metadata.raise_for_status()
        self.metadata: dict[str, Any] = metadata.json()
        self.issuer: str = self.metadata["issuer"]
        # Tokens asked for without `resource` are for the issuer (DEFAULT_AUDIENCE).
        self.audience = audience or self.issuer
        self._credential = (client_id, client_secret) if client_id and client_secret else None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0

    def _key_set(self, kid: str | None) -> KeySet:
        known = self._keys is not None and any(k.kid == kid for k in self._keys.keys)
        stale = time.monotonic() - self._fetched_at > JWKS_MIN_REFRESH
        if self._keys is None or (not known and stale):
            response = self._http.get(self.metadata["jwks_uri"])
            response.raise_for_status()
            self._keys = KeySet.import_key_set(response.json())
            self._fetched_at = time.monotonic()
        return self._keys

    def verify_locally(self, token: str) -> dict[str, Any]:
        """The token's claims if its signature and claims are valid; no call to AgentIdP
        unless its key is new to this process."""
        try:
            header = jws.extract_compact(token.encode()).protected  # before the key is known
            if header.get("typ") != "at+jwt":  # RFC 9068 §4: not an ID token or other JWT
                raise Unauthorized("not an access token")
            decoded = jwt.decode(token, self._key_set(header.get("kid")), algorithms=ALGORITHMS)
            jwt.JWTClaimsRegistry(
                leeway=CLOCK_SKEW,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as error:
            raise Unauthorized(f"invalid token: {error.__class__.__name__}") from None
        return dict(decoded.claims)

    def introspect(self, token: str) -> dict[str, Any]:
        """AgentIdP's current answer for the token (RFC 7662): sees revocations at once."""
        if self._credential is None:
            raise Unauthorized("introspection needs the resource server's own credential")
        try:
            response = self._http.post(
                self.metadata["introspection_endpoint"],
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._credential,
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            # Fail closed: a sensitive call is refused when revocation cannot be checked.
            raise Unauthorized(f"introspection unavailable: {error.__class__.__name__}") from None
        body: dict[str, Any] = response.json()
        if body.get("active") is not True:
            raise Unauthorized("token is not active (revoked, expired or suspended)")
        return body

    def authorize(self, token: str, scope: str, *, revocation_sensitive: bool = False) -> str:
        """The calling agent's id (`sub`) if the token allows `scope`, else Unauthorized."""
        claims = self.verify_locally(token)
        if revocation_sensitive:
            claims = self.introspect(token)
        if scope not in str(claims.get("scope", "")).split():
            raise Unauthorized(f"scope {scope} is required")
        return str(claims["sub"])


def _decision(server: ResourceServer, token: str, scope: str, sensitive: bool) -> dict[str, Any]:
    try:
        agent = server.authorize(token, scope, revocation_sensitive=sensitive)
    except Unauthorized as refusal:
        return {"allowed": False, "reason": str(refusal)}
    return {"allowed": True, "agent_id": agent}


def main() -> None:
    token, scope = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "read"
    server = ResourceServer(
        os.environ.get("AGENTIDP_URL", "http://localhost:3000"),
        client_id=os.environ.get("CLIENT_ID"),
        client_secret=os.environ.get("CLIENT_SECRET"),
    )
    result = {
        "local": _decision(server, token, scope, sensitive=False),
        "introspected": _decision(server, token, scope, sensitive=True),
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
