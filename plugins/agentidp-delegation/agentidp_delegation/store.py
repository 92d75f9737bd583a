"""SQL for delegation grants and the chains built through them (portable `$n` SQL)."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

# The kernel's clock (tests stop and move it); the plugin's modules read it as store.now_ms.
from agentidp_server import now_ms as now_ms

_GRANT_COLUMNS = (
    "delegation_id, org_id, delegator_id, delegatee_id, scopes, audience, expires_at, "
    "max_depth, status, created_by, created_at, revoked_at"
)


class Executor(Protocol):
    """What both `idp.db` and a transaction's connection offer."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Any: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> int: ...


def new_id() -> str:
    return str(uuid.uuid4())


def _grant(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    grant = dict(row)
    grant["scopes"] = json.loads(grant["scopes"])
    return grant


def is_live(grant: Mapping[str, Any], at_ms: int) -> bool:
    """Active and unexpired."""
    expires_at = grant["expires_at"]
    return bool(grant["status"] == "active" and (expires_at is None or expires_at > at_ms))


async def insert_grant(conn: Executor, grant: Mapping[str, Any]) -> None:
    await conn.execute(
        f"INSERT INTO delegation_grants ({_GRANT_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        grant["delegation_id"],
        grant["org_id"],
        grant["delegator_id"],
        grant["delegatee_id"],
        json.dumps(sorted(grant["scopes"])),
        grant["audience"],
        grant["expires_at"],
        grant["max_depth"],
        grant["status"],
        grant["created_by"],
        grant["created_at"],
        grant["revoked_at"],
    )


async def get_grant(db: Executor, org_id: str, delegation_id: str) -> dict[str, Any] | None:
    """The grant if it belongs to `org_id`; another organisation's grant is None (404)."""
    return _grant(
        await db.fetchrow(
            f"SELECT {_GRANT_COLUMNS} FROM delegation_grants "
            "WHERE delegation_id = $1 AND org_id = $2",
            delegation_id,
            org_id,
        )
    )


async def grants_by_id(db: Executor, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Grants by primary key: one indexed lookup for a whole chain."""
    if not ids:
        return {}
    marks = ", ".join(f"${i + 1}" for i in range(len(ids)))
    rows = await db.fetch(
        f"SELECT {_GRANT_COLUMNS} FROM delegation_grants WHERE delegation_id IN ({marks})",
        *ids,
    )
    grants = [g for g in map(_grant, rows) if g is not None]
    return {g["delegation_id"]: g for g in grants}


async def live_grants_between(
    db: Executor, org_id: str, delegator_id: str, delegatee_id: str, at_ms: int
) -> list[dict[str, Any]]:
    """Active, unexpired grants from one agent to another, newest first."""
    rows = await db.fetch(
        f"SELECT {_GRANT_COLUMNS} FROM delegation_grants "
        "WHERE delegatee_id = $1 AND delegator_id = $2 AND status = 'active' AND org_id = $3 "
        "AND (expires_at IS NULL OR expires_at > $4) "
        "ORDER BY created_at DESC, delegation_id DESC",
        delegatee_id,
        delegator_id,
        org_id,
        at_ms,
    )
    return [g for g in map(_grant, rows) if g is not None]


async def revoke_grant(conn: Executor, org_id: str, delegation_id: str, at_ms: int) -> bool:
    changed = await conn.execute(
        "UPDATE delegation_grants SET status = 'revoked', revoked_at = $1 "
        "WHERE delegation_id = $2 AND org_id = $3 AND status = 'active'",
        at_ms,
        delegation_id,
        org_id,
    )
    return changed > 0


class CursorError(ValueError):
    """A cursor this server did not hand out."""


def encode_cursor(grant: Mapping[str, Any]) -> str:
    raw = f"{grant['created_at']}:{grant['delegation_id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, delegation_id = raw.split(":", 1)
        return int(created_at), delegation_id
    except (ValueError, UnicodeDecodeError):
        raise CursorError("cursor is not valid") from None


async def list_grants(
    db: Executor,
    org_id: str,
    *,
    party: str | None,
    status: str | None,
    delegator_id: str | None,
    delegatee_id: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page in creation order (keyset pagination) and the next cursor."""
    where = ["org_id = $1"]
    args: list[Any] = [org_id]

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if party is not None:
        mark = bind(party)
        where.append(f"(delegator_id = {mark} OR delegatee_id = {mark})")
    if status is not None:
        where.append(f"status = {bind(status)}")
    if delegator_id is not None:
        where.append(f"delegator_id = {bind(delegator_id)}")
    if delegatee_id is not None:
        where.append(f"delegatee_id = {bind(delegatee_id)}")
    if cursor:
        created_at, delegation_id = decode_cursor(cursor)
        at, last = bind(created_at), bind(delegation_id)
        where.append(f"(created_at > {at} OR (created_at = {at} AND delegation_id > {last}))")
    rows = await db.fetch(
        f"SELECT {_GRANT_COLUMNS} FROM delegation_grants WHERE {' AND '.join(where)} "
        f"ORDER BY created_at, delegation_id LIMIT {bind(limit + 1)}",
        *args,
    )
    grants = [g for g in map(_grant, rows[:limit]) if g is not None]
    next_cursor = encode_cursor(grants[-1]) if len(rows) > limit else None
    return grants, next_cursor


# Chains --------------------------------------------------------------------


def chain_id(org_id: str, links: Sequence[str]) -> str:
    """Deterministic, so every process records one row per distinct chain."""
    return hashlib.sha256(f"{org_id}/{'/'.join(links)}".encode()).hexdigest()


async def record_chain(conn: Executor, org_id: str, subject_id: str, links: Sequence[str]) -> bool:
    """Remember a chain a token was issued through; True if it is new."""
    cid = chain_id(org_id, links)
    created = await conn.execute(
        "INSERT INTO delegation_chains (chain_id, org_id, subject_id, links, depth, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain_id) DO NOTHING",
        cid,
        org_id,
        subject_id,
        json.dumps(list(links)),
        len(links),
        now_ms(),
    )
    if created:
        for position, delegation_id in enumerate(links):
            await conn.execute(
                "INSERT INTO delegation_chain_links (delegation_id, chain_id, position) "
                "VALUES ($1, $2, $3) ON CONFLICT (delegation_id, chain_id) DO NOTHING",
                delegation_id,
                cid,
                position,
            )
    return created > 0


async def chains_through(
    db: Executor, org_id: str, delegation_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    """The recorded chains a grant takes part in, newest first."""
    rows = await db.fetch(
        "SELECT c.chain_id, c.subject_id, c.links, c.depth, c.created_at "
        "FROM delegation_chain_links l JOIN delegation_chains c ON c.chain_id = l.chain_id "
        "WHERE l.delegation_id = $1 AND c.org_id = $2 "
        "ORDER BY c.created_at DESC, c.chain_id LIMIT $3",
        delegation_id,
        org_id,
        limit,
    )
    return [{**dict(r), "links": json.loads(r["links"])} for r in rows]
