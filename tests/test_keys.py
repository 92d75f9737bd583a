"""Signing keys: staged rotation in the key store, emergency revocation, keys from
settings, the algorithm choice, and the `agentidp keys` / `orgs` commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agentidp_server.app import create_app
from agentidp_server.keys.keyring import KeyError_, Keyring
from agentidp_server.oauth.rfc9068 import SIGNATURE_INVALID
from agentidp_server.settings import SettingsError, load_settings
from agentidp_server.testkit import admin_headers, basic, embedded_settings, make_org, token
from tests.faultproxy import FaultProxy

ISSUER = "http://localhost:3000"


@pytest.fixture
def agentidp_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings per test, through `parametrize("agentidp_overrides", [...], indirect=True)`."""
    return dict(getattr(request, "param", {}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header_of(access_token: str) -> dict[str, Any]:
    return jwt.get_unverified_header(access_token)


async def jwks_of(client: Any) -> dict[str, Any]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    body: dict[str, Any] = await response.get_json()
    return body


def verify(access_token: str, jwks: dict[str, Any], leeway: float = 0) -> dict[str, Any]:
    """PyJWT's verdict, with the key the JWKS publishes under the token's kid; `leeway`
    for a token minted by a moved test clock (PyJWT reads the wall clock)."""
    keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    key = keys[header_of(access_token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        access_token,
        key=key.key,
        algorithms=[key.algorithm_name],
        audience=ISSUER,
        issuer=ISSUER,
        options={"require": ["exp", "iss", "aud"]},
        leeway=leeway,
    )
    return claims


async def introspect(client: Any, org: dict[str, Any], access_token: str) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/token/introspect",
        form={"token": access_token},
        headers=basic(org["client_id"], org["client_secret"]),
    )
    body: dict[str, Any] = await response.get_json()
    return body


async def admin_token(client: Any, org: dict[str, Any]) -> str:
    access: str = (await token(client, org["client_id"], org["client_secret"]))["access_token"]
    return access


# The key store ------------------------------------------------------------------


async def test_rotation_publishes_first_and_signs_after_the_delay(
    agentidp_client, agentidp_idp, clock
):
    idp = agentidp_idp
    org = await make_org(idp)
    old_kid = idp.keys.signing_key().kid
    before = await admin_token(agentidp_client, org)
    assert header_of(before)["kid"] == old_kid

    new = await idp.keys.rotate(idp.db, delay_s=1)
    await idp.keys.load(idp.db)
    assert new is not None
    assert new.kid != old_kid

    # Published at once, not yet signing.
    jwks = await jwks_of(agentidp_client)
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new.kid}
    assert all("d" not in k for k in jwks["keys"])
    assert header_of(await admin_token(agentidp_client, org))["kid"] == old_kid
    states = {k.kid: s for k, s in idp.keys.states(new.activates_at - 1)}
    assert states == {old_kid: "active", new.kid: "published"}

    clock.advance(ms=new.activates_at - 1 - clock.now_ms())
    assert header_of(await admin_token(agentidp_client, org))["kid"] == old_kid
    clock.advance(ms=1)
    after = await admin_token(agentidp_client, org)
    assert header_of(after)["kid"] == new.kid

    # The old key is retired: still published, so the earlier token still verifies.
    jwks = await jwks_of(agentidp_client)
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new.kid}
    assert verify(before, jwks)["iss"] == ISSUER
    assert verify(after, jwks, leeway=2)["iss"] == ISSUER  # issued 1 s ahead of the wall
    assert (await introspect(agentidp_client, org, before))["active"] is True
    assert (await introspect(agentidp_client, org, after))["active"] is True
    states = {k.kid: s for k, s in idp.keys.states()}
    assert states == {old_kid: "retired", new.kid: "active"}
    response = await agentidp_client.get(
        "/api/v1/agents", headers={"Authorization": f"Bearer {before}"}
    )
    assert response.status_code == 200


