"""Client authentication at the token, introspection and revocation endpoints.

client_secret_basic and client_secret_post: RFC 6749 §2.3.1.
private_key_jwt: RFC 7523 §2.2 and §3 (with OpenID Connect Core §9's rules).
"""

from __future__ import annotations

import base64
import hmac
import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard
from urllib.parse import unquote_plus

from joserfc import jwk, jwt
from joserfc.errors import JoseError

from agentidp_server.audit.log import Actor
from agentidp_server.directory import agents, credentials
from agentidp_server.oauth.client_lookup import ClientLookup
from agentidp_server.oauth.errors import OAuthError, invalid_client
from agentidp_server.oauth.jws_parts import unverified_part
from agentidp_server.server import request_scope
from agentidp_server.server.http import hostile
from agentidp_server.util.clock import now as clock_now
from agentidp_server.util.ids import hash_secret

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS256", "ES256", "EdDSA")
# Seconds; a longer-lived assertion is refused. One hour is what common clients
# send by default (Authlib: iat + 3600) and what Okta allows.
MAX_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 30
# The token endpoint's path (oauth/endpoints.py's TOKEN_PATH is this one).
TOKEN_ENDPOINT_PATH = "/api/v1/token"  # noqa: S105 - a path, not a secret
# Hashed when the client is unknown so that path costs the same as a wrong secret.
_DUMMY_HASH = "0" * 64


@dataclass(frozen=True)
class Client:
    agent: dict[str, Any]
    credential_id: str
    method: str

    @property
    def client_id(self) -> str:
        return str(self.agent["client_id"])

    @property
    def org_id(self) -> str:
        return str(self.agent["org_id"])

    @property
    def is_admin(self) -> bool:
        return bool(self.agent["kind"] == "admin")


def _basic() -> tuple[str, str] | None:
    scope = request_scope.require()
    if scope.basic is not False:
        return scope.basic  # type: ignore[return-value]
    scope.basic = _decode_basic(scope.header("authorization"))
    return scope.basic


def _decode_basic(header: str) -> tuple[str, str] | None:
    if header[:6].lower() != "basic ":
        return None
    try:
        # Raw non-ASCII header bytes arrive as latin-1 text, which b64decode refuses
        # with a ValueError of its own (not binascii.Error).
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise invalid_client(True) from None
    if ":" not in decoded:
        raise invalid_client(True)
    client_id, secret = decoded.split(":", 1)
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    if hostile(client_id) or hostile(secret):
        # No client id or secret of ours holds NUL; refused before any lookup (issue 25).
        raise invalid_client(True)
    return client_id, secret


def presented_client_id(params: dict[str, str]) -> str:
    """The client id a request claims, before anything is verified (for failure limits)."""
    try:
        basic = _basic()
    except OAuthError:
        basic = None
    if basic is not None:
        return basic[0]
    if "client_assertion" in params:
        claims = unverified_part(params["client_assertion"], 1) or {}
        iss = claims.get("iss")
        # An unverified claim: one that no client id of ours could be never reaches SQL.
        if isinstance(iss, str) and not hostile(iss):
            return iss
    return params.get("client_id", "")


async def authenticate_limited(
    idp: IdP,
    params: dict[str, str],
    endpoint: str,
    mints: Callable[[Client], bool] | None = None,
) -> Client:
    """`authenticate` under the failure limit, then the client's rate and tier limits,
    with the kernel's methods only (introspection, revocation): a plugin's method is
    accepted only where a grant names it, or a credential weaker than a client's own
    (e.g. an access token) would authenticate it at revocation."""
    client = await authenticate_for_grant(idp, params, endpoint, DEFAULT_METHODS, mints)
    assert client is not None  # only a grant accepting "none" may have no client
    return client


async def authenticate_for_grant(
    idp: IdP,
    params: dict[str, str],
    endpoint: str,
    accepted: Collection[str] | None,
    mints: Callable[[Client], bool] | None = None,
) -> Client | None:
    """`authenticate` under the failure limit, then the client's rate and tier limits.

    `accepted` is the grant's TOKEN_ENDPOINT_AUTH_METHODS (None: every registered
    method). A request with no client authentication to a grant that accepts
    "none" returns None, untouched by any limit: there is no client to count.
    The failure limit is checked with the outcome (one kv step either way): over
    it, the answer is 429 whether the secret was right or wrong. When `mints`
    says the authenticated client's request will be issued a token, that token
    is counted in the same step.
    """
    current = request_scope.require()
    presented = presented_client_id(params)
    address = current.remote_addr or "-"
    try:
        method = _method_used(idp, params, current.header, accepted)
        if method is None:
            return None
        if accepted is not None and method.name not in accepted:
            # RFC 6749 §5.2: an unsupported authentication method is invalid_client.
            raise OAuthError(
                "invalid_client",
                f"{method.name} is not accepted here",
                401,
                {"WWW-Authenticate": 'Basic realm="agentidp"'}
                if method.name == "client_secret_basic"
                else {},
            )
        client = await method.authenticate(idp, params, endpoint)
    except OAuthError as error:
        if error.error == "invalid_client":
            await idp.quotas.failed_authentication(presented, address)
            known = await agents.get_by_client_id(idp.db, presented) if presented else None
            await idp.audit.record(
                idp.db,
                org_id=known["org_id"] if known else None,
                action="client.authentication_failed",
                outcome="failure",
                actor=Actor(client_id=presented[:128] or None),
                target_type="client",
                target_id=known["client_id"] if known else None,
                reason=error.description,
                details={"endpoint": current.path},
            )
        raise
    # Keyed by the canonical client_id from the store, so spelling variants share a bucket.
    await idp.quotas.admit(
        client.client_id,
        client.org_id,
        presented=(presented, address),
        token=mints is not None and mints(client),
    )
    return client


