"""DID strings: `did:web` from the ISSUER URL, `did:key` from a public JWK."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import base58

# did:key spec §2 (Format): multicodec varint prefixes of the public keys we accept.
_ED25519_PUB = bytes([0xED, 0x01])  # ed25519-pub, 0xed
_P256_PUB = bytes([0x80, 0x24])  # p256-pub, 0x1200, followed by the compressed point


def _segment(value: str) -> str:
    # DID Core §3.1 idchar: ALPHA / DIGIT / "." / "-" / "_" / pct-encoded; quote leaves "~" too.
    return quote(value, safe="").replace("~", "%7E")


def did_web(issuer: str, *path: str) -> str:
    """The did:web for `issuer` (the server) or a path below it (an agent).

    did:web spec §3.1 (Method-specific identifier): the host, the port with its
    colon percent-encoded, then path segments separated by colons.
    """
    parts = urlsplit(issuer)
    host = parts.hostname or "localhost"
    port = parts.port
    # https's default port names the same URL; keep the DID short and canonical.
    default_port = port is None or (parts.scheme == "https" and port == 443)
    authority = host if default_port else f"{host}%3A{port}"
    segments = [_segment(s) for s in parts.path.split("/") if s]
    segments += [_segment(p) for p in path]
    return ":".join(["did", "web", authority, *segments])


def agent_did(issuer: str, agent_id: str) -> str:
    """`did:web:<host>[%3A<port>][:<issuer path>]:agents:<agent_id>`."""
    return did_web(issuer, "agents", agent_id)


def server_document_path(issuer: str) -> str:
    """Where the server's did.json lives below the app root.

    did:web spec §3.2.1 (Read): a DID without a path resolves to
    `/.well-known/did.json`; one with a path to `<path>/did.json`. The app is
    mounted at the ISSUER, so the path part of ISSUER is not in the route.
    """
    return "/did.json" if urlsplit(issuer).path.strip("/") else "/.well-known/did.json"


def _b64url(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def did_key(jwk: Mapping[str, Any]) -> str | None:
    """The did:key of an Ed25519 or P-256 public JWK; None for other keys (RSA).

    did:key spec §2: multicodec varint prefix + raw public key (P-256: the
    compressed SEC1 point), base58btc-encoded with the multibase prefix `z`.
    """
    kty, crv = jwk.get("kty"), jwk.get("crv")
    try:
        if kty == "OKP" and crv == "Ed25519":
            raw = _b64url(str(jwk["x"]))
            if len(raw) != 32:
                return None
            material = _ED25519_PUB + raw
        elif kty == "EC" and crv == "P-256":
            x, y = _b64url(str(jwk["x"])), _b64url(str(jwk["y"]))
            if len(x) != 32 or len(y) != 32:
                return None
            # SEC1 §2.3.3 compressed point: 0x02 for an even y, 0x03 for an odd one.
            material = _P256_PUB + bytes([0x02 | (y[-1] & 1)]) + x
        else:
            return None
    except (KeyError, ValueError):
        return None
    return "did:key:z" + base58.b58encode(material).decode("ascii")