async def test_revoked_key_is_unpublished_and_its_tokens_fail(agentidp_client, agentidp_idp):
    idp = agentidp_idp
    org = await make_org(idp)
    old_kid = idp.keys.signing_key().kid
    before = await admin_token(agentidp_client, org)
    new = await idp.keys.rotate(idp.db, delay_s=0)
    await idp.keys.load(idp.db)
    assert new is not None
    after = await admin_token(agentidp_client, org)
    assert header_of(after)["kid"] == new.kid

    assert await idp.keys.revoke(idp.db, old_kid) is True
    assert await idp.keys.revoke(idp.db, old_kid) is False  # already revoked
    await idp.keys.load(idp.db)
    jwks = await jwks_of(agentidp_client)
    assert [k["kid"] for k in jwks["keys"]] == [new.kid]
    assert await introspect(agentidp_client, org, before) == {"active": False}
    response = await agentidp_client.get(
        "/api/v1/agents", headers={"Authorization": f"Bearer {before}"}
    )
    assert response.status_code == 401
    assert (await response.get_json())["message"] == SIGNATURE_INVALID
    assert (await introspect(agentidp_client, org, after))["active"] is True
    with pytest.raises(KeyError):
        verify(before, jwks)


async def test_keys_survive_a_reload_and_stay_encrypted(agentidp_idp):
    idp = agentidp_idp
    kid = idp.keys.signing_key().kid
    row = await idp.db.fetchrow("SELECT * FROM signing_keys WHERE kid = $1", kid)
    assert b"PRIVATE KEY" not in row["private_key"].encode()
    await idp.keys.load(idp.db)
    assert idp.keys.signing_key().kid == kid


@pytest.mark.parametrize(
    ("agentidp_overrides", "alg", "kty"),
    [
        ({"JWT_ALGORITHM": "ES256"}, "ES256", "EC"),
        ({"JWT_ALGORITHM": "EdDSA"}, "EdDSA", "OKP"),
        ({}, "RS256", "RSA"),
    ],
    indirect=["agentidp_overrides"],
    ids=["ES256", "EdDSA", "RS256"],
)
async def test_signing_algorithm_is_selectable(agentidp_client, agentidp_idp, alg, kty):
    org = await make_org(agentidp_idp)
    access = await admin_token(agentidp_client, org)
    assert header_of(access)["alg"] == alg
    jwks = await jwks_of(agentidp_client)
    assert [(k["alg"], k["kty"], k["use"]) for k in jwks["keys"]] == [(alg, kty, "sig")]
    assert verify(access, jwks)["sub"]
    response = await agentidp_client.get("/.well-known/oauth-authorization-server")
    assert (await response.get_json())["access_token_signing_alg_values_supported"] == [alg]
    # A rotated key keeps the configured algorithm.
    new = await agentidp_idp.keys.rotate(agentidp_idp.db, delay_s=0)
    await agentidp_idp.keys.load(agentidp_idp.db)
    assert new is not None
    assert new.alg == alg
    assert header_of(await admin_token(agentidp_client, org))["kid"] == new.kid


# Rotating KEY_STORE_SECRET -----------------------------------------------------------

OLD_SECRET = "test-only-key-store-secret"  # what config/settings.toml's [test] stores keys under
NEW_SECRET = "a-new-key-store-secret-of-at-least-32-bytes"


def _keyring(idp: Any, **overrides: Any) -> Keyring:
    """A second process's keyring on the same store, with other settings."""
    storage = {k: idp.settings.get(k) for k in ("DATABASE_URL", "REDIS_URL", "DATA_DIR")}
    return Keyring(load_settings(env="test", overrides={**storage, **overrides}, environ={}))


async def _audited(idp: Any, action: str) -> list[Any]:
    return list(await idp.db.fetch("SELECT * FROM audit_events WHERE action = $1", action))


