"""The tamper-evident audit log: one hash chain per organisation.

Each event stores its position (`seq`), the previous event's hash and its own
hash: SHA-256 over the RFC 8785 (JCS) canonical JSON of every other field. An
event is appended in the same transaction as the change it records, under the
chain head's row lock; `(org_id, seq)` is the primary key, so a fork is
impossible, not merely unlikely. Events carry no secrets and no tokens (a
`jti` is fine). After commit, `audit_dispatch` hands events to plugins (the
`audit_event` hook) off the request path, in chain order.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentidp_server.audit import postgres as audit_pg
from agentidp_server.audit.dispatch import AuditDispatcher
from agentidp_server.server import request_scope
from agentidp_server.storage.batching import Batcher
from agentidp_server.storage.db import Connection, Database
from agentidp_server.util.canonical_json import canonical
from agentidp_server.util.ids import iso, new_id, now_ms
from agentidp_server.views import ChainReport

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.keys.keyring import Keyring

log = logging.getLogger("agentidp.audit")

GENESIS = "0" * 64
# Events whose organisation is unknown (a failed login with an unknown client id).
SYSTEM_ORG = "system"
_COLUMNS = (
    "org_id", "seq", "event_id", "occurred_at", "action", "actor_client_id", "actor_agent_id",
    "target_type", "target_id", "outcome", "reason", "request_id", "source_ip", "details",
    "prev_hash",
)  # fmt: skip
_STORED = (*_COLUMNS, "hash")
_NEW_HEAD = (
    "INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (org_id) DO NOTHING"
)
# Events committed together at most (bounds one transaction's size and lock time).
GROUP_MAX = 256
_SECRET_KEYS = {"client_secret", "secret", "password", "access_token", "token", "assertion"}


def event_hash(event: Mapping[str, Any]) -> str:
    """SHA-256 of the RFC 8785 canonical form of every field but `hash`."""
    body = {name: event[name] for name in _COLUMNS}
    if isinstance(body["details"], str):
        body["details"] = json.loads(body["details"])
    return hashlib.sha256(canonical(body)).hexdigest()


def _stored(event: Mapping[str, Any], columns: tuple[str, ...]) -> list[Any]:
    """An event's values for these columns as stored (details as JSON text)."""
    return [json.dumps(event[c]) if c == "details" else event[c] for c in columns]


