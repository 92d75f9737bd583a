"""Signed checkpoints of the audit chains, and retention that keeps chains verifiable.

A checkpoint is a JWS (compact, signed with the server's current signing key)
over `{"org_id", "seq", "hash", "iat"}`. Verification trusts the newest valid
checkpoint: events missing after its `seq` are a truncated tail, and a chain
rewritten from scratch no longer matches its hash. Pruning old events first
checkpoints the last pruned event, so what remains starts from a signed hash.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from joserfc import jws
from joserfc.errors import JoseError

from agentidp_server.util.clock import now_s
from agentidp_server.util.ids import now_ms

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.keys.keyring import Keyring
    from agentidp_server.storage.db import Connection, Database

log = logging.getLogger("agentidp.audit")
CHECKPOINT_TYPE = "agentidp-audit-checkpoint+jws"


async def _write(
    conn: Connection | Database, keys: Keyring, org_id: str, seq: int, hash_: str, reason: str
) -> None:
    key = keys.signing_key()
    payload = {"org_id": org_id, "seq": seq, "hash": hash_, "iat": now_s()}
    token = jws.serialize_compact(
        {"alg": key.alg, "kid": key.kid, "typ": CHECKPOINT_TYPE},
        json.dumps(payload, separators=(",", ":")),
        key.key,
        algorithms=[key.alg],
    )
    # Another process may checkpoint the same position: same (org, seq, hash).
    await conn.execute(
        "INSERT INTO audit_checkpoints (org_id, seq, hash, reason, signed_at, kid, jws) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (org_id, seq) DO NOTHING",
        org_id, seq, hash_, reason, now_ms(), key.kid, token,
    )  # fmt: skip


async def checkpoint_all(idp: IdP) -> int:
    """Sign every chain whose head moved past its newest checkpoint, or whose newest
    checkpoint's key is no longer usable (revoked). Returns how many were signed."""
    rows = await idp.db.fetch(
        "SELECT h.org_id, h.seq, h.hash, c.seq AS cp_seq, c.kid AS cp_kid FROM audit_heads h "
        "LEFT JOIN audit_checkpoints c ON c.org_id = h.org_id AND c.seq = "
        "(SELECT MAX(seq) FROM audit_checkpoints WHERE org_id = h.org_id) WHERE h.seq > 0"
    )
    signed = 0
    for row in rows:
        stale_key = row["cp_kid"] is not None and idp.keys.any_key(row["cp_kid"]) is None
        if row["cp_seq"] is None or row["cp_seq"] < row["seq"] or stale_key:
            if stale_key and row["cp_seq"] == row["seq"]:
                await idp.db.execute(
                    "DELETE FROM audit_checkpoints WHERE org_id = $1 AND seq = $2",
                    row["org_id"], row["seq"],
                )  # fmt: skip
            await _write(idp.db, idp.keys, row["org_id"], row["seq"], row["hash"], "periodic")
            signed += 1
    return signed


def check_signature(keys: Keyring, checkpoint: dict[str, Any]) -> str | None:
    """None if the checkpoint's JWS is valid and matches its row; else why not."""
    key = keys.any_key(checkpoint["kid"])
    if key is None:
        return f"checkpoint at seq {checkpoint['seq']} is signed with an unknown or revoked key"
    try:
        parsed = jws.deserialize_compact(checkpoint["jws"], key.key, algorithms=[key.alg])
        payload = json.loads(parsed.payload)
    except (JoseError, ValueError):
        return f"checkpoint at seq {checkpoint['seq']} has an invalid signature"
    expected = (checkpoint["org_id"], checkpoint["seq"], checkpoint["hash"])
    if (payload.get("org_id"), payload.get("seq"), payload.get("hash")) != expected:
        return f"checkpoint at seq {checkpoint['seq']} does not match its signature"
    return None


async def prune(idp: IdP) -> int:
    """Delete events older than AUDIT_RETENTION_DAYS, checkpointing the cut first."""
    days = int(idp.settings.AUDIT_RETENTION_DAYS)
    if days <= 0:
        return 0
    cutoff = now_ms() - days * 86_400_000
    pruned = 0
    for org in await idp.db.fetch("SELECT DISTINCT org_id FROM audit_events"):
        async with idp.db.transaction() as conn:
            last = await conn.fetchrow(
                "SELECT seq, hash FROM audit_events WHERE org_id = $1 AND occurred_at < $2 "
                "ORDER BY seq DESC LIMIT 1",
                org["org_id"], cutoff,
            )  # fmt: skip
            if last is None:
                continue
            await _write(conn, idp.keys, org["org_id"], last["seq"], last["hash"], "retention")
            pruned += await conn.execute(
                "DELETE FROM audit_events WHERE org_id = $1 AND seq <= $2",
                org["org_id"], last["seq"],
            )  # fmt: skip
    if pruned:
        log.info("pruned %d audit events older than %d days", pruned, days)
    return pruned