async def test_key_store_secret_rotation(agentidp_client, agentidp_idp):
    idp = agentidp_idp
    kid = idp.keys.signing_key().kid

    # A changed secret alone: one line that names the fix, no traceback chain.
    stuck = _keyring(idp, KEY_STORE_SECRET=NEW_SECRET)
    with pytest.raises(KeyError_) as raised:
        await stuck.load(idp.db)
    message = str(raised.value)
    assert message == (
        f"signing key {kid} cannot be decrypted with KEY_STORE_SECRET or "
        "KEY_STORE_SECRET_PREVIOUS: set KEY_STORE_SECRET_PREVIOUS to the secret it was "
        "stored with, then run `agentidp keys reencrypt`"
    )
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
    assert NEW_SECRET not in message
    assert OLD_SECRET not in message
    # Nor does it add a key under a secret the stored ones were not written with.
    with pytest.raises(KeyError_, match="cannot be decrypted"):
        await stuck.rotate(idp.db, delay_s=0)
    assert await idp.db.fetchval("SELECT COUNT(*) FROM signing_keys") == 1

    # With the old secret as KEY_STORE_SECRET_PREVIOUS the keys load and sign.
    rotating = _keyring(idp, KEY_STORE_SECRET=NEW_SECRET, KEY_STORE_SECRET_PREVIOUS=OLD_SECRET)
    await rotating.load(idp.db)
    assert rotating.signing_key().kid == kid
    # A key rotated meanwhile is stored under the new secret; both load.
    new = await rotating.rotate(idp.db, delay_s=0)
    assert new is not None
    await rotating.load(idp.db)
    assert rotating.signing_key().kid == new.kid

    # reencrypt moves the old key (only it) under the new secret, audited.
    assert await rotating.reencrypt(idp.db, audit=idp.audit) == 1
    events = await _audited(idp, "key.reencrypted")
    assert len(events) == 1
    assert json.loads(events[0]["details"]) == {"kids": [kid]}
    assert await rotating.reencrypt(idp.db, audit=idp.audit) == 0  # nothing left to move

    # The new secret alone now suffices, and the old one no longer opens the store.
    after = _keyring(idp, KEY_STORE_SECRET=NEW_SECRET)
    await after.load(idp.db)
    assert {k.kid for k, _ in after.states()} == {kid, new.kid}
    with pytest.raises(KeyError_, match="cannot be decrypted"):
        await _keyring(idp, KEY_STORE_SECRET=OLD_SECRET).load(idp.db)


async def test_reencrypt_writes_nothing_when_a_key_cannot_be_decrypted(agentidp_idp):
    idp = agentidp_idp
    first = idp.keys.signing_key().kid
    # One key under another secret (a store two rotations behind).
    elsewhere = _keyring(
        idp,
        KEY_STORE_SECRET="yet-another-secret-that-is-32-bytes-long",
        KEY_STORE_SECRET_PREVIOUS=OLD_SECRET,
    )
    while True:
        # reencrypt walks keys by kid: put the bad one after the good one, so that a
        # non-transactional rewrite would have changed the good one before failing.
        other = await elsewhere.rotate(idp.db, delay_s=0)
        assert other is not None
        if other.kid > first:
            break
        await idp.db.execute("DELETE FROM signing_keys WHERE kid = $1", other.kid)
    before = {r["kid"]: r["private_key"] for r in await idp.db.fetch("SELECT * FROM signing_keys")}

    rotating = _keyring(idp, KEY_STORE_SECRET=NEW_SECRET, KEY_STORE_SECRET_PREVIOUS=OLD_SECRET)
    with pytest.raises(KeyError_, match="cannot be decrypted"):
        await rotating.reencrypt(idp.db, audit=idp.audit)
    after = {r["kid"]: r["private_key"] for r in await idp.db.fetch("SELECT * FROM signing_keys")}
    assert after == before  # one transaction: the decryptable key was not rewritten either
    assert first in after
    assert await _audited(idp, "key.reencrypted") == []


# Every process publishes a rotation at once ---------------------------------------

# Far beyond any test: only an announcement can make another process reload in time.
SLOW_REFRESH = {"KEYS_REFRESH_INTERVAL": 3600, "KEY_ACTIVATION_DELAY": 3600}


@pytest.mark.parametrize("agentidp_overrides", [SLOW_REFRESH], indirect=True)
async def test_rotation_and_revocation_are_published_at_once_in_this_process(
    agentidp_client, agentidp_idp
):
    idp = agentidp_idp
    old = idp.keys.signing_key().kid
    new = await idp.keys.rotate(idp.db)  # no load() call: rotate reloads this process
    assert new is not None
    assert {k["kid"] for k in (await jwks_of(agentidp_client))["keys"]} == {old, new.kid}
    assert await idp.keys.revoke(idp.db, new.kid)
    assert {k["kid"] for k in (await jwks_of(agentidp_client))["keys"]} == {old}


async def _published(client: Any) -> set[str]:
    return {k["kid"] for k in (await jwks_of(client))["keys"]}


