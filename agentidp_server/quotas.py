"""Rate limits, tier limits and usage counters, on the runbook's Redis keys.

- `rate:<client_id>:<window>`: requests per client per RATE_LIMIT_WINDOW_MS window
  (`<window>` = floor(unix_ms / RATE_LIMIT_WINDOW_MS)), counted after authentication
  on the canonical client_id.
- `rate:auth:<client_id>:<address>:<window>`: failed client authentications, so
  secrets cannot be guessed at full speed.
- `monthly:<client_id>:<year>:<month>`: tokens issued this month, expiring at its end.
- `rate:tier:calls:<org_id>` / `rate:tier:tokens:<org_id>`: daily tier counters,
  expiring at midnight UTC.

Each increment and its expiry are one atomic step (the kv's `incr`), so several
processes together admit exactly the limit. When the kv is down the limits fail
open: requests go through, counted in a metric and logged once per outage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from agentidp_server import tenants
from agentidp_server.storage.errors import StorageUnavailable

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.quotas")


class RateLimited(Exception):
    """Over a limit; `code` is the runbook's (`RATE_LIMIT_EXCEEDED` or `tier_limit_exceeded`)."""

    def __init__(self, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Window:
    limit: int
    remaining: int
    reset: int  # unix seconds

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


def window_key(client_id: str, now_ms: int, window_ms: int) -> tuple[str, int]:
    """The runbook's key and the window's end in unix ms."""
    window = now_ms // window_ms
    return f"rate:{client_id}:{window}", (window + 1) * window_ms


def next_midnight_ms(now_ms: int) -> int:
    today = datetime.fromtimestamp(now_ms / 1000, UTC).date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    return int(midnight.timestamp() * 1000)


def month_end_ms(now_ms: int) -> tuple[str, int]:
    """`<year>:<month>` (month without a leading zero, as the runbook) and the month's end."""
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    first_next = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return f"{now.year}:{now.month}", int(first_next.timestamp() * 1000)


class Quotas:
    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        self._outage = False

    @property
    def settings(self) -> Any:
        return self.idp.settings

    def _metric(self, name: str) -> Any:
        return self.idp.state.get("core", {}).get(name)

    def _label(self, value: str) -> str:
        # Operators with very many agents drop per-id labels (series cardinality).
        return value if self.settings.METRICS_PER_ID_LABELS else ""

    async def _incr(
        self, key: str, *, ttl_ms: int | None = None, expire_at_ms: int | None = None
    ) -> int | None:
        """The new count, or None when the kv is down (fail open, logged once per outage)."""
        try:
            value = await self.idp.kv.incr(key, ttl_ms=ttl_ms, expire_at_ms=expire_at_ms)
        except StorageUnavailable as error:
            counter = self._metric("rate_limit_fail_open")
            if counter is not None:
                counter.inc()
            if not self._outage:
                self._outage = True
                log.error(
                    "kv unavailable (%s): rate and tier limits fail open until it returns", error
                )
            return None
        if self._outage:
            self._outage = False
            log.info("kv available again: rate and tier limits enforced")
        return value

    async def client_request(self, client_id: str) -> Window | None:
        """Count one request of an authenticated client; RateLimited over the limit."""
        now = int(time.time() * 1000)
        window_ms = int(self.settings.RATE_LIMIT_WINDOW_MS)
        limit = int(self.settings.RATE_LIMIT_MAX)
        key, end = window_key(client_id, now, window_ms)
        count = await self._incr(key, ttl_ms=window_ms)
        if count is None:
            return None
        window = Window(limit, max(limit - count, 0), -(-end // 1000))
        if count > limit:
            hits = self._metric("rate_limit_hits")
            if hits is not None:
                hits.labels(self._label(client_id)).inc()
            retry = max(1, -(-(end - now) // 1000))
            raise RateLimited(
                "RATE_LIMIT_EXCEEDED",
                f"Too many requests: the limit is {limit} per {window_ms // 1000} s",
                {**window.headers(), "Retry-After": str(retry)},
            )
        return window

    def _auth_key(self, presented_client_id: str, address: str) -> tuple[str, int, int]:
        now = int(time.time() * 1000)
        window_ms = int(self.settings.RATE_LIMIT_WINDOW_MS)
        window = now // window_ms
        # The presented id is attacker-chosen: normalise it and bound its length.
        key = f"rate:auth:{presented_client_id.strip().lower()[:128]}:{address}:{window}"
        return key, (window + 1) * window_ms - now, window_ms

    def _auth_refused(self, left_ms: int) -> RateLimited:
        return RateLimited(
            "RATE_LIMIT_EXCEEDED",
            "Too many failed authentication attempts; retry later",
            {"Retry-After": str(max(1, -(-left_ms // 1000)))},
        )

    async def authentication_allowed(self, presented_client_id: str, address: str) -> None:
        """Refuse before checking any secret once a client id + address failed too often."""
        key, left_ms, _ = self._auth_key(presented_client_id, address)
        try:
            failures = await self.idp.kv.get(key)
        except StorageUnavailable:
            return  # fail open, as every limit here
        if failures is not None and int(failures) >= int(self.settings.AUTH_FAILURE_LIMIT):
            raise self._auth_refused(left_ms)

    async def failed_authentication(self, presented_client_id: str, address: str) -> None:
        """Count a failed client authentication."""
        key, _, window_ms = self._auth_key(presented_client_id, address)
        await self._incr(key, ttl_ms=window_ms)

    async def tier(self, org_id: str) -> str:
        """The organisation's tier, read once per request (a change applies to the next one)."""
        from quart import g, has_request_context

        memo: dict[str, str] = g.setdefault("tiers", {}) if has_request_context() else {}
        if org_id not in memo:
            memo[org_id] = await tenants.get_tier(self.idp.db, org_id) or "free"
        return memo[org_id]

    async def tier_limit(self, org_id: str, kind: str) -> None:
        """Count one API call (`calls`) or issued token (`tokens`) against the daily tier limit."""
        tier = await self.tier(org_id)
        limit = int(self.settings.get(f"TIER_{tier.upper()}_DAILY_{kind.upper()}", 0) or 0)
        now = int(time.time() * 1000)
        midnight = next_midnight_ms(now)
        count = await self._incr(f"rate:tier:{kind}:{org_id}", expire_at_ms=midnight)
        if kind == "calls":
            calls = self._metric("tenant_api_calls")
            if calls is not None:
                calls.labels(self._label(org_id), tier).inc()
        if count is None or limit <= 0:  # 0 means unlimited
            return
        if count > limit:
            rejections = self._metric("billing_limit_rejections")
            if rejections is not None:
                rejections.labels(self._label(org_id), kind).inc()
            raise RateLimited(
                "tier_limit_exceeded",
                f"The {tier} tier allows {limit} {'API calls' if kind == 'calls' else 'tokens'} "
                "a day; the counter resets at midnight UTC",
                {"Retry-After": str(max(1, -(-(midnight - now) // 1000)))},
            )

    async def token_issued(self, client_id: str) -> None:
        """The runbook's monthly token counter."""
        month, end = month_end_ms(int(time.time() * 1000))
        await self._incr(f"monthly:{client_id}:{month}", expire_at_ms=end)
