"""An agent that gets an access token from AgentIdP and reuses it until shortly
before it expires.

The agent authenticates with its key pair (`private_key_jwt`, RFC 7523: the
server stores only the public JWK and no secret travels) or, when no key file is
given, with its client secret (`client_secret_basic`, RFC 6749 §2.3.1). It finds
the token endpoint in the server's metadata (RFC 8414), asks for a token by the
client credentials grant (RFC 6749 §4.4) and caches it: asking for a new token
on every call costs a round trip and counts against the organisation's daily
token quota.

Needs `httpx` and `joserfc` (`pip install httpx joserfc`). Run::

    AGENTIDP_URL=http://localhost:3000 CLIENT_ID=... KEY_FILE=agent-key.json \\
        python examples/agent_token.py
    AGENTIDP_URL=http://localhost:3000 CLIENT_ID=... CLIENT_SECRET=... \\
        python examples/agent_token.py

It prints the token's claims as the server's introspection endpoint reports
them (the token itself is a secret: never log it).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from typing import Any

import httpx
from joserfc import jwk, jwt

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Renew this many seconds before expiry, so a token never expires in flight.
RENEW_MARGIN = 60
# The server refuses assertions that live longer than an hour; five minutes is plenty.
ASSERTION_LIFETIME = 300


class AgentTokens:
    """Access tokens for one agent, cached until `RENEW_MARGIN` seconds before expiry."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        private_key: dict[str, Any] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if (client_secret is None) == (private_key is None):
            raise ValueError("give exactly one of client_secret and private_key")
        self.client_id = client_id
        self._secret = client_secret
        self._key = jwk.import_key(private_key) if private_key is not None else None
        self._http = http or httpx.Client(timeout=10)
        metadata = self._http.get(f"{base_url}/.well-known/oauth-authorization-server")
        metadata.raise_for_status()
        self.metadata: dict[str, Any] = metadata.json()
        self._cache: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)
        self._lock = threading.Lock()
        self.fetches = 0  # how many times the server was asked (for the demo and its test)

    def token(self, scope: str = "") -> str:
        """A valid access token for `scope` (empty: every scope the agent may ask for)."""
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None and time.time() < cached[1] - RENEW_MARGIN:
                return cached[0]
            body = self._fetch(scope)
            token = str(body["access_token"])
            self._cache[scope] = (token, time.time() + float(body["expires_in"]))
            return token

    def _fetch(self, scope: str) -> dict[str, Any]:
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        response = self._http.post(
            self.metadata["token_endpoint"], data=form, auth=self._auth(form)
        )
        self.fetches += 1
        if response.status_code != 200:
            # RFC 6749 §5.2: the error body names the problem and holds no secret.
            raise RuntimeError(f"token request failed: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    def _auth(self, form: dict[str, str]) -> httpx.Auth:
        """client_secret_basic, or a client assertion added to `form` (no header)."""
        if self._secret is not None:
            return httpx.BasicAuth(self.client_id, self._secret)
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = self.assertion(self.metadata["token_endpoint"])
        return httpx.Auth()

    def assertion(self, audience: str) -> str:
        """A signed client assertion (RFC 7523 §3): `aud` is the token endpoint's URL,
        which AgentIdP accepts at introspection and revocation too."""
        assert self._key is not None
        alg = {"EC": "ES256", "RSA": "RS256", "OKP": "EdDSA"}[self._key.key_type]
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": str(uuid.uuid4()),  # single use: the server refuses a replay
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        header = {"alg": alg, "kid": self._key.kid} if self._key.kid else {"alg": alg}
        return jwt.encode(header, claims, self._key, algorithms=[alg])

    def introspect(self, token: str) -> dict[str, Any]:
        """What the server knows about `token` (RFC 7662), asked with this agent's credential."""
        form = {"token": token}
        response = self._http.post(
            self.metadata["introspection_endpoint"], data=form, auth=self._auth(form)
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def main() -> None:
    base_url = os.environ.get("AGENTIDP_URL", "http://localhost:3000")
    client_id = os.environ["CLIENT_ID"]
    key_file = os.environ.get("KEY_FILE")
    if key_file:
        with open(key_file, encoding="utf-8") as file:
            tokens = AgentTokens(base_url, client_id, private_key=json.load(file))
    else:
        tokens = AgentTokens(base_url, client_id, client_secret=os.environ["CLIENT_SECRET"])
    first = tokens.token()
    again = tokens.token()  # from the cache: no second request
    claims = tokens.introspect(first)
    report = {"fetches": tokens.fetches, "cached": first == again, "introspection": claims}
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