async def _eventually(check: Any, what: str) -> None:
    """Wait for a notification's effect; the bound only stops a hung test (no timing claim)."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


@pytest.mark.parametrize("agentidp_backend", ["postgres"])  # SQLite serves one process only
@pytest.mark.parametrize("agentidp_overrides", [SLOW_REFRESH], indirect=True)
async def test_another_process_publishes_a_rotation_at_once(
    agentidp_client, agentidp_idp, agentidp_settings
):
    idp = agentidp_idp
    old = idp.keys.signing_key().kid
    # A second server on the same database, as another worker or pod is.
    other_app = create_app(
        load_settings(env="test", overrides=agentidp_settings.to_dict(), environ={})
    )
    async with other_app.test_app() as other:
        other_client = other.test_client()
        assert await _published(other_client) == {old}
        new = await idp.keys.rotate(idp.db)
        assert new is not None

        async def has_new() -> bool:
            return await _published(other_client) == {old, new.kid}

        await _eventually(has_new, "the other process never published the rotated key")
        assert await idp.keys.revoke(idp.db, old)

        async def dropped_old() -> bool:
            return await _published(other_client) == {new.kid}

        await _eventually(dropped_old, "the other process still publishes the revoked key")


# Keys from settings ---------------------------------------------------------------


def _rsa_pair() -> tuple[rsa.RSAPrivateKey, str, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, private_pem, public_pem


def rfc7638_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 §3: SHA-256 of the required members, sorted, without whitespace."""
    numbers = public_key.public_numbers()

    def uint(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    members = {"e": uint(numbers.e), "kty": "RSA", "n": uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64(hashlib.sha256(canonical).digest())


PRIVATE, PRIVATE_PEM, PUBLIC_PEM = _rsa_pair()


@pytest.mark.parametrize(
    "agentidp_overrides",
    [
        {"JWT_PRIVATE_KEY": PRIVATE_PEM, "JWT_PUBLIC_KEY": PUBLIC_PEM},
        # As an environment variable often carries it: newlines escaped.
        {"JWT_PRIVATE_KEY": PRIVATE_PEM.replace("\n", "\\n")},
    ],
    indirect=True,
    ids=["pair", "escaped_private_only"],
)
async def test_keys_from_settings_sign_and_are_published(agentidp_client, agentidp_idp):
    idp = agentidp_idp
    kid = rfc7638_thumbprint(PRIVATE.public_key())
    org = await make_org(idp)
    access = await admin_token(agentidp_client, org)
    assert header_of(access) == {"alg": "RS256", "typ": "at+jwt", "kid": kid}

    jwks = await jwks_of(agentidp_client)
    assert [k["kid"] for k in jwks["keys"]] == [kid]
    assert "d" not in jwks["keys"][0]
    claims = jwt.decode(access, PUBLIC_PEM, algorithms=["RS256"], audience=ISSUER, issuer=ISSUER)
    assert claims["org_id"] == org["org_id"]
    assert verify(access, jwks) == claims

    assert not idp.keys.uses_store
    assert await idp.db.fetchval("SELECT COUNT(*) FROM signing_keys") == 0
    with pytest.raises(KeyError_):
        await idp.keys.rotate(idp.db, delay_s=0)
    headers = await admin_headers(agentidp_client, org)
    assert (await agentidp_client.get("/api/v1/agents", headers=headers)).status_code == 200


GARBAGE_PEM = "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"JWT_PRIVATE_KEY": PRIVATE_PEM, "JWT_PUBLIC_KEY": _rsa_pair()[2]},
            "JWT_PUBLIC_KEY is not the public half of JWT_PRIVATE_KEY",
        ),
        (
            {"JWT_PRIVATE_KEY": GARBAGE_PEM},
            "JWT_PRIVATE_KEY is not a PEM RSA, EC P-256 or Ed25519 private key",
        ),
        (
            {"JWT_PRIVATE_KEY": PUBLIC_PEM},
            "JWT_PRIVATE_KEY is a public key, not a private one",
        ),
        (
            {"JWT_PUBLIC_KEY": PUBLIC_PEM},
            "JWT_PUBLIC_KEY is set without JWT_PRIVATE_KEY: set both, or neither to use the "
            "key store (an old public key goes in JWT_PREVIOUS_PUBLIC_KEYS)",
        ),
        (
            {"JWT_PREVIOUS_PUBLIC_KEYS": PUBLIC_PEM + GARBAGE_PEM},
            "JWT_PREVIOUS_PUBLIC_KEYS: key 2 is not a PEM RSA, EC P-256 or Ed25519 public key",
        ),
        (
            {"JWT_PREVIOUS_PUBLIC_KEYS": PRIVATE_PEM},
            "JWT_PREVIOUS_PUBLIC_KEYS: key 1 is a private key; give its public half",
        ),
        (
            {"JWT_PREVIOUS_PUBLIC_KEYS": "not a pem"},
            "JWT_PREVIOUS_PUBLIC_KEYS must hold PEM public keys (RSA, EC P-256 or Ed25519)",
        ),
    ],
    ids=[
        "mismatched",
        "garbage",
        "public_as_private",
        "public_only",
        "bad_previous",
        "private_previous",
        "no_pem",
    ],
)
def test_unusable_key_settings_are_one_settings_line(tmp_path, overrides, line):
    settings = embedded_settings(tmp_path, **overrides)
    with pytest.raises(SettingsError) as raised:
        create_app(settings)
    assert raised.value.problems == [line]