async def authenticate(idp: IdP, params: dict[str, str], endpoint: str) -> Client:
    """Return the authenticated client (any registered method) or raise invalid_client."""
    method = _method_used(idp, params, request_scope.require().header, None)
    assert method is not None  # None only when "none" is accepted
    return await method.authenticate(idp, params, endpoint)


def methods_of(idp: IdP) -> Mapping[str, ClientAuthMethod]:
    """The registered methods by name (app.py builds it at startup from the hook)."""
    registered: Mapping[str, ClientAuthMethod] | None = idp.state.get("core", {}).get(
        "client_auth_methods"
    )
    return registered if registered is not None else KERNEL_METHODS


def _method_used(
    idp: IdP,
    params: Mapping[str, str],
    header: Callable[[str], str],
    accepted: Collection[str] | None,
) -> ClientAuthMethod | None:
    """The one method the request uses; None when it uses none and "none" is accepted."""
    used = [method for method in methods_of(idp).values() if method.presented(params, header)]
    if len(used) > 1:
        # RFC 6749 §2.3: a client MUST NOT use more than one method per request.
        raise OAuthError("invalid_request", "use exactly one client authentication method")
    if used:
        return used[0]
    if accepted is not None and NONE in accepted:
        return None  # a public client (RFC 6749 §2.1) or RFC 7523 §2.1's optional authentication
    raise OAuthError(
        "invalid_client",
        "client authentication is required",
        401,
        {"WWW-Authenticate": 'Basic realm="agentidp"'},
    )


class ClientAuthMethod(Protocol):
    """A client authentication method (`register_client_auth_methods`), named as in
    the IANA "OAuth Token Endpoint Authentication Methods" registry where it is one."""

    name: str

    @property
    def secret_params(self) -> Collection[str]:
        """Request parameters that carry the credential: never handed to plugins' hooks."""
        ...

    def presented(self, params: Mapping[str, str], header: Callable[[str], str]) -> bool:
        """Whether the request uses this method (no I/O); `header(name)` reads a header."""
        ...

    async def authenticate(self, idp: IdP, params: dict[str, str], endpoint: str) -> Client:
        """The authenticated client, or raise OAuthError invalid_client (401)."""
        ...


class ClientSecretBasic:
    name = "client_secret_basic"
    secret_params: tuple[str, ...] = ()  # the secret travels in the Authorization header

    def presented(self, params: Mapping[str, str], header: Callable[[str], str]) -> bool:
        return _basic() is not None  # a malformed Basic header is refused here, as before

    async def authenticate(self, idp: IdP, params: dict[str, str], endpoint: str) -> Client:
        basic = _basic()
        assert basic is not None  # presented() said so
        client_id, secret = basic
        if params.get("client_id") not in (None, client_id):
            raise OAuthError("invalid_request", "client_id does not match the Authorization header")
        return await _by_secret(idp, client_id, secret, self.name, used_basic=True)


class ClientSecretPost:
    name = "client_secret_post"
    secret_params = ("client_secret",)

    def presented(self, params: Mapping[str, str], header: Callable[[str], str]) -> bool:
        return "client_secret" in params

    async def authenticate(self, idp: IdP, params: dict[str, str], endpoint: str) -> Client:
        return await _by_secret(
            idp, params.get("client_id", ""), params["client_secret"], self.name, False
        )


class PrivateKeyJwt:
    name = "private_key_jwt"
    secret_params = ("client_assertion",)

    def presented(self, params: Mapping[str, str], header: Callable[[str], str]) -> bool:
        return "client_assertion" in params or "client_assertion_type" in params

    async def authenticate(self, idp: IdP, params: dict[str, str], endpoint: str) -> Client:
        return await _by_assertion(idp, params, endpoint)


