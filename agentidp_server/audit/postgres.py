"""The audit chain's append on PostgreSQL: one statement per organisation's batch.

Appending under a transaction costs four round trips (BEGIN, lock the head,
insert and move the head, COMMIT). Here one statement locks the head row,
chains the events and stores them: each event's RFC 8785 form is made in
Python with two marks in place of its position (`seq`) and the previous
event's hash (`prev_hash`), split at the marks, and PostgreSQL joins the
pieces with the real values and hashes them (SHA-256, in a recursive query
that walks the batch in order). The bytes hashed are exactly those
`audit.event_hash` hashes, so the chain is verified as before.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from agentidp_server.storage.db import Connection, Database
from agentidp_server.util.canonical_json import canonical

# Stand-ins for the two fields only the database knows; the hash mark is
# random per process, so no stored value can imitate it.
_HASH_MARK = "mark-" + secrets.token_hex(16)
_SEQ_MARK = 2**53 - 1
_BEFORE_HASH = b'"prev_hash":"'
_BEFORE_SEQ = b'"seq":'
_HASH_AT = _BEFORE_HASH + _HASH_MARK.encode() + b'"'
_SEQ_TEXT = str(_SEQ_MARK).encode()
_SEQ_AT = _BEFORE_SEQ + _SEQ_TEXT

# The fields stored as given, in this order (the rest come from the chain).
GIVEN = (
    "event_id", "occurred_at", "action", "actor_client_id", "actor_agent_id", "target_type",
    "target_id", "outcome", "reason", "request_id", "source_ip", "details",
)  # fmt: skip


def _statement() -> str:
    given = ", ".join(GIVEN)
    arrays = ", ".join(
        f"${i}::{'bigint' if name == 'occurred_at' else 'text'}[]"
        for i, name in enumerate(GIVEN, start=2)
    )
    pieces = ", ".join(f"${len(GIVEN) + i}::bytea[]" for i in (2, 3, 4))
    return (
        "WITH RECURSIVE "
        "head AS (SELECT seq, hash FROM audit_heads WHERE org_id = $1 FOR UPDATE), "
        f"ev AS (SELECT * FROM unnest({arrays}, {pieces}) WITH ORDINALITY "
        f"AS e({given}, before_hash, before_seq, after_seq, n)), "
        "chain (n, seq, prev_hash, hash) AS ("
        " SELECT 0::bigint, head.seq, NULL::text, head.hash FROM head"
        " UNION ALL"
        " SELECT ev.n, chain.seq + 1, chain.hash,"
        " encode(sha256(ev.before_hash || convert_to(chain.hash, 'UTF8') || ev.before_seq"
        " || convert_to((chain.seq + 1)::text, 'UTF8') || ev.after_seq), 'hex')"
        " FROM chain JOIN ev ON ev.n = chain.n + 1), "
        "appended AS (INSERT INTO audit_events "
        f"(org_id, seq, {given}, prev_hash, hash) "
        f"SELECT $1, chain.seq, {', '.join('ev.' + g for g in GIVEN)}, chain.prev_hash, chain.hash "
        "FROM chain JOIN ev ON ev.n = chain.n), "
        "moved AS (UPDATE audit_heads SET (seq, hash) = "
        "(SELECT seq, hash FROM chain ORDER BY n DESC LIMIT 1) WHERE org_id = $1) "
        "SELECT n, seq, prev_hash, hash FROM chain WHERE n > 0 ORDER BY n"
    )


APPEND = _statement()


def pieces(body: dict[str, Any]) -> tuple[bytes, bytes, bytes] | None:
    """The canonical form of `body` (every hashed field, details as an object) cut
    around its `prev_hash` and `seq` values; None if the cut is not unambiguous."""
    data = canonical({**body, "prev_hash": _HASH_MARK, "seq": _SEQ_MARK})
    if data.count(_HASH_AT) != 1 or data.count(_SEQ_AT) != 1:
        return None  # a details value mimics a mark: the caller appends the slow way
    # Sorted keys (RFC 8785 §3.2.3) put "prev_hash" before "seq".
    h = data.index(_HASH_AT) + len(_BEFORE_HASH)
    s = data.index(_SEQ_AT) + len(_BEFORE_SEQ)
    return data[:h], data[h + len(_HASH_MARK) : s], data[s + len(_SEQ_TEXT) :]


async def append(
    conn: Connection | Database,
    org: str,
    rows: Sequence[Sequence[Any]],
    cut: list[tuple[bytes, bytes, bytes]],
) -> list[dict[str, Any]]:
    """Chain and store one organisation's events (`rows`: the GIVEN fields of each,
    details as JSON text); their positions and hashes, in order. Empty when the
    organisation has no chain head yet (the caller creates it and calls again)."""
    columns = [list(column) for column in zip(*rows, strict=True)]
    split = [list(column) for column in zip(*cut, strict=True)]
    return await conn.fetch(APPEND, org, *columns, *split)