# Rotating the PEM pair keeps earlier tokens valid ------------------------------------

_, PRIVATE_PEM_B, PUBLIC_PEM_B = _rsa_pair()


async def _run_app(settings: Any, work: Any) -> Any:
    app = create_app(settings)
    async with app.test_app() as test_app:
        return await work(test_app.test_client(), app.extensions["agentidp"])


@pytest.mark.parametrize(
    ("after", "active"),
    [
        # The runbook's rotation: a new pair, the old public key kept.
        ({"JWT_PRIVATE_KEY": PRIVATE_PEM_B, "JWT_PREVIOUS_PUBLIC_KEYS": PUBLIC_PEM}, True),
        # Moving to the key store the same way (newlines escaped, as in an env file).
        ({"JWT_PREVIOUS_PUBLIC_KEYS": PUBLIC_PEM.replace("\n", "\\n")}, True),
        ({"JWT_PRIVATE_KEY": PRIVATE_PEM_B}, False),
        ({}, False),
    ],
    ids=["pair_with_previous", "store_with_previous", "pair_alone", "store_alone"],
)
async def test_previous_public_keys_keep_old_tokens_valid(
    agentidp_storage, tmp_path, after, active
):
    base = {"DATA_DIR": str(tmp_path), **agentidp_storage}
    org: dict[str, Any] = {}

    async def issue(client: Any, idp: Any) -> str:
        org.update(await make_org(idp))
        return await admin_token(client, org)

    pair_a = {"JWT_PRIVATE_KEY": PRIVATE_PEM, "JWT_PUBLIC_KEY": PUBLIC_PEM}
    old = await _run_app(load_settings(env="test", overrides={**base, **pair_a}, environ={}), issue)
    kid_a = rfc7638_thumbprint(PRIVATE.public_key())
    assert header_of(old)["kid"] == kid_a

    async def check(client: Any, idp: Any) -> tuple[dict[str, Any], dict[str, Any], str]:
        new = await admin_token(client, org)
        return await introspect(client, org, old), await jwks_of(client), new

    settings = load_settings(env="test", overrides={**base, **after}, environ={})
    verdict, jwks, new = await _run_app(settings, check)
    assert verdict["active"] is active
    assert header_of(new)["kid"] != kid_a  # the old key never signs again
    published = [k["kid"] for k in jwks["keys"]]
    assert (kid_a in published) is active
    if active:
        assert verify(old, jwks)["org_id"] == org["org_id"]  # for JWKS verifiers too


# The command line ---------------------------------------------------------------


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTIDP_")
        and k not in ("DATABASE_URL", "REDIS_URL", "JWT_PRIVATE_KEY", "JWT_PUBLIC_KEY")
    }
    env.update(
        AGENTIDP_ENV="test",
        DATABASE_URL=f"sqlite:///{tmp_path}/agentidp.db",
        REDIS_URL="memory://",
        DATA_DIR=str(tmp_path),
    )
    return env


