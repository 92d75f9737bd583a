"""DID documents (W3C DID Core 1.0) for the server and its agents, and resolution results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from agentidp_server import Agent, Credential

from agentidp_did.identifiers import agent_did, did_key, did_web

DID_CONTEXT = "https://www.w3.org/ns/did/v1"
# JsonWebKey2020 is defined by the JWS 2020 suite; its context defines the term and publicKeyJwk.
JWS_2020_CONTEXT = "https://w3id.org/security/suites/jws-2020/v1"
RESOLUTION_CONTEXT = "https://w3id.org/did-resolution/v1"
# Agents register JWKs (RSA, P-256, Ed25519) and verifiers check JOSE signatures
# with JWKs: JsonWebKey2020 carries every one of them unchanged, where Multikey
# has no RSA encoding and would make every JOSE verifier convert keys back.
VERIFICATION_METHOD_TYPE = "JsonWebKey2020"
# DID Core §6.3 (JSON-LD): a document with @context is application/did+ld+json.
DID_LD_JSON = "application/did+ld+json"
RESOLUTION_JSON = 'application/ld+json;profile="https://w3id.org/did-resolution"'
# The agent `metadata` key whose URL is published as the agent's A2A agent card.
A2A_METADATA_KEY = "a2a_agent_card"
OAUTH_ENDPOINT_PATH = "/api/v1/token"  # the kernel's OAuth 2.0 token endpoint
# Service types: not in the DID Spec Registries (none exists for these), named plainly.
OAUTH_SERVICE_TYPE = "OAuth2TokenEndpoint"
AGENT_CARD_SERVICE_TYPE = "AgentCard"
_FRAGMENT_SAFE = "-._~!$&'()*+,;=:@/?"  # RFC 3986 §3.5: what a fragment may hold unescaped


def _iso(ms: int | None) -> str | None:
    # DID Core §7.1.3: created/updated are XML datetimes normalised to UTC, no sub-seconds.
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verification_methods(did: str, jwks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """JsonWebKey2020 verification methods, `<did>#<kid>` each.

    DID Core §5.2.1: verification methods with a JWK should use its `kid` as
    the fragment; a key without one (or with a clashing one) gets its index.
    """
    methods: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, jwk in enumerate(jwks):
        kid = jwk.get("kid")
        fragment = quote(kid, safe=_FRAGMENT_SAFE) if isinstance(kid, str) and kid else ""
        if not fragment or fragment in seen or fragment.startswith("service-"):
            fragment = f"key-{index}"
        seen.add(fragment)
        methods.append(
            {
                "id": f"{did}#{fragment}",
                "type": VERIFICATION_METHOD_TYPE,
                "controller": did,
                "publicKeyJwk": dict(jwk),
            }
        )
    return methods


def _with_methods(document: dict[str, Any], methods: list[dict[str, Any]]) -> dict[str, Any]:
    if methods:
        document["verificationMethod"] = methods
        ids = [m["id"] for m in methods]
        # DID Core §5.3.1/§5.3.2: the keys prove control (authentication) and sign
        # statements, such as JWTs and credentials, on the subject's behalf (assertionMethod).
        document["authentication"] = ids
        document["assertionMethod"] = list(ids)
    return document


def _service(did: str, name: str, kind: str, endpoint: str) -> dict[str, Any]:
    # DID Core §5.4: each service has an id (a DID URL), a type and a serviceEndpoint.
    return {"id": f"{did}#service-{name}", "type": kind, "serviceEndpoint": endpoint}


def _oauth_service(did: str, issuer: str) -> dict[str, Any]:
    return _service(did, "oauth-token", OAUTH_SERVICE_TYPE, issuer + OAUTH_ENDPOINT_PATH)


def server_document(issuer: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The server's own did:web document: its published token signing keys."""
    did = did_web(issuer)
    document: dict[str, Any] = {"@context": [DID_CONTEXT, JWS_2020_CONTEXT], "id": did}
    _with_methods(document, verification_methods(did, jwks.get("keys", [])))
    document["service"] = [_oauth_service(did, issuer)]
    return document


def agent_card_url(agent: Agent) -> str | None:
    """The agent's A2A agent card URL from its metadata, if it is an absolute http(s) URL."""
    value = agent.metadata.get(A2A_METADATA_KEY)
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. "http://[::1": not a URL at all
        return None
    return value if parts.scheme in ("https", "http") and parts.netloc else None


def agent_document(issuer: str, agent: Agent, keys: Iterable[Credential]) -> dict[str, Any]:
    """An agent's DID document from its registered `private_key_jwt` keys."""
    did = agent_did(issuer, agent.agent_id)
    jwks = [k.public_jwk() for k in keys]
    document: dict[str, Any] = {
        "@context": [DID_CONTEXT, JWS_2020_CONTEXT],
        "id": did,
        # DID Core §5.1.2: the identity provider, not the agent, updates this document.
        "controller": did_web(issuer),
    }
    # DID Core §5.1.3: the same subject under did:key, for each key that has one.
    also = [d for d in dict.fromkeys(did_key(j) for j in jwks) if d is not None]
    if also:
        document["alsoKnownAs"] = also
    _with_methods(document, verification_methods(did, jwks))
    services = [_oauth_service(did, issuer)]
    card = agent_card_url(agent)
    if card is not None:
        services.append(_service(did, "agent-card", AGENT_CARD_SERVICE_TYPE, card))
    document["service"] = services
    return document


def is_deactivated(agent: Agent) -> bool:
    """Suspended and decommissioned agents' DIDs are deactivated."""
    return not agent.is_active


def tombstone(issuer: str, agent: Agent) -> dict[str, Any]:
    """What the public did.json shows of a deactivated agent: its id, no keys, no services."""
    return {"@context": [DID_CONTEXT], "id": agent_did(issuer, agent.agent_id)}


def resolution_result(document: dict[str, Any], agent: Agent) -> dict[str, Any]:
    """A DID Resolution Result (DID Resolution §Resolution Result, DID Core §7.1.2/§7.1.3)."""
    metadata: dict[str, Any] = {
        "created": _iso(agent.created_at),
        "updated": _iso(agent.updated_at),
    }
    if is_deactivated(agent):
        metadata["deactivated"] = True
    return {
        "@context": RESOLUTION_CONTEXT,
        "didDocument": document,
        "didResolutionMetadata": {"contentType": DID_LD_JSON},
        "didDocumentMetadata": {k: v for k, v in metadata.items() if v is not None},
    }
