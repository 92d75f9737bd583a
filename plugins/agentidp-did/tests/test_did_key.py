"""did:key and did:web identifiers, checked against the specifications' examples and vectors."""

from __future__ import annotations

import base64

import base58
import pytest

from agentidp_did.identifiers import agent_did, did_key, did_web, server_document_path


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# did:key spec test vectors (test-vectors/ed25519-x25519.json): the DID and its publicKeyBase58.
ED25519_VECTORS = [
    (
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
    ),
    (
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
        "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt",
    ),
    (
        "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
        "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH",
    ),
]

# did:key spec test vectors (test-vectors/nist-curves.json): the DID and its publicKeyJwk.
P256_VECTORS = [
    (
        "did:key:zDnaerx9CtbPJ1q36T5Ln5wYt3MQYeGRG5ehnPAmxcf5mDZpv",
        "igrFmi0whuihKnj9R3Om1SoMph72wUGeFaBbzG2vzns",
        "efsX5b10x8yjyrj4ny3pGfLcY7Xby1KzgqOdqnsrJIM",
    ),
    (
        "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
        "fyNYMN0976ci7xqiSdag3buk-ZCwgXU4kz9XNkBlNUI",
        "hW2ojTNfH7Jbi8--CJUo3OCbH3y5n91g-IMA9MLMbTU",
    ),
]


@pytest.mark.parametrize(("did", "base58_key"), ED25519_VECTORS)
def test_ed25519_did_key_matches_spec_vectors(did, base58_key):
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(base58.b58decode(base58_key))}
    assert did_key(jwk) == did


@pytest.mark.parametrize(("did", "x", "y"), P256_VECTORS)
def test_p256_did_key_matches_spec_vectors(did, x, y):
    assert did_key({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": "ignored"}) == did


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": _b64url(bytes(32))},
        {"kty": "OKP", "crv": "Ed25519", "x": "short"},
        {"kty": "EC", "crv": "P-256", "x": "!!"},
    ],
)
def test_no_did_key_for_other_or_broken_keys(jwk):
    assert did_key(jwk) is None


@pytest.mark.parametrize(
    ("issuer", "server", "path"),
    [
        # did:web spec §3.1 examples: plain host, a percent-encoded port, a path.
        ("https://w3c-ccg.github.io", "did:web:w3c-ccg.github.io", "/.well-known/did.json"),
        ("https://example.com:3000", "did:web:example.com%3A3000", "/.well-known/did.json"),
        ("https://example.com:443/", "did:web:example.com", "/.well-known/did.json"),
        (
            "https://w3c-ccg.github.io/user/alice",
            "did:web:w3c-ccg.github.io:user:alice",
            "/did.json",
        ),
        ("http://localhost:3000", "did:web:localhost%3A3000", "/.well-known/did.json"),
    ],
)
def test_did_web_from_issuer(issuer, server, path):
    assert did_web(issuer) == server
    assert agent_did(issuer, "ag_1") == f"{server}:agents:ag_1"
    assert server_document_path(issuer) == path


def test_agent_id_is_percent_encoded_as_did_core_idchar():
    # DID Core §3.1: only ALPHA / DIGIT / "." / "-" / "_" / pct-encoded may appear.
    assert agent_did("https://idp.example", "a b~c:d") == (
        "did:web:idp.example:agents:a%20b%7Ec%3Ad"
    )
