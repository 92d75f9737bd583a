"""Credentials: client secrets (stored only as a keyed hash) and registered public keys."""

from __future__ import annotations

import json
from typing import Any

from joserfc import jwk

from agentidp_server.storage.db import Connection, Database
from agentidp_server.util.ids import LATEST_MS, hash_secret, iso, new_id, new_secret, now_ms

TYPES = ("client_secret", "private_key_jwt")
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class CredentialError(ValueError):
    """Bad input for a credential; the message is safe to show."""


def import_public_jwk(data: Any) -> tuple[dict[str, Any], str]:
    """Validate an agent's public JWK; return it (with `kid`) and its kid."""
    if not isinstance(data, dict):
        raise CredentialError("jwk must be a JSON object")
    if _PRIVATE_MEMBERS & set(data):
        raise CredentialError("jwk must be a public key: it contains private key members")
    kty = data.get("kty")
    try:
        if kty == "RSA":
            key: Any = jwk.RSAKey.import_key(data)
            if key.raw_value.key_size < 2048:
                raise CredentialError("RSA keys must be at least 2048 bits")
        elif kty == "EC" and data.get("crv") == "P-256":
            key = jwk.ECKey.import_key(data)
        elif kty == "OKP" and data.get("crv") == "Ed25519":
            key = jwk.OKPKey.import_key(data)
        else:
            raise CredentialError("jwk must be RSA (2048+), EC P-256 or OKP Ed25519")
    except CredentialError:
        raise
    except Exception as error:
        raise CredentialError(f"jwk is not a valid key: {error}") from error
    thumbprint = key.thumbprint()
    given = data.get("kid")
    kid: str = given if isinstance(given, str) and given else thumbprint
    public = dict(key.as_dict(private=False))
    public["kid"] = kid
    return public, kid


# A credential meant to outlive a century is a typo; rotate long-lived keys instead.
MAX_LIFETIME_MS = 100 * 365 * 86_400_000


def _expiry(expires_at: int | None) -> int | None:
    """Checked before anything is written (issue 25: year 10000 rolled back with a 500)."""
    if expires_at is None:
        return None
    now = now_ms()
    latest = min(now + MAX_LIFETIME_MS, LATEST_MS)
    if not now < expires_at <= latest:
        raise CredentialError(
            "expires_at must be in the future and at most 100 years ahead, "
            f"in UTC no later than {iso(latest)}"
        )
    return expires_at


async def create_secret(
    conn: Connection | Database, agent: dict[str, Any], pepper: str, expires_at: int | None
) -> dict[str, Any]:
    secret = new_secret()
    credential_id = new_id()
    now = now_ms()
    await conn.execute(
        "INSERT INTO credentials (credential_id, agent_id, org_id, type, secret_hash, status, "
        "expires_at, created_at) VALUES ($1, $2, $3, 'client_secret', $4, 'active', $5, $6)",
        credential_id,
        agent["agent_id"],
        agent["org_id"],
        hash_secret(pepper, secret),
        _expiry(expires_at),
        now,
    )
    return {
        "credential_id": credential_id,
        "type": "client_secret",
        "client_id": agent["client_id"],
        "client_secret": secret,
        "status": "active",
        "expires_at": iso(expires_at),
        "created_at": iso(now),
    }


async def create_key(
    conn: Connection | Database, agent: dict[str, Any], jwk_data: Any, expires_at: int | None
) -> dict[str, Any]:
    public, kid = import_public_jwk(jwk_data)
    taken = await conn.fetchval(
        "SELECT COUNT(*) FROM credentials "
        "WHERE agent_id = $1 AND jwk_kid = $2 AND status = 'active'",
        agent["agent_id"],
        kid,
    )
    if taken:
        raise CredentialError(f"an active key with kid {kid!r} is already registered")
    credential_id = new_id()
    now = now_ms()
    await conn.execute(
        "INSERT INTO credentials (credential_id, agent_id, org_id, type, jwk, jwk_kid, status, "
        "expires_at, created_at) VALUES ($1, $2, $3, 'private_key_jwt', $4, $5, 'active', $6, $7)",
        credential_id,
        agent["agent_id"],
        agent["org_id"],
        json.dumps(public),
        kid,
        _expiry(expires_at),
        now,
    )
    return {
        "credential_id": credential_id,
        "type": "private_key_jwt",
        "client_id": agent["client_id"],
        "jwk": public,
        "status": "active",
        "expires_at": iso(expires_at),
        "created_at": iso(now),
    }


def public_view(row: dict[str, Any]) -> dict[str, Any]:
    """A credential without its secret hash."""
    view: dict[str, Any] = {
        "credential_id": row["credential_id"],
        "type": row["type"],
        "status": row["status"],
        "expires_at": iso(row["expires_at"]),
        "created_at": iso(row["created_at"]),
        "revoked_at": iso(row["revoked_at"]),
    }
    if row["type"] == "private_key_jwt":
        view["jwk"] = json.loads(row["jwk"])
    return view


async def list_for_agent(db: Database, agent_id: str) -> list[dict[str, Any]]:
    return await db.fetch(
        "SELECT * FROM credentials WHERE agent_id = $1 ORDER BY created_at, credential_id",
        agent_id,
    )


async def usable(db: Database, agent_id: str, kind: str) -> list[dict[str, Any]]:
    """Active, unexpired credentials of one type."""
    return await db.fetch(
        "SELECT * FROM credentials WHERE agent_id = $1 AND type = $2 AND status = 'active' "
        "AND (expires_at IS NULL OR expires_at > $3)",
        agent_id,
        kind,
        now_ms(),
    )


async def revoke(conn: Connection | Database, agent_id: str, credential_id: str) -> bool:
    changed = await conn.execute(
        "UPDATE credentials SET status = 'revoked', revoked_at = $1 "
        "WHERE credential_id = $2 AND agent_id = $3 AND status = 'active'",
        now_ms(),
        credential_id,
        agent_id,
    )
    return changed > 0
