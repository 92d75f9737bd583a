"""Token (RFC 6749), introspection (RFC 7662), revocation (RFC 7009),
metadata (RFC 8414) and JWKS endpoints."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response
from quart_schema import DataSource, document_request, document_response

from agentidp_server.audit.log import Actor
from agentidp_server.oauth.client_auth import (
    ASSERTION_ALGORITHMS,
    DEFAULT_METHODS,
    NONE,
    TOKEN_ENDPOINT_PATH,
    Client,
    authenticate_for_grant,
    authenticate_limited,
    methods_of,
)
from agentidp_server.oauth.errors import OAuthError
from agentidp_server.oauth.grants import auth_methods, mints_without_io
from agentidp_server.oauth.models import (
    Empty,
    Introspection,
    JsonObject,
    TokenForm,
    TokenForm7662,
    TokenResponse,
)
from agentidp_server.oauth.params import read_params
from agentidp_server.oauth.rfc9068 import InvalidToken, access_token_claims
from agentidp_server.oauth.token_request import TokenRequest
from agentidp_server.server.context import current_idp
from agentidp_server.server.http import INPUT_ERRORS
from agentidp_server.server.openapi import document_errors

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

blueprint = Blueprint("oauth", __name__)


def _invalid_request(message: str) -> OAuthError:
    return OAuthError("invalid_request", message)


# Bad input refused before a view runs is answered in OAuth's terms (RFC 6749 §5.2).
blueprint.record_once(
    lambda state: state.app.extensions.setdefault(INPUT_ERRORS, {}).update(
        {blueprint.name: _invalid_request}
    )
)

TOKEN_PATH = TOKEN_ENDPOINT_PATH  # one spelling: client assertions accept it as `aud`
INTROSPECT_PATH = "/api/v1/token/introspect"
REVOKE_PATH = "/api/v1/token/revoke"
JWKS_PATH = "/.well-known/jwks.json"
# Never handed to plugins: credentials and presented tokens (RFC 6749 §2.3, RFC 8693 §2.1).
PRESENTED_SECRETS = frozenset(
    {"client_secret", "client_assertion", "subject_token", "actor_token", "token"}
)


def presented_secrets(idp: IdP) -> frozenset[str]:
    """PRESENTED_SECRETS and every registered client auth method's `secret_params`."""
    names: frozenset[str] | None = idp.state["core"].get("presented_secrets")
    if names is None:
        extra = (getattr(m, "secret_params", ()) for m in methods_of(idp).values())
        names = PRESENTED_SECRETS.union(*extra)
        idp.state["core"]["presented_secrets"] = names
    return names


def _json(body: dict[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, content_type="application/json")
    # RFC 6749 §5.1: token responses are never cached.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@blueprint.errorhandler(OAuthError)
async def oauth_error(error: OAuthError) -> Response:
    return error.response()


async def _token_request(path: str) -> tuple[IdP, dict[str, str], Client, str]:
    """Introspection and revocation: an authenticated client presenting `token`."""
    idp = current_idp()
    params = await read_params()
    client = await authenticate_limited(idp, params, idp.issuer + path)
    token_value = params.get("token")
    if not token_value:
        raise OAuthError("invalid_request", "token is required")
    return idp, params, client, token_value


@blueprint.post(TOKEN_PATH)
@document_request(TokenForm, source=DataSource.FORM)
@document_response(TokenResponse)
@document_errors(400, 401, shape="oauth")
async def token() -> Response:
    """Issue an access token (RFC 6749 §4.4; form-encoded, or a JSON object)."""
    return _json(await issue(current_idp(), await read_params()))


async def issue(idp: IdP, params: dict[str, str]) -> dict[str, Any]:
    """The token endpoint's work, for the Quart view and the ASGI fast path alike."""
    grant_type = params.get("grant_type")
    core = idp.state["core"]
    grant = core["grant_types"].get(grant_type) if grant_type else None
    # The grant first, then only the methods it accepts (Authlib's order); an unknown
    # grant_type still authenticates (the kernel's methods), so it is limited as before.
    accepted: Collection[str] = DEFAULT_METHODS
    if grant is not None:
        # Read at startup; a grant added to the table later (tests do) declares its own.
        accepted = core["grant_auth_methods"].get(grant_type) or auth_methods(grant)
    client = await authenticate_for_grant(
        idp,
        params,
        idp.issuer + TOKEN_PATH,
        accepted,
        # A grant whose refusals need no I/O has its token counted with the request.
        lambda client: mints_without_io(grant, TokenRequest(idp, client, params)),
    )
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant is None:
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type} is not supported")
    unauthenticated = params.get("client_id") if client is None else None
    try:
        body: dict[str, Any] = await grant.issue(TokenRequest(idp, client, params, unauthenticated))
    except Exception:
        # A grant may refuse after its no-I/O check passed: no token, so none counted.
        if client is not None:
            await idp.quotas.refund_prepaid(client.client_id, client.org_id)
        raise
    if "access_token" in body and idp._hooks.implemented("token_response"):
        context = {
            "agent": client.agent if client is not None else None,
            "grant_type": grant_type,
            "params": {k: v for k, v in params.items() if k not in presented_secrets(idp)},
            # We just signed it: its payload needs decoding, not verifying.
            "claims": access_token_claims(body["access_token"]),
            # The issued token itself: an OIDC id_token's at_hash hashes it (OIDC Core §3.1.3.6).
            "access_token": body["access_token"],
        }
        body.update(await idp._hooks.token_response(idp, context))
    counter = idp.state["core"].get("tokens_issued")
    if counter is not None:
        counter(body.get("scope", "")).inc()
    return body


