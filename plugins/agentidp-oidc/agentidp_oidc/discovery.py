"""OpenID Provider metadata (Discovery §3), built on the kernel's RFC 8414 metadata."""

from __future__ import annotations

from typing import Any

from agentidp_server import IdP

from agentidp_oidc.claims import supported_claims

RFC8414_PATH = "/.well-known/oauth-authorization-server"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
USERINFO_PATH = "/api/v1/oidc/userinfo"


def id_token_algorithms(idp: IdP) -> list[str]:
    """The algs of the published keys: an id_token is signed by one of them."""
    return sorted({str(key["alg"]) for key in idp.keys.jwks()["keys"] if "alg" in key})


def shared_fields(idp: IdP) -> dict[str, Any]:
    """Fields both documents carry; RFC 8414 §2 and its IANA registry (§7.1.2) take
    these OpenID ones, so a client reading either document learns the same."""
    return {
        "userinfo_endpoint": idp.issuer + USERINFO_PATH,
        "scopes_supported": ["openid"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": id_token_algorithms(idp),
        "claims_supported": supported_claims(idp),
    }


# Discovery §3 defaults `request_uri_parameter_supported` to true; nothing here reads a
# request object or a `claims` request parameter, so say so rather than inherit defaults.
UNSUPPORTED_FEATURES: dict[str, Any] = {
    "claims_parameter_supported": False,
    "request_parameter_supported": False,
    "request_uri_parameter_supported": False,
    "claim_types_supported": ["normal"],
}


async def openid_configuration(idp: IdP) -> dict[str, Any]:
    """Discovery §3. There is no authorization endpoint (agents never use a browser):
    `authorization_endpoint` is absent and `response_types_supported` is the RFC 8414
    document's empty array; see the README for why."""
    # The kernel's RFC 8414 document: every grant, auth method and plugin field it lists
    # is ours too, with no second copy of how it is computed.
    document = await idp.oauth_metadata()
    for name, value in shared_fields(idp).items():
        # Another plugin may have widened a list (scopes_supported): keep its values.
        if isinstance(value, list) and isinstance(document.get(name), list):
            document[name] = document[name] + [v for v in value if v not in document[name]]
        else:
            document.setdefault(name, value)
    document.update(UNSUPPORTED_FEATURES)
    return document