# RFC 8414 §2 / OIDC Core §9: a client that does not authenticate at the token endpoint.
NONE = "none"
KERNEL_METHODS: Mapping[str, ClientAuthMethod] = {
    m.name: m for m in (ClientSecretBasic(), ClientSecretPost(), PrivateKeyJwt())
}
DEFAULT_METHODS = tuple(KERNEL_METHODS)


async def _by_secret(
    idp: IdP, client_id: str, secret: str, method: str, used_basic: bool
) -> Client:
    presented = hash_secret(idp.settings.CREDENTIAL_PEPPER, secret)
    lookup = ClientLookup.of(idp)
    (agent, candidates, tier), cached = (
        await lookup.for_secret(client_id) if client_id else ((None, [], None), False)
    )
    matched = _match(presented, candidates)
    if cached and (matched is None or agent is None or agent["status"] != "active"):
        # A cached answer may only grant: a refusal is read again (a secret created
        # a moment ago in another process may not have reached this cache yet).
        (agent, candidates, tier), _ = await lookup.for_secret(client_id, fresh=True)
        matched = _match(presented, candidates)
    if agent is not None and tier is not None:
        idp.quotas.remember_tier(agent["org_id"], tier)  # read with the client, not again
    if agent is None or matched is None or agent["status"] != "active":
        raise invalid_client(used_basic)
    return Client(agent, matched, method)


def _match(presented: str, candidates: list[dict[str, Any]]) -> str | None:
    """The credential whose hash is `presented`; every candidate (or a dummy when
    there is none) is compared in constant time."""
    matched: str | None = None
    for candidate in candidates or [{"secret_hash": _DUMMY_HASH, "credential_id": None}]:
        if hmac.compare_digest(presented, candidate["secret_hash"]) and matched is None:
            matched = candidate["credential_id"]
    return matched


async def _by_assertion(idp: IdP, params: dict[str, str], endpoint: str) -> Client:
    if params.get("client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
    assertion = params.get("client_assertion", "")
    header = unverified_part(assertion, 0) or {}
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise invalid_client(False)
    unverified = unverified_part(assertion, 1)
    if unverified is None:
        raise invalid_client(False)
    client_id = unverified.get("iss")
    if not isinstance(client_id, str) or params.get("client_id") not in (None, client_id):
        raise invalid_client(False)
    agent = await agents.get_by_client_id(idp.db, client_id)
    if agent is None or agent["status"] != "active":
        raise invalid_client(False)
    keys = await credentials.usable(idp.db, agent["agent_id"], "private_key_jwt")
    kid = header.get("kid")
    candidates = [k for k in keys if kid is None or k["jwk_kid"] == kid]
    claims: dict[str, Any] | None = None
    matched: str | None = None
    for candidate in candidates:
        try:
            key = jwk.import_key(json.loads(candidate["jwk"]))
            token = jwt.decode(assertion, key, algorithms=[alg])
        except (JoseError, ValueError, RecursionError):  # a signed payload nested too deep
            continue
        claims, matched = dict(token.claims), candidate["credential_id"]
        break
    if claims is None or matched is None:
        raise invalid_client(False)
    await _check_assertion_claims(idp, claims, client_id, endpoint)
    return Client(agent, matched, "private_key_jwt")


def _finite_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number that is neither NaN nor infinite (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


async def _check_assertion_claims(
    idp: IdP, claims: dict[str, Any], client_id: str, endpoint: str
) -> None:
    now = clock_now()
    # RFC 7523 §3: iss and sub are the client_id; aud names this server.
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise invalid_client(False)
    # RFC 7523 §3 item 3: the issuer, the token endpoint or this endpoint, at every
    # endpoint (clients such as Authlib's PrivateKeyJWT send the token endpoint's URL).
    accepted = {idp.issuer, idp.issuer + TOKEN_ENDPOINT_PATH, endpoint}
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not accepted & {a for a in audiences if isinstance(a, str)}:
        raise invalid_client(False)
    exp = claims.get("exp")
    # json accepts NaN and Infinity; NaN passes every comparison below (issue 25 item 5).
    if not _finite_number(exp) or exp <= now - CLOCK_SKEW:
        raise invalid_client(False)
    if exp > now + MAX_ASSERTION_LIFETIME:
        raise invalid_client(False)
    nbf = claims.get("nbf")
    if nbf is not None and (not _finite_number(nbf) or nbf > now + CLOCK_SKEW):
        raise invalid_client(False)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise invalid_client(False)
    # Single use within the assertion's lifetime (RFC 7523 §3 item 7).
    ttl_ms = int((exp - now + CLOCK_SKEW) * 1000)
    if not await idp.kv.set(f"assertion:{client_id}:{jti}", "1", ttl_ms=max(ttl_ms, 1000), nx=True):
        raise invalid_client(False)
