"""Agents: registration, listing, status changes. Every query is scoped to one org."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from agentidp_server.directory.scopes import Scope
from agentidp_server.storage.db import Connection, Database, Row
from agentidp_server.util.ids import could_be_client_id, new_client_id, new_id, now_ms, valid_scopes

STATUSES = ("active", "suspended", "decommissioned")
# The management API's scopes, declared through register_scopes like a plugin's;
# org admins hold them all.
KERNEL_SCOPES = (
    Scope("agents:read", "Read the organisation's agents", admin=True),
    Scope("agents:write", "Register, change and decommission agents", admin=True),
    Scope("credentials:read", "List agents' credentials (never their secrets)", admin=True),
    Scope("credentials:write", "Issue and revoke agents' credentials", admin=True),
    Scope("tokens:revoke", "Revoke any access token of the organisation", admin=True),
    Scope("audit:read", "Read and verify the organisation's audit log", admin=True),
)
# Stored on a new organisation's admin client; plugins' admin scopes are added at use.
ADMIN_SCOPES = tuple(s.name for s in KERNEL_SCOPES)
_FIELDS = "agent_id, org_id, client_id, kind, name, description, owner, deployment_env, scopes, metadata, status, created_at, updated_at"  # noqa: E501
_READ = _FIELDS + ", tokens_valid_after"


# Metadata is read with every agent (lists of 200): bound it (issue 25: 10 MB was accepted).
METADATA_MAX_BYTES = 16 * 1024  # as compact UTF-8 JSON; the README's agent section says so
METADATA_MAX_DEPTH = 8  # levels of objects and arrays, the metadata object itself included


class AgentError(ValueError):
    """Bad input for an agent; the message is safe to show."""


def check_metadata(metadata: Any) -> None:
    """A JSON object within the bounds, and standard JSON only (RFC 8259 §6: no NaN)."""
    if not isinstance(metadata, dict):
        raise AgentError("metadata must be a JSON object")
    # Iterative, so a deep value cannot exhaust the stack before its depth is refused.
    pending: list[tuple[Any, int]] = [(metadata, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > METADATA_MAX_DEPTH:
                raise AgentError(f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)
        elif isinstance(value, float) and not math.isfinite(value):
            raise AgentError("metadata must not contain NaN or Infinity (not standard JSON)")
    compact = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
    size = len(compact.encode(errors="surrogatepass"))
    if size > METADATA_MAX_BYTES:
        raise AgentError(
            f"metadata is {size} bytes as JSON; the limit is {METADATA_MAX_BYTES} bytes (16 KiB)"
        )


def _row(row: Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    agent = dict(row)
    agent["scopes"] = json.loads(agent["scopes"])
    agent["metadata"] = json.loads(agent["metadata"])
    return agent


def validate_fields(data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Check the writable fields of an agent; AgentError names the first bad one."""
    allowed = {"name", "description", "owner", "deployment_env", "scopes", "metadata", "status"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise AgentError(f"unknown field(s): {', '.join(unknown)}")
    if not partial:
        for required in ("name", "deployment_env"):
            if required not in data:
                raise AgentError(f"{required} is required")
    for key in ("name", "description", "owner", "deployment_env"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or (
                key in ("name", "deployment_env") and not value.strip()
            ):
                raise AgentError(f"{key} must be a non-empty string")
            if len(value) > 1000:
                raise AgentError(f"{key} is longer than 1000 characters")
    if "scopes" in data and not valid_scopes(data["scopes"]):
        raise AgentError("scopes must be a list of RFC 6749 scope tokens")
    if "metadata" in data:
        check_metadata(data["metadata"])
    if "status" in data and data["status"] not in ("active", "suspended"):
        raise AgentError("status must be active or suspended (DELETE decommissions)")
    return data


async def create_agent(
    conn: Connection | Database, org_id: str, data: dict[str, Any], *, kind: str = "agent"
) -> dict[str, Any]:
    validate_fields(data, partial=False)
    now = now_ms()
    agent = {
        "agent_id": new_id(),
        "org_id": org_id,
        "client_id": new_client_id(),
        "kind": kind,
        "name": data["name"].strip(),
        "description": data.get("description", ""),
        "owner": data.get("owner", ""),
        "deployment_env": data["deployment_env"].strip(),
        "scopes": sorted(set(data.get("scopes", []))),
        "metadata": data.get("metadata", {}),
        "status": "active",
        "created_at": now,
        "updated_at": now,
    }
    await conn.execute(
        f"INSERT INTO agents ({_FIELDS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        *[
            json.dumps(agent[k]) if k in ("scopes", "metadata") else agent[k]
            for k in _FIELDS.replace(" ", "").split(",")
        ],
    )
    return agent


async def get_agent(db: Connection | Database, org_id: str, agent_id: str) -> dict[str, Any] | None:
    """The agent if it belongs to `org_id`; another org's agent is None (404)."""
    return _row(
        await db.fetchrow(
            f"SELECT {_READ} FROM agents WHERE agent_id = $1 AND org_id = $2 AND kind = 'agent'",
            agent_id,
            org_id,
        )
    )


async def get_by_client_id(db: Connection | Database, client_id: str) -> dict[str, Any] | None:
    if not could_be_client_id(client_id):
        return None  # e.g. an assertion's unverified `iss` holding a NUL
    return _row(await db.fetchrow(f"SELECT {_READ} FROM agents WHERE client_id = $1", client_id))


ClientRecord = tuple[dict[str, Any] | None, list[dict[str, Any]], str | None]


async def get_clients_for_secret(
    db: Connection | Database, client_ids: list[str]
) -> dict[str, ClientRecord]:
    """The hot path of client authentication, for several clients in one round trip:
    per client_id, the agent, its usable client secrets (`credential_id`,
    `secret_hash`, `expires_at`) and its tier; an unknown client_id is absent."""
    columns = ", ".join(f"a.{c}" for c in _READ.replace(" ", "").split(","))
    args: list[Any]
    if db.dialect == "postgresql":
        # One prepared statement whatever the batch size.
        match, args = "a.client_id = ANY($2::text[])", [client_ids]
    else:
        match = f"a.client_id IN ({', '.join(f'${i + 2}' for i in range(len(client_ids)))})"
        args = [*client_ids]
    rows = await db.fetch(
        f"SELECT {columns}, c.credential_id, c.secret_hash, c.expires_at AS secret_expires_at, "
        "t.tier AS org_tier FROM agents a "
        "LEFT JOIN credentials c ON c.agent_id = a.agent_id AND c.type = 'client_secret' "
        "AND c.status = 'active' AND (c.expires_at IS NULL OR c.expires_at > $1) "
        "LEFT JOIN tenant_tiers t ON t.org_id = a.org_id "
        f"WHERE {match}",
        now_ms(),
        *args,
    )
    found: dict[str, ClientRecord] = {}
    for row in rows:
        client_id = row["client_id"]
        if client_id not in found:
            agent = {k: v for k, v in row.items() if k not in _SECRET_COLUMNS}
            found[client_id] = (_row(agent), [], row["org_tier"])
        if row["credential_id"] is not None:
            found[client_id][1].append(
                {
                    "credential_id": row["credential_id"],
                    "secret_hash": row["secret_hash"],
                    "expires_at": row["secret_expires_at"],
                }
            )
    return found


_SECRET_COLUMNS = frozenset({"credential_id", "secret_hash", "secret_expires_at", "org_tier"})


async def get_by_id(db: Connection | Database, agent_id: str) -> dict[str, Any] | None:
    return _row(await db.fetchrow(f"SELECT {_READ} FROM agents WHERE agent_id = $1", agent_id))


def encode_cursor(agent_id: str) -> str:
    return base64.urlsafe_b64encode(agent_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise AgentError("cursor is not valid") from error


async def list_agents(
    db: Database,
    org_id: str,
    *,
    status: str | None = None,
    deployment_env: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page ordered by agent_id (keyset pagination), and the next cursor."""
    where = ["org_id = $1", "kind = 'agent'"]
    args: list[Any] = [org_id]
    if status is not None:
        if status not in STATUSES:
            raise AgentError(f"status must be one of {', '.join(STATUSES)}")
        args.append(status)
        where.append(f"status = ${len(args)}")
    if deployment_env is not None:
        args.append(deployment_env)
        where.append(f"deployment_env = ${len(args)}")
    if cursor:
        args.append(decode_cursor(cursor))
        where.append(f"agent_id > ${len(args)}")
    args.append(limit + 1)
    rows = await db.fetch(
        f"SELECT {_READ} FROM agents WHERE {' AND '.join(where)} "
        f"ORDER BY agent_id LIMIT ${len(args)}",
        *args,
    )
    agents = [a for a in map(_row, rows[:limit]) if a is not None]
    next_cursor = encode_cursor(agents[-1]["agent_id"]) if len(rows) > limit else None
    return agents, next_cursor


async def update_agent(
    conn: Connection, org_id: str, agent_id: str, patch: dict[str, Any]
) -> dict[str, Any] | None:
    validate_fields(patch, partial=True)
    current = await get_agent(conn, org_id, agent_id)
    if current is None:
        return None
    if current["status"] == "decommissioned":
        raise AgentError("a decommissioned agent cannot be changed")
    merged = {**current, **patch, "updated_at": now_ms()}
    suspending = patch.get("status") == "suspended" and current["status"] != "suspended"
    if "scopes" in patch:
        merged["scopes"] = sorted(set(patch["scopes"]))
    await conn.execute(
        "UPDATE agents SET name = $1, description = $2, owner = $3, deployment_env = $4, "
        "scopes = $5, metadata = $6, status = $7, updated_at = $8, "
        "tokens_valid_after = CASE WHEN $11 THEN $12 ELSE tokens_valid_after END "
        "WHERE agent_id = $9 AND org_id = $10",
        merged["name"],
        merged["description"],
        merged["owner"],
        merged["deployment_env"],
        json.dumps(merged["scopes"]),
        json.dumps(merged["metadata"]),
        merged["status"],
        merged["updated_at"],
        agent_id,
        org_id,
        suspending,
        merged["updated_at"],  # unix ms, compared with a token's issue time in ms
    )
    return merged


async def decommission_agent(conn: Connection, org_id: str, agent_id: str) -> bool:
    """Soft delete: the row stays (audit, DID deactivation); credentials are revoked."""
    now = now_ms()
    changed = await conn.execute(
        "UPDATE agents SET status = 'decommissioned', updated_at = $1 "
        "WHERE agent_id = $2 AND org_id = $3 AND kind = 'agent'",
        now,
        agent_id,
        org_id,
    )
    if changed:
        await conn.execute(
            "UPDATE credentials SET status = 'revoked', revoked_at = $1 "
            "WHERE agent_id = $2 AND status = 'active'",
            now,
            agent_id,
        )
    return changed > 0


def public_view(agent: dict[str, Any]) -> dict[str, Any]:
    from agentidp_server.util.ids import iso

    return {
        "agent_id": agent["agent_id"],
        "org_id": agent["org_id"],
        "client_id": agent["client_id"],
        "name": agent["name"],
        "description": agent["description"],
        "owner": agent["owner"],
        "deployment_env": agent["deployment_env"],
        "scopes": agent["scopes"],
        "metadata": agent["metadata"],
        "status": agent["status"],
        "created_at": iso(agent["created_at"]),
        "updated_at": iso(agent["updated_at"]),
    }