def run_cli(
    tmp_path: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "agentidp"
    result = subprocess.run(
        [str(script), *args],
        env={**_cli_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def key_lines(tmp_path: Path) -> dict[str, list[str]]:
    out = run_cli(tmp_path, "keys", "list").stdout
    header, *lines = out.splitlines()
    assert header.split("\t") == ["KID", "ALG", "STATE", "SIGNS_FROM", "SOURCE"]
    rows = [line.split("\t") for line in lines if line.strip()]
    return {row[0]: row[1:] for row in rows}


def stored_kids(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "agentidp.db") as conn:
        return [row[0] for row in conn.execute("SELECT kid FROM signing_keys")]


def test_cli_orgs_and_keys(tmp_path):
    migrated = run_cli(tmp_path, "db", "migrate")
    assert "migration(s) applied" in migrated.stdout

    created = run_cli(tmp_path, "orgs", "create", "Acme Corp", "--tier", "pro")
    org = json.loads(created.stdout)
    assert set(org) == {"org_id", "name", "tier", "client_id", "client_secret"}
    assert (org["name"], org["tier"]) == ("Acme Corp", "pro")
    assert all(isinstance(v, str) and v for v in org.values())
    bad_tier = run_cli(tmp_path, "orgs", "create", "X", "--tier", "platinum", check=False)
    assert bad_tier.returncode != 0

    # `keys list` only reads: with no key yet it prints the header and creates none.
    assert key_lines(tmp_path) == {}
    assert stored_kids(tmp_path) == []

    # The first key has nothing to take over from, so it signs at once.
    created = run_cli(tmp_path, "keys", "rotate")
    assert created.stdout.strip().endswith("RS256\tsigns now")
    keys = key_lines(tmp_path)
    assert len(keys) == 1
    (first, (alg, state, _when, source)) = next(iter(keys.items()))
    assert (alg, state, source) == ("RS256", "active", "store")

    # Below KEYS_REFRESH_INTERVAL a worker could see tokens of a key it has not loaded.
    too_soon = run_cli(tmp_path, "keys", "rotate", "--delay", "5", check=False)
    assert too_soon.returncode == 2
    assert (
        "--delay (5) must be at least KEYS_REFRESH_INTERVAL (30) so that every worker "
        "publishes the key before it signs" in too_soon.stderr
    )
    assert stored_kids(tmp_path) == [first]

    rotated = run_cli(tmp_path, "keys", "rotate")
    second = rotated.stdout.split("\t")[0]
    assert "signs from" in rotated.stdout
    keys = key_lines(tmp_path)
    assert keys[first][1] == "active"
    assert keys[second][1] == "published"

    # A kid is base64url, so it may begin with "-": it is still read as the kid.
    dashed = run_cli(tmp_path, "keys", "revoke", "-HHI0wHqAMe", check=False)
    assert dashed.returncode == 1
    assert "no unrevoked key -HHI0wHqAMe" in dashed.stderr

    # Revoking a published key just unpublishes it.
    revoked = run_cli(tmp_path, "keys", "revoke", second)
    assert revoked.stdout.strip() == f"revoked {second}"
    assert key_lines(tmp_path)[second][1] == "revoked"

    # Revoking the signing key puts a new one to work at once.
    revoked = run_cli(tmp_path, "keys", "revoke", first)
    lines = revoked.stdout.strip().splitlines()
    assert lines[0] == f"revoked {first}"
    third = lines[1].split("\t")[0]
    assert lines[1].endswith("signs now")
    keys = key_lines(tmp_path)
    assert keys[first][1] == keys[second][1] == "revoked"
    assert keys[third][1] == "active"

    missing = run_cli(tmp_path, "keys", "revoke", "no-such-kid", check=False)
    assert missing.returncode != 0
    assert "no unrevoked key no-such-kid" in missing.stderr

    # The organisation the CLI created works against the server on the same database.
    asyncio.run(_token_from_cli_org(tmp_path, org, third))


async def _token_from_cli_org(tmp_path: Path, org: dict[str, str], kid: str) -> None:
    settings = embedded_settings(tmp_path)
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        body = await token(client, org["client_id"], org["client_secret"])
        assert header_of(body["access_token"])["kid"] == kid
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["org_id"] == org["org_id"]
        assert "agents:write" in claims["scope"].split()


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_fast_signing_path_verifies_with_independent_libraries(alg: str) -> None:
    from joserfc import jwt as jose_jwt

    from agentidp_server.keys.keyring import SigningKey, generate

    key = generate(alg)
    signing = SigningKey(kid="k1", alg=alg, key=key, created_at=0, activates_at=0)
    claims = {"sub": "agent-1", "scope": "a b", "n": 1, "name": "Zoë"}
    for _ in range(2):  # the second use takes the cached header
        token = signing.encode(claims, "at+jwt")
        assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "at+jwt", "kid": "k1"}
        public = jwt.PyJWK(signing.public_jwk()).key
        assert jwt.decode(token, public, algorithms=[alg]) == claims
        assert jose_jwt.decode(token, key, algorithms=[alg]).claims == claims
    # ES256 signatures are raw R||S (64 bytes), not DER (RFC 7518 §3.4).
    if alg == "ES256":
        signature = token.rsplit(".", 1)[1]
        assert len(base64.urlsafe_b64decode(signature + "==")) == 64


def test_cli_after_a_key_store_secret_change(tmp_path):
    run_cli(tmp_path, "db", "migrate")
    kid = run_cli(tmp_path, "keys", "rotate").stdout.split("\t")[0]
    fix = (
        f"Error: signing key {kid} cannot be decrypted with KEY_STORE_SECRET or "
        "KEY_STORE_SECRET_PREVIOUS: set KEY_STORE_SECRET_PREVIOUS to the secret it was "
        "stored with, then run `agentidp keys reencrypt`"
    )
    for command in (("keys", "list"), ("keys", "revoke", kid), ("keys", "reencrypt")):
        stuck = run_cli(tmp_path, *command, check=False, KEY_STORE_SECRET=NEW_SECRET)
        assert (stuck.returncode, stuck.stderr.splitlines()) == (1, [fix]), command
    assert stored_kids(tmp_path) == [kid]

    moved = run_cli(
        tmp_path,
        "keys",
        "reencrypt",
        KEY_STORE_SECRET=NEW_SECRET,
        KEY_STORE_SECRET_PREVIOUS=OLD_SECRET,
    )
    assert moved.stdout.strip() == "re-encrypted 1 key(s) under KEY_STORE_SECRET"
    listed = run_cli(tmp_path, "keys", "list", KEY_STORE_SECRET=NEW_SECRET)
    assert listed.stdout.splitlines()[1].split("\t")[:3] == [kid, "RS256", "active"]


@pytest.mark.parametrize("agentidp_backend", ["postgres"])  # SQLite serves one process only
@pytest.mark.parametrize("agentidp_overrides", [SLOW_REFRESH], indirect=True)
async def test_announcements_resume_after_the_database_connection_is_lost(
    agentidp_client, agentidp_idp, agentidp_settings
):
    idp = agentidp_idp
    old = idp.keys.signing_key().kid
    async with FaultProxy.for_url(agentidp_settings.DATABASE_URL) as proxy:
        settings = {
            **agentidp_settings.to_dict(),
            "DATABASE_URL": proxy.url(agentidp_settings.DATABASE_URL),
        }
        other_app = create_app(load_settings(env="test", overrides=settings, environ={}))
        async with other_app.test_app() as other:
            other_client = other.test_client()
            assert await _published(other_client) == {old}
            await proxy.down()  # the other worker's LISTEN connection is cut
            await proxy.up()
            new = await idp.keys.rotate(idp.db)
            assert new is not None

            async def has_new() -> bool:
                return await _published(other_client) == {old, new.kid}

            await _eventually(has_new, "the other process stopped hearing of key changes")


@pytest.mark.parametrize(
    "agentidp_overrides",
    [{"KEYS_REFRESH_INTERVAL": 0.1, "KEY_ACTIVATION_DELAY": 0.1}],
    indirect=True,
)
async def test_a_worker_that_cannot_decrypt_a_new_key_says_so_once_and_keeps_serving(
    agentidp_client, agentidp_idp, caplog
):
    idp = agentidp_idp
    org = await make_org(idp)
    old = idp.keys.signing_key().kid
    # Another process already runs on the new secret and rotates under it.
    ahead = _keyring(idp, KEY_STORE_SECRET=NEW_SECRET, KEY_STORE_SECRET_PREVIOUS=OLD_SECRET)
    new = await ahead.rotate(idp.db, delay_s=3600)
    assert new is not None
    line = f"Signing keys not reloaded: signing key {new.kid} cannot be decrypted with"

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(line)]

    async def logged() -> bool:
        return bool(said())

    await _eventually(logged, "the refresh never reported the key it cannot decrypt")
    for _ in range(5):  # several more refreshes fail the same way
        await asyncio.sleep(0.1)
    assert len(said()) == 1
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    # The keys it had keep signing and verifying.
    access = await admin_token(agentidp_client, org)
    assert header_of(access)["kid"] == old
    assert (await introspect(agentidp_client, org, access))["active"] is True
