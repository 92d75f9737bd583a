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
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from agentidp_server.directory import tenants
from agentidp_server.directory.tenants import TIERS
from agentidp_server.server import request_scope
from agentidp_server.server.http import RateLimited as RateLimited  # kept here for importers
from agentidp_server.storage.errors import StorageUnavailable
from agentidp_server.storage.kv import Counter, Guard
from agentidp_server.util import ids
from agentidp_server.util.clock import now_ms as clock_now_ms
from agentidp_server.views import Usage

if TYPE_CHECKING:
    from agentidp_server.idp import IdP

log = logging.getLogger("agentidp.quotas")


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


DAY_MS = 86_400_000


def next_midnight_ms(now_ms: int) -> int:
    # Unix time has no leap seconds: every UTC day is exactly DAY_MS long.
    return (now_ms // DAY_MS + 1) * DAY_MS


def month_end_ms(now_ms: int) -> tuple[str, int]:
    """`<year>:<month>` (month without a leading zero, as the runbook) and the month's end."""
    return _month_of_day(now_ms // DAY_MS)  # a UTC day lies in one month: once per day


@lru_cache(maxsize=4)
def _month_of_day(day: int) -> tuple[str, int]:
    now = datetime.fromtimestamp(day * DAY_MS / 1000, UTC)
    first_next = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return f"{now.year}:{now.month}", int(first_next.timestamp() * 1000)


@dataclass(frozen=True)
class Limits:
    """The limit settings, read once: dynaconf lookups cost microseconds per request."""

    window_ms: int
    rate_max: int
    auth_failures: int
    per_id_labels: bool
    daily: dict[tuple[str, str], int]  # (tier, "calls" | "tokens") -> limit, 0 unlimited

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(
            window_ms=int(settings.RATE_LIMIT_WINDOW_MS),
            rate_max=int(settings.RATE_LIMIT_MAX),
            auth_failures=int(settings.AUTH_FAILURE_LIMIT),
            per_id_labels=bool(settings.METRICS_PER_ID_LABELS),
            daily={
                (tier, kind): int(settings.get(f"TIER_{tier.upper()}_DAILY_{kind.upper()}") or 0)
                for tier in TIERS
                for kind in ("calls", "tokens")
            },
        )


@dataclass(frozen=True)
class QuotaMetrics:
    """The limits' Prometheus series (quotas/hooks.py registers them)."""

    rate_limit_hits: Any  # Counter by client_id
    tenant_api_calls: Any  # labelled(Counter) by org_id, tier: counted on every request
    billing_limit_rejections: Any  # Counter by org_id, limit_type
    rate_limit_fail_open: Any  # Counter


class Quotas:
    def __init__(self, idp: IdP) -> None:
        self.idp = idp
        self._outage = False
        self.metrics: QuotaMetrics | None = None  # set at assembly (register_metrics)

    @property
    def settings(self) -> Any:
        return self.idp.settings

    @cached_property
    def _limits(self) -> Limits:
        return Limits.of(self.settings)

    def _label(self, value: str) -> str:
        # Operators with very many agents drop per-id labels (series cardinality).
        return value if self._limits.per_id_labels else ""

    async def _count(
        self, counters: list[Counter], guard: Guard | None = None
    ) -> tuple[int, list[int]] | None:
        """`kv.incr_many`, or None when the kv is down (fail open, logged once per outage)."""
        try:
            value = await self.idp.kv.incr_many(counters, guard)
        except StorageUnavailable as error:
            if self.metrics is not None:
                self.metrics.rate_limit_fail_open.inc()
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

    def _rate_counter(self, client_id: str, now: int) -> tuple[Counter, int]:
        window_ms = self._limits.window_ms
        key, end = window_key(client_id, now, window_ms)
        return Counter(key, ttl_ms=window_ms, limit=self._limits.rate_max), end

    async def _tier_counter(self, org_id: str, kind: str, now: int) -> tuple[Counter, str]:
        tier = await self.tier(org_id)
        limit = self._limits.daily.get((tier, kind), 0)
        key = f"rate:tier:{kind}:{org_id}"
        return Counter(key, expire_at_ms=next_midnight_ms(now), limit=limit), tier

    def _over_rate(self, client_id: str, counter: Counter, end: int, now: int) -> RateLimited:
        if self.metrics is not None:
            self.metrics.rate_limit_hits.labels(self._label(client_id)).inc()
        retry = max(1, -(-(end - now) // 1000))
        window = Window(counter.limit, 0, -(-end // 1000))
        return RateLimited(
            "RATE_LIMIT_EXCEEDED",
            f"Too many requests: the limit is {counter.limit} per "
            f"{self._limits.window_ms // 1000} s",
            {**window.headers(), "Retry-After": str(retry)},
        )

    def _over_tier(self, org_id: str, kind: str, tier: str, counter: Counter) -> RateLimited:
        if self.metrics is not None:
            self.metrics.billing_limit_rejections.labels(self._label(org_id), kind).inc()
        midnight = counter.expire_at_ms or 0
        return RateLimited(
            "tier_limit_exceeded",
            f"The {tier} tier allows {counter.limit} "
            f"{'API calls' if kind == 'calls' else 'tokens'} a day; the counter resets at "
            "midnight UTC",
            {"Retry-After": str(max(1, -(-(midnight - clock_now_ms()) // 1000)))},
        )

    async def admit(
        self,
        client_id: str,
        org_id: str,
        *,
        presented: tuple[str, str] | None = None,
        token: bool = False,
    ) -> Window | None:
        """Count one authenticated request in one kv step: the client's rate window
        (RATE_LIMIT_EXCEEDED over it), then the organisation's daily calls
        (tier_limit_exceeded). With `presented` (client id as presented, source
        address), a client over the failed-authentication limit is refused first
        and nothing is counted. With `token`, the token the request will be issued
        is counted in the same step, as `count_token` would (the request's next
        `TokenService.mint` then counts nothing). The answer to the request being
        served carries the rate window's X-RateLimit headers; the window is also
        returned."""
        now = clock_now_ms()
        rate, end = self._rate_counter(client_id, now)
        calls, tier = await self._tier_counter(org_id, "calls", now)
        guard, left_ms = None, 0
        if presented is not None:
            key, left_ms, _ = self._auth_key(*presented)
            guard = Guard(key, self._limits.auth_failures)
        counters = [rate, calls]
        if token:
            counters += (await self._token_counters(client_id, org_id, now))[0]
        counted = await self._count(counters, guard)
        if counted is None:
            return None
        values = counted[1]
        if not values:
            raise self._auth_refused(left_ms)
        if values[0] > rate.limit:
            raise self._over_rate(client_id, rate, end, now)
        if self.metrics is not None:
            self.metrics.tenant_api_calls(self._label(org_id), tier).inc()
        if calls.limit > 0 and values[1] > calls.limit:
            raise self._over_tier(org_id, "calls", tier, calls)
        window = Window(rate.limit, max(rate.limit - values[0], 0), -(-end // 1000))
        current = request_scope.current()
        if current is not None:
            current.rate_headers.update(window.headers())  # the answer carries its window
        if token:
            await self._check_tokens(org_id, tier, counters[2], values[2:])
            if current is not None:
                current.prepaid_tokens += 1
        return window

    async def _token_counters(
        self, client_id: str, org_id: str, now: int
    ) -> tuple[list[Counter], str]:
        """The organisation's daily tokens, then the runbook's monthly counter; the tier."""
        tokens, tier = await self._tier_counter(org_id, "tokens", now)
        month, month_end = month_end_ms(now)
        return [tokens, Counter(f"monthly:{client_id}:{month}", expire_at_ms=month_end)], tier

    async def _check_tokens(
        self, org_id: str, tier: str, tokens: Counter, values: list[int]
    ) -> None:
        if tokens.limit > 0 and values[0] > tokens.limit:
            # The refused token was counted in the same step (the monthly counter was
            # not: the step stops there); the daily counter counts issued tokens only.
            await self._give_back([tokens.key])
            raise self._over_tier(org_id, "tokens", tier, tokens)

    async def _give_back(self, keys: list[str]) -> None:
        """`kv.give_back`; when the kv is down the count stays (limits fail open anyway)."""
        try:
            await self.idp.kv.give_back(*keys)
        except StorageUnavailable as error:
            log.warning("kv unavailable (%s): a refused token stays counted", error)

    async def refund_token(self, client_id: str, org_id: str) -> None:
        """Give back one token counted (by `count_token` or `admit`) but not issued."""
        counters, _ = await self._token_counters(client_id, org_id, clock_now_ms())
        await self._give_back([c.key for c in counters])

    async def refund_prepaid(self, client_id: str, org_id: str) -> None:
        """Give back the tokens this request's admission counted that no mint used (the
        grant refused after its no-I/O check passed). Off the successful path."""
        current = request_scope.current()
        if current is None:
            return
        unused, current.prepaid_tokens = current.prepaid_tokens, 0
        for _ in range(unused):
            await self.refund_token(client_id, org_id)

    async def count_token(self, client_id: str, org_id: str) -> None:
        """Count one token in one kv step: the organisation's daily tokens
        (tier_limit_exceeded over it), then the runbook's monthly counter."""
        now = clock_now_ms()
        counters, tier = await self._token_counters(client_id, org_id, now)
        counted = await self._count(counters)
        if counted is not None:
            await self._check_tokens(org_id, tier, counters[0], counted[1])

    def _auth_key(self, presented_client_id: str, address: str) -> tuple[str, int, int]:
        now = clock_now_ms()
        window_ms = self._limits.window_ms
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

    async def failed_authentication(self, presented_client_id: str, address: str) -> None:
        """Count a failed client authentication, or refuse (429) once a client id +
        address is at the limit: a guess then learns nothing, right or wrong."""
        key, left_ms, window_ms = self._auth_key(presented_client_id, address)
        guard = Guard(key, self._limits.auth_failures)
        counted = await self._count([Counter(key, ttl_ms=window_ms)], guard)
        if counted is not None and not counted[1]:
            raise self._auth_refused(left_ms)

    async def tier(self, org_id: str) -> str:
        """The organisation's tier, read once per request (a change applies to the next one)."""
        current = request_scope.current()
        memo: dict[str, str] = current.tiers if current is not None else {}
        if org_id not in memo:
            memo[org_id] = await tenants.get_tier(self.idp.db, org_id) or "free"
        return memo[org_id]

    async def usage(self, org_id: str) -> Usage:
        """The organisation's counters as they stand (read only, nothing is counted):
        today's API calls and tokens against its tier's daily limits, and the tokens
        of this month summed over its clients' monthly counters (one kv round trip)."""
        now = ids.now_ms()
        tier = await tenants.get_tier(self.idp.db, org_id) or "free"
        client_ids = [
            str(r["client_id"])
            for r in await self.idp.db.fetch(
                "SELECT client_id FROM agents WHERE org_id = $1 ORDER BY client_id", org_id
            )
        ]
        month, _ = month_end_ms(now)
        keys = [f"rate:tier:calls:{org_id}", f"rate:tier:tokens:{org_id}"]
        keys += [f"monthly:{client_id}:{month}" for client_id in client_ids]
        try:
            values = await self.idp.kv.get_many(*keys)
        except StorageUnavailable:
            values, available = [None] * len(keys), False
        else:
            available = True
        counts = [int(v) if v is not None else 0 for v in values]
        return Usage(
            org_id=org_id,
            tier=tier,
            api_calls_today=counts[0],
            api_calls_daily_limit=self._limits.daily.get((tier, "calls"), 0),
            tokens_today=counts[1],
            tokens_daily_limit=self._limits.daily.get((tier, "tokens"), 0),
            tokens_this_month=sum(counts[2:]),
            resets_at=next_midnight_ms(now),
            available=available,
        )

    def remember_tier(self, org_id: str, tier: str) -> None:
        """A tier read together with something else in this request (one round trip)."""
        current = request_scope.current()
        if current is not None:
            current.tiers[org_id] = tier