@blueprint.post(INTROSPECT_PATH)
@document_request(TokenForm7662, source=DataSource.FORM)
@document_response(Introspection)
@document_errors(400, 401, shape="oauth")
async def introspect() -> Response:
    """RFC 7662 token introspection; another organisation's token is inactive."""
    idp, _, client, token_value = await _token_request(INTROSPECT_PATH)
    try:
        claims = await idp.tokens.verify(token_value)
    except InvalidToken:
        return _json({"active": False})
    # Each tenant sees only its own tokens (RFC 7662 §2.2 lets us answer inactive).
    if claims["org_id"] != client.org_id:
        return _json({"active": False})
    return _json({"active": True, "token_type": "Bearer", **claims})


@blueprint.post(REVOKE_PATH)
@document_request(TokenForm7662, source=DataSource.FORM)
@document_response(Empty)
@document_errors(400, 401, shape="oauth")
async def revoke() -> Response:
    """RFC 7009 token revocation (own tokens; an org admin: any of its org)."""
    idp, params, client, token_value = await _token_request(REVOKE_PATH)
    hint = params.get("token_type_hint")
    if hint not in (None, "access_token", "refresh_token"):
        raise OAuthError("unsupported_token_type", f"token_type_hint {hint} is not supported")
    try:
        claims = idp.tokens.verify_signature(token_value)
    except InvalidToken:
        # RFC 7009 §2.2: invalid, expired or unknown tokens are answered 200.
        return _json({})
    own = claims["client_id"] == client.client_id
    org_admin = client.is_admin and claims["org_id"] == client.org_id
    if not (own or org_admin):
        raise OAuthError("unauthorized_client", "the token was not issued to this client")
    await idp.tokens.revoke(claims)
    await idp.audit.record(
        idp.db,
        org_id=claims["org_id"],
        action="token.revoked",
        actor=Actor(client_id=client.client_id, agent_id=str(client.agent["agent_id"])),
        target_type="token",
        target_id=claims["jti"],
        details={"by": "owner" if own else "org_admin"},
    )
    return _json({})


async def metadata(idp: IdP) -> dict[str, Any]:
    """RFC 8414 §2 metadata; plugins add fields through the discovery_metadata hook."""
    base = idp.issuer
    core = idp.state["core"]
    grants = sorted(core["grant_types"])
    registered = list(methods_of(idp))
    # RFC 8414 §2: "none" is listed when a served grant accepts it.
    by_grant = core.get("grant_auth_methods", {}).values()
    token_methods = registered + ([NONE] if any(NONE in m for m in by_grant) else [])
    fields: dict[str, Any] = {
        "issuer": base,
        "token_endpoint": base + TOKEN_PATH,
        "jwks_uri": base + JWKS_PATH,
        "introspection_endpoint": base + INTROSPECT_PATH,
        "revocation_endpoint": base + REVOKE_PATH,
        "grant_types_supported": grants,
        # No authorization endpoint: agents use grants that need no browser.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": token_methods,
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "introspection_endpoint_auth_methods_supported": list(DEFAULT_METHODS),
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "revocation_endpoint_auth_methods_supported": list(DEFAULT_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "scopes_supported": idp._hooks.scopes(idp).supported,
        "access_token_signing_alg_values_supported": sorted({k.alg for k in idp.keys.published()}),
    }
    extra = await idp._hooks.discovery_metadata(idp)
    for name, value in extra.items():
        if name in fields and not isinstance(fields[name], list):
            continue  # a plugin cannot redefine the kernel's scalar fields
        if isinstance(value, list) and isinstance(fields.get(name), list):
            fields[name] = fields[name] + [v for v in value if v not in fields[name]]
        else:
            fields[name] = value
    return fields


@blueprint.get("/.well-known/oauth-authorization-server")
@document_response(JsonObject)
async def discovery() -> Response:
    """Authorization server metadata (RFC 8414 §3)."""
    response = Response(json.dumps(await metadata(current_idp())), content_type="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@blueprint.get(JWKS_PATH)
@document_response(JsonObject)
async def jwks() -> Response:
    """The public keys that verify this server's tokens (RFC 7517 §5 JWK Set)."""
    response = Response(json.dumps(current_idp().keys.jwks()), content_type="application/json")
    # Short enough that a rotated key is fetched well before it signs.
    response.headers["Cache-Control"] = "public, max-age=60"
    return response
