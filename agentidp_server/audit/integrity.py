"""The background check behind the `agentidp_audit_chain_integrity` gauge.

Re-verifying every chain in full each round costs time in proportion to the
whole log, which only grows. Instead one process at a time (the holder of the
`audit-integrity` lease) sweeps each chain in slices: a round re-hashes at most
AUDIT_VERIFY_BATCH events per chain (twice what the chain grew since the last
round, if that is more, so the sweep always gains on the head), checks the tail
(head row, newest signed checkpoint) every time, and starts over once it has
reached the end. Every event is re-hashed once per cycle at a bounded cost per
round. A chain found broken is verified in full each round until it is intact
again, so the gauge does not flip back while the sweep is elsewhere. The result
is stored, and every other process exports it too (alerts take the minimum
across pods).
`agentidp audit verify` and `GET /api/v1/audit/verify` always check whole chains.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentidp_server.audit.log import (
    Sweep,
    check_tail,
    checkpoints_of,
    scan,
    start_sweep,
    verify_chain,
)
from agentidp_server.server.leases import Lease
from agentidp_server.util.ids import now_ms
from agentidp_server.views import ChainReport

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.audit")

LEASE = "audit-integrity"


class IntegrityWatch:
    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        # Held across rounds (a round is every AUDIT_VERIFY_INTERVAL), so sweeps continue.
        self.lease = Lease(
            idp, LEASE, ttl_ms=int(2_000 * float(idp.settings.AUDIT_VERIFY_INTERVAL)) + 60_000
        )
        self.sweeps: dict[str, Sweep] = {}
        self.heads: dict[str, int] = {}
        self.broken: set[str] = set()

    async def _check(self, org_id: str, head: int, batch: int) -> ChainReport | None:
        db, keys = self.idp.db, self.idp.keys
        if org_id in self.broken:
            full = await verify_chain(db, org_id, keys)
            return None if full.intact else full
        checkpoints = await checkpoints_of(db, org_id, keys)
        sweep = self.sweeps.get(org_id)
        report = await check_tail(db, org_id, keys, checkpoints, sweep.count if sweep else 0)
        if report is not None:
            return report
        if sweep is None:
            started = await start_sweep(db, org_id, keys, checkpoints)
            if isinstance(started, ChainReport):
                return started
            sweep = started
        grown = head - self.heads.get(org_id, head)
        report = await scan(db, org_id, sweep, limit=max(batch, 2 * grown))
        if report is None and sweep.seq < head:
            self.sweeps[org_id] = sweep
        else:
            self.sweeps.pop(org_id, None)  # a cycle done (or a break found): start over
        return report

    async def _share(self, intact: bool) -> None:
        await self.idp.db.execute(
            "INSERT INTO audit_integrity (scope, intact, checked_at) VALUES ('all', $1, $2) "
            "ON CONFLICT (scope) DO UPDATE SET intact = excluded.intact, "
            "checked_at = excluded.checked_at",
            1 if intact else 0,
            now_ms(),
        )

    async def round(self) -> bool | None:
        """One round over every chain. Another process holding the lease: export its
        latest result (so every pod reports the same) and return None."""
        gauge = self.idp.audit.integrity_gauge
        if not await self.lease.acquire():
            shared = await self.idp.db.fetchval(
                "SELECT intact FROM audit_integrity WHERE scope = 'all'"
            )
            if shared is not None:
                gauge.set(int(shared))
            return None
        batch = int(self.idp.settings.AUDIT_VERIFY_BATCH)
        rows = await self.idp.db.fetch(
            "SELECT o.org_id, COALESCE(h.seq, 0) AS head FROM "
            "(SELECT org_id FROM audit_heads UNION SELECT DISTINCT org_id FROM audit_events) o "
            "LEFT JOIN audit_heads h ON h.org_id = o.org_id ORDER BY o.org_id"
        )
        intact = True
        for row in rows:
            org_id, head = row["org_id"], int(row["head"])
            report = await self._check(org_id, head, batch)
            self.heads[org_id] = head
            if report is None:
                self.broken.discard(org_id)
                continue
            intact = False
            self.broken.add(org_id)
            log.error(
                "audit chain of %s broken at seq %s: %s",
                report.org_id,
                report.first_broken_seq,
                report.reason,
            )
        gauge.set(1 if intact else 0)
        await self._share(intact)
        return intact
