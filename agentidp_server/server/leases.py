"""Named leases in the database: one process at a time does a job (any adapter).

The holder renews its lease; another process takes over once it has expired.
A holder that stalls past its lease must not act on stale authority: writes
that matter check `held_in(conn)` in their own transaction (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from agentidp_server.util.clock import monotonic, now_ms

if TYPE_CHECKING:
    from agentidp_server.idp import IdP
    from agentidp_server.storage.db import Connection


class Leases:
    """`idp.leases`: named leases shared by every process of the deployment.

    A plugin prefixes its lease names with its own name (`"webhooks:deliver"`):
    the namespace is shared with the kernel's (`audit-integrity`, ...).
    """

    def __init__(self, idp: IdP) -> None:
        self._idp = idp

    def lease(self, name: str, ttl_ms: int = 10_000) -> Lease:
        """A handle on the lease `name` for this process; nothing is taken until
        `acquire()`. Keep the handle: its holder id is what fences later writes."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValueError("a lease name is a non-empty string of at most 200 characters")
        if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms < 1000:
            raise ValueError("ttl_ms must be an integer of at least 1000")
        return Lease(self._idp, name, ttl_ms)


class Lease:
    """One process's handle on a named lease: `acquire` (take or renew), `keep`
    (renew when a third has passed), `kept_alive` (renew while a block runs),
    `held_in` (a fenced check inside a transaction) and `release`."""

    def __init__(self, idp: IdP, name: str, ttl_ms: int = 10_000) -> None:
        self._idp = idp  # storage opens after the services are built: look it up per call
        self.name = name
        self.ttl_ms = ttl_ms
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._row = False
        self._renewed_at = float("-inf")  # never: the first keep() acquires

    async def acquire(self) -> bool:
        """Take or renew the lease; False while another live process holds it."""
        now = now_ms()
        if not self._row:
            await self._idp.db.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, '', 0) "
                "ON CONFLICT (name) DO NOTHING",
                self.name,
            )
            self._row = True
        taken = await self._idp.db.execute(
            "UPDATE leases SET holder = $1, expires_at = $2 "
            "WHERE name = $3 AND (holder = $1 OR expires_at < $4)",
            self.holder, now + self.ttl_ms, self.name, now,
        )  # fmt: skip
        if taken:
            self._renewed_at = monotonic()
        return taken > 0

    async def keep(self) -> bool:
        """Renew if a third of the lease has passed (so slow work does not lose it)."""
        if monotonic() - self._renewed_at < self.ttl_ms / 3000:
            return True
        return await self.acquire()

    @contextlib.asynccontextmanager
    async def kept_alive(self) -> AsyncIterator[None]:
        """Renew every third of the lease while the block runs (a slow audit consumer's
        handler), so a live holder is not taken over and its work duplicated."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.ttl_ms / 3000)
                # A failed renewal is not fatal here: the holder's fenced writes find out.
                with contextlib.suppress(Exception):
                    await self.acquire()

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def held_in(self, conn: Connection) -> bool:
        """Whether we still hold it, read inside the caller's transaction."""
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND expires_at > $3",
                self.name,
                self.holder,
                now_ms(),
            )
        )

    async def release(self) -> None:
        """Let another process take over at once."""
        await self._idp.db.execute(
            "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2",
            self.name,
            self.holder,
        )
