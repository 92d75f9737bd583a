"""Delivery of committed audit events to plugins (the `audit_event` hook).

The audit table is the outbox. Each plugin implementing `audit_event` is a
consumer of its own: its own cursor per organisation chain
(`audit_consumer_cursors`, the last seq its handler accepted), its own lease
(`audit-consumer:<plugin>`: one process at a time delivers to it, renewed
while its handler runs), a per-call timeout (`AUDIT_CONSUMER_TIMEOUT`) and
retry with exponential backoff (`AUDIT_CONSUMER_RETRY_MIN`/`_MAX`) for an
event its handler raised on or did not finish in time. A cursor never passes
an event its handler has not accepted, so delivery is at least once, in chain
order per organisation; a consumer stuck on one event holds back only that
chain of its own, and other consumers go on. After a crash, or when a
stalled holder's lease passes to another process, the events after the
cursor are delivered again (plugins deduplicate by `(org_id, seq)`).

`audit_deliveries` stays the kernel's cursor, moved to each chain's head by
the holder of the `audit-dispatch` lease: a consumer seen for the first time
starts there, so a plugin enabled later receives what commits from then on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentidp_server.server.leases import Lease
from agentidp_server.storage.errors import StorageUnavailable
from agentidp_server.util.ids import now_ms

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.audit")

LEASE = "audit-dispatch"
CONSUMER_LEASE = "audit-consumer:"
BATCH = 100
# Under load, commits nudge constantly: coalesce them into at most ~20 rounds a second.
MIN_ROUND_GAP = 0.05


@dataclass
class Retry:
    """A chain a consumer is stuck on: the event its handler has not accepted yet."""

    seq: int
    failures: int = 0
    due: float = 0.0  # time.monotonic() of the next attempt


@dataclass
class Consumer:
    """One plugin's `audit_event` implementation and where it stands."""

    name: str
    handler: Callable[..., Any]
    argnames: list[str]
    lease: Lease
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    retries: dict[str, Retry] = field(default_factory=dict)
    registered: bool = False


@dataclass(frozen=True)
class DispatchMetrics:
    """Per consumer, set by the process holding its lease (audit/hooks.py registers them)."""

    consumer_lag: Any  # Gauge by consumer
    consumer_failures: Any  # Counter by consumer


