"""Each worker's cache of client lookups, kept true by PostgreSQL notifications.

Triggers on `agents`, `credentials` and `tenant_tiers` (migration 0006) send
`agent:<id>`, `org:<id>` or `*` on the `agentidp_clients` channel when a change
commits, whoever wrote it (API, CLI, plugin, hand-written SQL). Each worker
listens on a connection of its own and drops what changed.

The rules that keep a cached answer no staler than a fresh read would be:
- The cache is live only while delivery is proven: every PING_INTERVAL the
  worker checks that the six triggers are in place and enabled and sends
  itself a notification through its pool, which must arrive on the listening
  connection (a transaction-mode pooler, a missing migration or a disabled
  trigger all fail this). A failed proof, a lost connection or an unconfirmed
  `settle()` empties the cache and turns it off until a proof passes again.
- A fill records the generation before its query is sent; any notification
  handled since then bumps the generation and the fill is not stored (its read
  may predate the change).
- An entry lives at most `CLIENT_CACHE_TTL` seconds, a bound for the case no
  other rule catches.
- A writer in this process calls `settle()` after its commit: it returns once
  this worker has handled every notification committed before it, so the
  process that revoked a credential refuses it on its next request. Other
  workers drop it when the notification reaches them, normally well under a
  millisecond after the commit.
- Unknown clients are not cached, and an answer from the cache that would
  refuse is read again from the database (client_auth.py), so a newly created
  secret works on its first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, cast

import orjson

from agentidp_server.storage.errors import StorageUnavailable
from agentidp_server.util.ids import new_id, now_ms

if TYPE_CHECKING:
    from agentidp_server.directory.agents import ClientRecord
    from agentidp_server.idp import IdP
    from agentidp_server.storage.postgres import PostgresDatabase

CHANNEL = "agentidp_clients"
TRIGGER_FUNCTION = "agentidp_client_changed"
TRIGGERS = 6  # a row and a TRUNCATE trigger on each of the three tables
PING_INTERVAL = 5.0
PROOF_TIMEOUT = 2.0
SETTLE_TIMEOUT = 2.0
RETRY_MIN, RETRY_MAX = 1.0, 30.0
log = logging.getLogger("agentidp.client_cache")


class ClientCache:
    def __init__(self, ttl: float, size: int) -> None:
        self._ttl = ttl
        self._size = size
        # client_id -> (expiry on the monotonic clock, org_id, agent_id, the answer as
        # JSON). JSON bytes, not dicts: a tuple of atoms is not tracked by the cyclic
        # GC, and 100,000 cached dicts made each full collection a pause of tens of ms;
        # parsing also hands every caller its own copy. An OrderedDict evicts the oldest
        # in O(1) (a dict finds its first live slot by scanning past the freed ones).
        self._entries: OrderedDict[str, tuple[float, str, str, bytes]] = OrderedDict()
        self._by_agent: dict[str, str] = {}
        # sync tokens awaiting their notification: True when it arrived, False when
        # the cache went off first (nothing cached then, so nothing to wait for).
        self._settling: dict[str, asyncio.Future[bool]] = {}
        self._lost_connection = False
        self.generation = 0
        self.live = False

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, client_id: str) -> ClientRecord | None:
        """A private copy of the cached answer, its expired secrets left out."""
        entry = self._entries.get(client_id) if self.live else None
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(client_id)
            return None
        agent, secrets, tier = orjson.loads(entry[3])
        now = now_ms()
        usable = [s for s in secrets if s["expires_at"] is None or s["expires_at"] > now]
        return agent, usable, tier

    def put(self, client_id: str, record: ClientRecord, generation: int) -> None:
        agent = record[0]
        if not self.live or generation != self.generation or agent is None:
            return
        try:
            # A copy (the caller may change `record`), and copied again: orjson's result
            # keeps its 4 KiB working buffer, 15 times the text (800 MB a worker, not 80 MB).
            answer = bytes(memoryview(orjson.dumps(record)))
        except TypeError:  # a value JSON cannot hold (orjson's error is a TypeError)
            return
        self._drop(client_id)
        while len(self._entries) >= self._size:
            _, entry = self._entries.popitem(last=False)  # the oldest fill goes first
            self._by_agent.pop(entry[2], None)
        agent_id = agent["agent_id"]
        self._entries[client_id] = (time.monotonic() + self._ttl, agent["org_id"], agent_id, answer)
        self._by_agent[agent_id] = client_id

    def _drop(self, client_id: str) -> None:
        entry = self._entries.pop(client_id, None)
        if entry is not None:
            self._by_agent.pop(entry[2], None)

    def changed(self, payload: str) -> None:
        """One notification: drop what it names, and spoil fills in flight."""
        kind, _, key = payload.partition(":")
        if kind == "sync":
            waiter = self._settling.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
            return
        self.generation += 1
        if kind == "agent":
            client_id = self._by_agent.get(key)
            if client_id is not None:
                self._drop(client_id)
        elif kind == "org":
            for client_id, entry in list(self._entries.items()):
                if entry[1] == key:
                    self._drop(client_id)
        else:  # "*" (a table truncated) or anything this version does not know
            self.clear()

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_agent.clear()

    def set_live(self, live: bool) -> None:
        # Either way what is cached may have missed a notification.
        self.clear()
        self.live = live
        if not live:
            for waiter in self._settling.values():
                if not waiter.done():
                    waiter.set_result(False)
            self._settling.clear()

    async def settle(self, idp: IdP) -> None:
        """Return once this process has applied every change committed before the call."""
        if self.live and not await self._round_trip(idp, SETTLE_TIMEOUT) and self.live:
            log.warning(
                "Client cache off: a change was not confirmed within %.0f s", SETTLE_TIMEOUT
            )
            self.set_live(False)  # the listener proves delivery again before it goes back on

    async def _round_trip(self, idp: IdP, timeout: float) -> bool:
        """Send ourselves a notification through the pool; True once it has arrived.
        Notifications reach each listener in commit order, so every change committed
        before it has been handled by then."""
        token = new_id()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._settling[token] = waiter
        try:
            await idp.db.execute("SELECT pg_notify($1, $2)", CHANNEL, f"sync:{token}")
            return await asyncio.wait_for(waiter, timeout)
        except (StorageUnavailable, TimeoutError):
            return False
        finally:
            self._settling.pop(token, None)

    async def _unproven(self, idp: IdP) -> str | None:
        """Why changes might not reach this worker, or None when delivery is proven."""
        triggers = await idp.db.fetchval(
            "SELECT COUNT(*) FROM pg_trigger WHERE tgfoid = to_regproc($1) AND tgenabled <> 'D'",
            TRIGGER_FUNCTION,
        )
        if triggers != TRIGGERS:
            return (
                f"{triggers} of its {TRIGGERS} change triggers are enabled "
                "(is migration core/0006_client_changes applied?)"
            )
        if not await self._round_trip(idp, PROOF_TIMEOUT):
            return "a notification sent through the pool did not arrive"
        return None

    async def listen_forever(self, idp: IdP) -> None:
        """Keep the cache live while delivery is proven (a background task)."""
        if not self.enabled or idp.db.dialect != "postgresql":
            return
        database = cast("PostgresDatabase", idp.db)
        delay, said = RETRY_MIN, ""
        while True:
            why = ""
            try:
                self._lost_connection = False
                async with database.listen(CHANNEL, self._notified, self._lost):
                    while not self._lost_connection:
                        why = await self._unproven(idp) or ""
                        if why:
                            self.set_live(False)
                            break
                        if not self.live:
                            self.set_live(True)
                            if said:
                                log.info("Client cache on again")
                            delay, said = RETRY_MIN, ""
                        await asyncio.sleep(PING_INTERVAL)
                    else:
                        why = "the notification connection was lost"
            except StorageUnavailable as error:
                why = f"PostgreSQL is unavailable ({error})"
            finally:
                self.set_live(False)
            if why != said:  # once per reason, not once per retry
                log.warning("Client cache off: %s", why)
                said = why
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _notified(self, payload: str) -> None:
        self.changed(payload)  # looked up per call, so a test can delay delivery

    def _lost(self) -> None:
        self._lost_connection = True
        self.set_live(False)