def _clean(details: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse to store anything that looks like a secret or a token."""
    for key, value in details.items():
        if key.lower() in _SECRET_KEYS:
            raise ValueError(f"audit details may not contain {key!r}")
        if isinstance(value, float):
            raise ValueError("audit details may not contain floats (canonical form)")
        if isinstance(value, str) and value.startswith("eyJ") and value.count(".") == 2:
            raise ValueError(f"audit detail {key!r} looks like a token")
    return dict(details)


@dataclass(frozen=True)
class AuditAction:
    """An audit action a plugin (or the kernel) records, declared through
    `register_audit_actions`."""

    name: str
    description: str


class UndeclaredAuditAction(ValueError):
    """An action no plugin declared, recorded while AUDIT_STRICT_ACTIONS is on."""


# What the kernel records (declared through the same hook as a plugin's; audit/hooks.py).
KERNEL_ACTIONS = (
    AuditAction("organization.created", "An organisation was created (CLI)"),
    AuditAction("tier.changed", "An organisation's tier changed (operator API)"),
    AuditAction("agent.created", "An agent was registered"),
    AuditAction("agent.changed", "An agent's fields changed, or it was reactivated"),
    AuditAction("agent.suspended", "An agent was suspended; its tokens are inactive"),
    AuditAction("agent.deleted", "An agent was deleted"),
    AuditAction("credential.created", "A client credential was created"),
    AuditAction("credential.revoked", "A client credential was revoked"),
    AuditAction("token.issued", "An access token was issued"),
    AuditAction("token.revoked", "An access token was revoked (RFC 7009)"),
    AuditAction("client.authentication_failed", "A client failed to authenticate"),
    AuditAction("key.rotated", "A signing key was rotated"),
    AuditAction("key.revoked", "A signing key was revoked"),
    AuditAction("key.reencrypted", "Private keys were re-encrypted under a new secret"),
)


@dataclass(frozen=True)
class Actor:
    client_id: str | None = None
    agent_id: str | None = None


class AuditLog:
    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        self.dispatcher = AuditDispatcher(idp)
        self.integrity_gauge: Any = None  # 1 intact, 0 broken (set at assembly: audit/hooks.py)
        # Off in production: the token path then pays one attribute check per event.
        self._strict: bool | None = None
        self._actions: dict[str, AuditAction] | None = None
        self._group: Batcher[tuple[Database, dict[str, Any]], dict[str, Any]] = Batcher(
            self._write, GROUP_MAX
        )

    @staticmethod
    def _draft(
        *,
        org_id: str | None,
        action: str,
        outcome: str = "success",
        actor: Actor | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An event without its chain position, the request context captured now."""
        actor = actor or Actor()
        current = request_scope.current()
        return {
            "org_id": org_id or SYSTEM_ORG,
            "event_id": new_id(),
            "occurred_at": now_ms(),
            "action": action,
            "actor_client_id": actor.client_id,
            "actor_agent_id": actor.agent_id,
            "target_type": target_type,
            "target_id": target_id,
            "outcome": outcome,
            "reason": reason,
            "request_id": current.request_id if current is not None else None,
            "source_ip": current.remote_addr if current is not None else None,
            "details": _clean(details or {}),
        }

    @property
    def actions(self) -> dict[str, AuditAction]:
        """Every declared action by name (the hook runs once, on first use)."""
        if self._actions is None:
            self._actions = self.idp._hooks.audit_actions(self.idp)
        return self._actions

    def _check(self, action: str) -> None:
        if self._strict is None:
            self._strict = bool(self.idp.settings.AUDIT_STRICT_ACTIONS)
        if self._strict and action not in self.actions:
            raise UndeclaredAuditAction(
                f"audit action {action!r} is not declared by any plugin (register_audit_actions)"
            )

    @staticmethod
    async def _chain_pg(
        conn: Connection | Database, org: str, drafts: list[dict[str, Any]]
    ) -> bool:
        """PostgreSQL: chain and insert the drafts in one statement (`audit_pg`);
        False, with nothing written, when an event cannot take that path."""
        cuts = []
        for event in drafts:
            body = {name: event[name] for name in _COLUMNS if name not in ("seq", "prev_hash")}
            cut = audit_pg.pieces(body)
            if cut is None:
                return False
            cuts.append(cut)
        rows = [_stored(event, audit_pg.GIVEN) for event in drafts]
        chained = await audit_pg.append(conn, org, rows, cuts)
        if not chained:  # the organisation's first event: its chain head does not exist yet
            await conn.execute(_NEW_HEAD, org, GENESIS)
            chained = await audit_pg.append(conn, org, rows, cuts)
        for event, link in zip(drafts, chained, strict=True):
            event.update(seq=link["seq"], prev_hash=link["prev_hash"], hash=link["hash"])
        return True

    @staticmethod
    async def _chain(conn: Connection, org: str, drafts: list[dict[str, Any]]) -> None:
        """Give drafts of one organisation their positions and hashes, and insert them,
        under the chain head's row lock (PostgreSQL) or the writer lock (SQLite)."""
        if conn.dialect == "postgresql" and await AuditLog._chain_pg(conn, org, drafts):
            return
        lock = " FOR UPDATE" if conn.dialect == "postgresql" else ""
        select_head = f"SELECT seq, hash FROM audit_heads WHERE org_id = $1{lock}"
        head = await conn.fetchrow(select_head, org)
        if head is None:
            await conn.execute(_NEW_HEAD, org, GENESIS)
            head = await conn.fetchrow(select_head, org)
        assert head is not None
        seq, prev = int(head["seq"]), str(head["hash"])
        for event in drafts:
            seq += 1
            event.update(seq=seq, prev_hash=prev)
            event["hash"] = prev = event_hash(event)
        rows = [_stored(event, _STORED) for event in drafts]
        # One multi-row INSERT: a batch costs one round trip, not one per event.
        width = len(_STORED)
        values = ", ".join(
            "(" + ", ".join(f"${i * width + j}" for j in range(1, width + 1)) + ")"
            for i in range(len(rows))
        )
        await conn.execute(
            f"INSERT INTO audit_events ({', '.join(_STORED)}) VALUES {values}",
            *[value for row in rows for value in row],
        )
        await conn.execute(
            "UPDATE audit_heads SET seq = $1, hash = $2 WHERE org_id = $3", seq, prev, org
        )

    async def append(self, conn: Connection, **fields: Any) -> dict[str, Any]:
        """Append one event inside the caller's transaction; return it.

        Fields: `org_id`, `action`, and optionally `outcome`, `actor`,
        `target_type`, `target_id`, `reason`, `details`. The caller commits;
        the event reaches plugins once `published()` is called after that
        commit (see `record`).
        """
        self._check(fields["action"])
        event = self._draft(**fields)
        await self._chain(conn, event["org_id"], [event])
        return event

    async def record(self, db: Database, **fields: Any) -> dict[str, Any]:
        """Append in a transaction of its own and return once it has committed.

        Events recorded at the same moment share one transaction (group
        commit): each caller still waits for the commit of its own event, but
        a busy token endpoint pays one commit per batch, not per token.
        """
        self._check(fields["action"])
        return await self._group.submit((db, self._draft(**fields)))

    async def _write(self, batch: list[tuple[Database, dict[str, Any]]]) -> list[dict[str, Any]]:
        by_org: dict[str, list[dict[str, Any]]] = {}
        for _, event in batch:
            by_org.setdefault(event["org_id"], []).append(event)
        # Every caller passes the app's database; a batch is written through the first's.
        db = batch[0][0]
        if len(by_org) == 1 and db.dialect == "postgresql":
            # The usual batch: one statement, committed on its own (one round trip).
            ((org, drafts),) = by_org.items()
            if await self._chain_pg(db, org, drafts):
                self.published(*drafts)
                return drafts
        async with db.transaction() as conn:
            # Heads locked in one order, so two processes' batches cannot deadlock.
            for org in sorted(by_org):
                await self._chain(conn, org, by_org[org])
        events = [event for _, event in batch]
        self.published(*events)
        return events

    async def read(self, org_id: str, after_seq: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Committed events of one chain after `after_seq`, in order.

        The audit table is the outbox: a plugin that needs at-least-once
        processing stores the last `seq` it handled and resumes from it here.
        """
        rows = await self.idp.db.fetch(
            "SELECT * FROM audit_events WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            org_id,
            after_seq,
            limit,
        )
        return [public_view(r) for r in rows]

    async def verify(self, org_id: str) -> ChainReport:
        """Recompute one organisation's whole hash chain and its newest signed
        checkpoint (as `agentidp audit verify --org` does): intact, or the first
        broken event and why. Costs time in proportion to the chain's length."""
        return await verify_chain(self.idp.db, org_id, self.idp.keys)

    async def verify_all(self) -> list[ChainReport]:
        """`verify` for every organisation's chain, in `org_id` order."""
        return await verify_all(self.idp.db, None, self.idp.keys)

    def published(self, *events: dict[str, Any]) -> None:
        """Committed events: have the dispatcher look now (never call before commit)."""
        if events:
            self.dispatcher.nudge()


def public_view(row: Mapping[str, Any]) -> dict[str, Any]:
    event = dict(row)
    if isinstance(event.get("details"), str):
        event["details"] = json.loads(event["details"])
    event["occurred_at"] = iso(event["occurred_at"])
    return event


@dataclass
class Sweep:
    """How far a verification has got in one chain: the last event it checked."""

    seq: int
    hash: str
    count: int = 0


async def checkpoints_of(db: Database, org_id: str, keys: Keyring | None) -> list[dict[str, Any]]:
    if keys is None:
        return []
    return await db.fetch("SELECT * FROM audit_checkpoints WHERE org_id = $1 ORDER BY seq", org_id)


async def start_sweep(
    db: Database, org_id: str, keys: Keyring | None, checkpoints: list[dict[str, Any]]
) -> Sweep | ChainReport:
    """Where a chain begins: event 1, or after the signed checkpoint at a retention cut."""
    from agentidp_server.audit.checkpoints import check_signature

    first = await db.fetchval("SELECT MIN(seq) FROM audit_events WHERE org_id = $1", org_id)
    if first is not None and first > 1:
        # Pruned by retention: the chain resumes from the signed hash at the cut.
        cut = next((c for c in checkpoints if c["seq"] == first - 1), None)
        if cut is None or (keys is not None and check_signature(keys, cut) is not None):
            return ChainReport(org_id, 0, False, 1, "event 1 was deleted")
        return Sweep(first - 1, cut["hash"])
    return Sweep(0, GENESIS)


async def scan(
    db: Database, org_id: str, sweep: Sweep, limit: int | None = None, batch: int = 1000
) -> ChainReport | None:
    """Re-hash the events after `sweep` (at most `limit`), advancing it; a report if broken."""
    checked = 0
    while limit is None or checked < limit:
        size = batch if limit is None else min(batch, limit - checked)
        rows = await db.fetch(
            "SELECT * FROM audit_events WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            org_id,
            sweep.seq,
            size,
        )
        for row in rows:
            sweep.count += 1
            expected = sweep.seq + 1
            if row["seq"] != expected:
                return ChainReport(
                    org_id, sweep.count, False, expected, f"event {expected} was deleted"
                )
            if event_hash(row) != row["hash"]:
                return ChainReport(org_id, sweep.count, False, row["seq"], "event was edited")
            if row["prev_hash"] != sweep.hash:
                return ChainReport(
                    org_id, sweep.count, False, row["seq"], "event was inserted or reordered"
                )
            sweep.seq, sweep.hash = row["seq"], row["hash"]
        checked += len(rows)
        if len(rows) < size:
            break
    return None


async def check_tail(
    db: Database,
    org_id: str,
    keys: Keyring | None,
    checkpoints: list[dict[str, Any]],
    count: int,
) -> ChainReport | None:
    """Truncation and rewriting: the head and the newest signed checkpoint against the
    chain's last event. Cheap, so the background check runs it every round."""
    from agentidp_server.audit.checkpoints import check_signature

    last_row = await db.fetchrow(
        "SELECT seq, hash FROM audit_events WHERE org_id = $1 ORDER BY seq DESC LIMIT 1", org_id
    )
    last, last_hash = (last_row["seq"], last_row["hash"]) if last_row else (0, GENESIS)
    if keys is not None and checkpoints:
        newest = checkpoints[-1]
        problem = check_signature(keys, newest)
        if problem is not None:
            return ChainReport(org_id, count, False, newest["seq"], problem)
        if newest["seq"] > last:
            return ChainReport(
                org_id, count, False, last + 1,
                f"events {last + 1}..{newest['seq']} were deleted (truncated; the signed "
                f"checkpoint covers seq {newest['seq']})",
            )  # fmt: skip
        at = await db.fetchval(
            "SELECT hash FROM audit_events WHERE org_id = $1 AND seq = $2", org_id, newest["seq"]
        )
        if at is not None and at != newest["hash"]:
            return ChainReport(
                org_id, count, False, newest["seq"], "chain differs from its signed checkpoint"
            )
    head = await db.fetchrow("SELECT seq, hash FROM audit_heads WHERE org_id = $1", org_id)
    if head is not None and (head["seq"] != last or head["hash"] != last_hash):
        return ChainReport(
            org_id, count, False, last + 1, "events after this position were deleted (truncated)"
        )
    return None


async def verify_chain(
    db: Database, org_id: str, keys: Keyring | None = None, batch: int = 1000
) -> ChainReport:
    """Recompute one chain; report the first broken position and why.

    With `keys`, the newest signed checkpoint is checked too (truncation, a
    rewritten chain), and a chain pruned by retention starts from the signed
    checkpoint at its cut.
    """
    checkpoints = await checkpoints_of(db, org_id, keys)
    sweep = await start_sweep(db, org_id, keys, checkpoints)
    if isinstance(sweep, ChainReport):
        return sweep
    report = await scan(db, org_id, sweep, batch=batch)
    if report is None:
        report = await check_tail(db, org_id, keys, checkpoints, sweep.count)
    return report or ChainReport(org_id, sweep.count, True)


async def verify_all(
    db: Database, org_id: str | None = None, keys: Keyring | None = None
) -> list[ChainReport]:
    if org_id is not None:
        return [await verify_chain(db, org_id, keys)]
    rows = await db.fetch(
        "SELECT org_id FROM audit_heads UNION SELECT DISTINCT org_id FROM audit_events "
        "ORDER BY org_id"
    )
    return [await verify_chain(db, r["org_id"], keys) for r in rows]
