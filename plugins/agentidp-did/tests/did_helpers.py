"""Keys, JWKs and agent-signed JWTs for the DID plugin's tests (PyJWT + cryptography)."""

from __future__ import annotations

import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# The JWS algorithm each key type signs with.
ALGORITHMS = {"Ed25519": "EdDSA", "P-256": "ES256", "RSA": "RS256"}


def new_key(kind: str) -> PrivateKey:
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public JWK of `key`, as PyJWT (not the server) writes it."""
    public = key.public_key()
    jwk: dict[str, Any]
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    return jwk


def sign(key: PrivateKey, kind: str, claims: dict[str, Any], kid: str | None = None) -> str:
    """A JWT the agent signs with its own private key."""
    now = int(time.time())
    payload = {"iat": now, "exp": now + 300, **claims}
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=ALGORITHMS[kind], headers=headers)


def verify_with_document(token: str, document: dict[str, Any], audience: str) -> dict[str, Any]:
    """Verify `token` with PyJWT against the key its `kid` names in a DID document.

    The verification method must be referenced from `assertionMethod` (DID Core §5.3.2).
    """
    kid = jwt.get_unverified_header(token)["kid"]
    assert kid in document["assertionMethod"]
    method = next(m for m in document["verificationMethod"] if m["id"] == kid)
    key = jwt.PyJWK(method["publicKeyJwk"], algorithm=jwt.get_unverified_header(token)["alg"])
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=[key.algorithm_name], audience=audience
    )
    return claims