class AuditDispatcher:
    def __init__(self, idp: IdP, lease_ms: int = 10_000) -> None:
        self.idp = idp
        self.metrics: DispatchMetrics | None = None  # set at assembly (register_metrics)
        self.lease = Lease(idp, LEASE, lease_ms)
        self._wake = asyncio.Event()
        self._consumers: dict[str, Consumer] = {}

    @property
    def holder(self) -> str:
        return self.lease.holder

    @property
    def lease_ms(self) -> int:
        return self.lease.ttl_ms

    @lease_ms.setter
    def lease_ms(self, value: int) -> None:
        self.lease.ttl_ms = value
        for consumer in self._consumers.values():
            consumer.lease.ttl_ms = value

    @property
    def interval(self) -> float:
        return float(self.idp.settings.AUDIT_DISPATCH_INTERVAL)

    def consumers(self) -> list[Consumer]:
        """The enabled plugins implementing `audit_event`, each with its own lease."""
        for name, handler, argnames in self.idp._hooks.audit_consumers():
            if name not in self._consumers:
                self._consumers[name] = Consumer(
                    name, handler, argnames, Lease(self.idp, CONSUMER_LEASE + name, self.lease_ms)
                )
        return list(self._consumers.values())

    def nudge(self) -> None:
        """An event committed in this process: look now rather than at the next poll.

        With no plugin listening there is nothing to hurry: the regular poll moves
        the cursor, and a busy token endpoint is spared ~20 lease rounds a second."""
        if self.idp._hooks.implemented("audit_event"):
            self._wake.set()
            for consumer in self._consumers.values():
                consumer.wake.set()

    async def acquire(self) -> bool:
        return await self.lease.acquire()

    # The kernel's cursor ---------------------------------------------------

    async def _advance(self, org_id: str, seq: int) -> bool:
        """Move the kernel's cursor, only while we hold its lease (fencing a stalled holder).

        One statement, so no transaction stays open across awaits.
        """
        moved = await self.idp.db.execute(
            "INSERT INTO audit_deliveries (org_id, seq) SELECT $1, $2 WHERE EXISTS "
            "(SELECT 1 FROM leases WHERE name = $3 AND holder = $4 AND expires_at > $5) "
            "ON CONFLICT (org_id) DO UPDATE SET seq = excluded.seq",
            org_id, seq, LEASE, self.lease.holder, now_ms(),
        )  # fmt: skip
        return moved > 0

    async def _skip_to_heads(self) -> None:
        """Where consumers seen for the first time start: the heads as of now."""
        if not await self.acquire():
            return
        behind = await self.idp.db.fetch(
            "SELECT h.org_id, h.seq FROM audit_heads h "
            "LEFT JOIN audit_deliveries d ON d.org_id = h.org_id "
            "WHERE h.seq > COALESCE(d.seq, 0) ORDER BY h.org_id"
        )
        for chain in behind:
            if not await self._advance(chain["org_id"], int(chain["seq"])):
                return

    # A consumer's cursor ---------------------------------------------------

    async def _register(self, consumer: Consumer) -> None:
        """A consumer new to the database starts at the kernel's cursor (once, in any process)."""
        async with self.idp.db.transaction() as conn:
            new = await conn.execute(
                "INSERT INTO audit_consumers (name, registered_at) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING",
                consumer.name,
                now_ms(),
            )
            if new:
                await conn.execute(
                    "INSERT INTO audit_consumer_cursors (consumer, org_id, seq) "
                    "SELECT $1, org_id, seq FROM audit_deliveries",
                    consumer.name,
                )
        consumer.registered = True

    async def _advance_consumer(self, consumer: Consumer, org_id: str, seq: int) -> bool:
        """Move a consumer's cursor, only while we hold its lease (fencing a stalled holder)."""
        moved = await self.idp.db.execute(
            "INSERT INTO audit_consumer_cursors (consumer, org_id, seq) SELECT $1, $2, $3 "
            "WHERE EXISTS (SELECT 1 FROM leases WHERE name = $4 AND holder = $5 "
            "AND expires_at > $6) "
            "ON CONFLICT (consumer, org_id) DO UPDATE SET seq = excluded.seq",
            consumer.name, org_id, seq, consumer.lease.name, consumer.lease.holder, now_ms(),
        )  # fmt: skip
        return moved > 0

    async def _behind(self, consumer: Consumer) -> list[dict[str, Any]]:
        return await self.idp.db.fetch(
            "SELECT h.org_id, h.seq AS head, COALESCE(c.seq, 0) AS cursor FROM audit_heads h "
            "LEFT JOIN audit_consumer_cursors c ON c.org_id = h.org_id AND c.consumer = $1 "
            "WHERE h.seq > COALESCE(c.seq, 0) ORDER BY h.org_id",
            consumer.name,
        )

    # Delivery --------------------------------------------------------------

    async def _hand(self, consumer: Consumer, event: dict[str, Any]) -> bool:
        """Call the handler once, within the timeout, renewing the lease while it runs."""
        kwargs = {"idp": self.idp, "event": event}
        timeout = float(self.idp.settings.AUDIT_CONSUMER_TIMEOUT)
        try:
            async with consumer.lease.kept_alive():
                async with asyncio.timeout(timeout):
                    result = consumer.handler(**{n: kwargs[n] for n in consumer.argnames})
                    if inspect.isawaitable(result):
                        await result
        except Exception as error:
            reason = (
                f"no answer within {timeout:g} s (AUDIT_CONSUMER_TIMEOUT)"
                if isinstance(error, TimeoutError)
                else f"{type(error).__name__}: {error}"
            )
            self._failed(consumer, event, reason)
            return False
        retry = consumer.retries.pop(event["org_id"], None)
        if retry is not None:
            log.info(
                "audit consumer %s accepted event %s/%s after %d failed attempts",
                consumer.name, event["org_id"], event["seq"], retry.failures,
            )  # fmt: skip
        return True

    def _failed(self, consumer: Consumer, event: dict[str, Any], reason: str) -> None:
        org_id, seq = event["org_id"], int(event["seq"])
        retry = consumer.retries.get(org_id)
        if retry is None or retry.seq != seq:
            retry = consumer.retries[org_id] = Retry(seq)
        retry.failures += 1
        low = float(self.idp.settings.AUDIT_CONSUMER_RETRY_MIN)
        high = float(self.idp.settings.AUDIT_CONSUMER_RETRY_MAX)
        delay = min(high, low * 2 ** (retry.failures - 1))
        retry.due = time.monotonic() + delay
        # One line per attempt: a consumer stuck on an event is visible at each retry interval.
        log.warning(
            "audit consumer %s failed on event %s/%s (%s, attempt %d): %s; retrying in %gs",
            consumer.name, org_id, seq, event.get("action"), retry.failures, reason, delay,
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.consumer_failures.labels(consumer=consumer.name).inc()

    async def _deliver_to(self, consumer: Consumer) -> int:
        """One round for one consumer, if we hold its lease; return how many it accepted."""
        if not consumer.registered:
            await self._register(consumer)
        if not await consumer.lease.acquire():
            return 0
        delivered = 0
        behind = await self._behind(consumer)
        lag = sum(int(c["head"]) - int(c["cursor"]) for c in behind)
        try:
            for chain in behind:
                org_id, cursor = chain["org_id"], int(chain["cursor"])
                retry = consumer.retries.get(org_id)
                if retry is not None and retry.due > time.monotonic():
                    continue  # backing off on this chain; the others go on
                while True:
                    events = await self.idp.audit.read(org_id, cursor, limit=BATCH)
                    accepted, count = cursor, 0
                    for event in events:
                        if not await self._hand(consumer, event):
                            break
                        accepted, count = int(event["seq"]), count + 1
                    if accepted == cursor:
                        break
                    if not await consumer.lease.keep() or not await self._advance_consumer(
                        consumer, org_id, accepted
                    ):
                        log.warning(
                            "audit consumer %s lost its lease; another process delivers from here",
                            consumer.name,
                        )
                        return delivered
                    delivered += count
                    lag -= count
                    if accepted != int(events[-1]["seq"]):
                        break  # stuck on the next event: retried after its backoff
                    cursor = accepted
        finally:
            if self.metrics is not None:
                self.metrics.consumer_lag.labels(consumer=consumer.name).set(max(lag, 0))
        return delivered

    async def deliver_pending(self) -> int:
        """One round for every consumer (each under its own lease); return how many events
        were accepted in all. Then move the kernel's cursor to the heads."""
        consumers = self.consumers()
        for consumer in consumers:
            if not consumer.registered:
                await self._register(consumer)
        counts = await asyncio.gather(*(self._deliver_to(c) for c in consumers))
        await self._skip_to_heads()
        return sum(counts)

    def _next_wait(self, consumer: Consumer) -> float:
        """The poll interval, or sooner when a retry of this consumer falls due."""
        due = [r.due for r in consumer.retries.values()]
        wait = self.interval if not due else min(self.interval, min(due) - time.monotonic())
        return max(wait, MIN_ROUND_GAP)

    async def _run_consumer(self, consumer: Consumer) -> None:
        while True:
            consumer.wake.clear()
            try:
                await self._deliver_to(consumer)
            except StorageUnavailable:
                log.warning("audit consumer %s paused: storage unavailable", consumer.name)
            await asyncio.sleep(MIN_ROUND_GAP)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            # that arrives as the wait ends, and the task then never stops (a hung shutdown).
            with suppress(TimeoutError):
                async with asyncio.timeout(self._next_wait(consumer)):
                    await consumer.wake.wait()

    async def _run_kernel_cursor(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._skip_to_heads()
            except StorageUnavailable:
                log.warning("audit dispatch paused: storage unavailable")
            with suppress(TimeoutError):
                async with asyncio.timeout(self.interval):  # not wait_for: see above
                    await self._wake.wait()

    async def run_forever(self) -> None:
        """A task per consumer, so a slow or failing one does not hold the others up."""
        consumers = self.consumers()
        for consumer in consumers:
            with suppress(StorageUnavailable):
                await self._register(consumer)
        tasks = [asyncio.create_task(self._run_consumer(c)) for c in consumers]
        tasks.append(asyncio.create_task(self._run_kernel_cursor()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raised: the background supervisor restarts us with backoff
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, timeout: float) -> None:
        """At shutdown: deliver what has committed, then hand the leases on."""
        try:
            async with asyncio.timeout(timeout):
                await self.deliver_pending()
        except TimeoutError:
            log.warning("audit events still undelivered at shutdown; the next holder delivers them")
        except StorageUnavailable:
            log.warning("audit dispatch could not drain: storage unavailable")
        with suppress(StorageUnavailable):  # else the leases expire on their own
            await self.lease.release()
            for consumer in self._consumers.values():
                await consumer.lease.release()
