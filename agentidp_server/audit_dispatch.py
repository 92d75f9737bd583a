"""Delivery of committed audit events to plugins (the `audit_event` hook).

The audit table is the outbox and `audit_deliveries` its cursor, so events
written by any process — every server worker, the CLI — reach plugins, in
chain order per organisation, from one process at a time: the holder of the
`audit-dispatch` lease. The cursor advances only after a batch was handed
over, so delivery is at least once: after a crash, or when a stalled holder's
lease passes to another process, the events after the cursor are delivered
again (plugins deduplicate by `(org_id, seq)`).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from agentidp_server.ids import now_ms
from agentidp_server.leases import Lease
from agentidp_server.storage.errors import StorageUnavailable

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.audit")

LEASE = "audit-dispatch"
BATCH = 100
# Under load, commits nudge constantly: coalesce them into at most ~20 rounds a second.
MIN_ROUND_GAP = 0.05


class AuditDispatcher:
    def __init__(self, idp: IdP, lease_ms: int = 10_000) -> None:
        self.idp = idp
        self.lease = Lease(idp, LEASE, lease_ms)
        self._wake = asyncio.Event()

    @property
    def holder(self) -> str:
        return self.lease.holder

    @property
    def lease_ms(self) -> int:
        return self.lease.ttl_ms

    @lease_ms.setter
    def lease_ms(self, value: int) -> None:
        self.lease.ttl_ms = value

    @property
    def interval(self) -> float:
        return float(self.idp.settings.AUDIT_DISPATCH_INTERVAL)

    def nudge(self) -> None:
        """An event committed in this process: look now rather than at the next poll.

        With no plugin listening there is nothing to hurry: the regular poll moves
        the cursor, and a busy token endpoint is spared ~20 lease rounds a second."""
        if self.idp.hooks.implemented("audit_event"):
            self._wake.set()

    async def acquire(self) -> bool:
        return await self.lease.acquire()

    # Delivery --------------------------------------------------------------

    async def _pending(self) -> list[dict[str, Any]]:
        return await self.idp.db.fetch(
            "SELECT h.org_id, h.seq AS head, COALESCE(d.seq, 0) AS delivered "
            "FROM audit_heads h LEFT JOIN audit_deliveries d ON d.org_id = h.org_id "
            "WHERE h.seq > COALESCE(d.seq, 0) ORDER BY h.org_id"
        )

    async def _advance(self, org_id: str, seq: int) -> bool:
        """Move the cursor, only while we hold the lease (fencing a stalled holder).

        One statement, so no transaction stays open across awaits.
        """
        moved = await self.idp.db.execute(
            "INSERT INTO audit_deliveries (org_id, seq) SELECT $1, $2 WHERE EXISTS "
            "(SELECT 1 FROM leases WHERE name = $3 AND holder = $4 AND expires_at > $5) "
            "ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq",
            org_id, seq, LEASE, self.lease.holder, now_ms(),
        )  # fmt: skip
        return moved > 0

    async def deliver_pending(self) -> int:
        """Deliver every committed, undelivered event, if we hold the lease; return how many."""
        if not await self.acquire():
            return 0
        delivered = 0
        listening = self.idp.hooks.implemented("audit_event")
        for chain in await self._pending():
            org_id, cursor = chain["org_id"], int(chain["delivered"])
            if not listening:
                # Nobody to tell: move past what exists so a plugin enabled later starts now.
                if not await self._advance(org_id, int(chain["head"])):
                    return delivered
                continue
            while True:
                events = await self.idp.audit.read(org_id, cursor, limit=BATCH)
                if not events:
                    break
                for event in events:
                    await self.idp.hooks.audit_event(self.idp, event)
                cursor = int(events[-1]["seq"])
                delivered += len(events)
                if not await self.lease.keep() or not await self._advance(org_id, cursor):
                    log.warning("audit dispatch lease lost; another process delivers from here")
                    return delivered
        return delivered

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.deliver_pending()
            except StorageUnavailable:
                log.warning("audit dispatch paused: storage unavailable")
            await asyncio.sleep(MIN_ROUND_GAP)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def drain(self, timeout: float) -> None:
        """At shutdown: deliver what has committed, then hand the lease on."""
        try:
            async with asyncio.timeout(timeout):
                await self.deliver_pending()
        except TimeoutError:
            log.warning("audit events still undelivered at shutdown; the next holder delivers them")
        except StorageUnavailable:
            log.warning("audit dispatch could not drain: storage unavailable")
        with suppress(StorageUnavailable):  # else the lease expires on its own
            await self.lease.release()
