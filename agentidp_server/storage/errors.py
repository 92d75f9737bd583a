"""Storage errors the kernel maps to HTTP answers, whatever the adapter."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("agentidp")


class StorageError(Exception):
    """Base class for storage failures."""


class StorageUnavailable(StorageError):
    """A store did not answer in time or refused the connection: the caller gets 503."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component} unavailable: {reason}")
        self.component = component
        self.reason = reason


class Conflict(StorageError):
    """A uniqueness or foreign-key constraint refused the write."""


# The runbook's lines for a store that drops after startup.
_OUTAGE_LINES = {"database": "Unexpected pg pool error %s", "kv": "Redis client error %s"}
_OUTAGE_LOG_INTERVAL = 10.0
_last_outage_log: dict[str, float] = {}


def log_outage(error: StorageUnavailable) -> None:
    """One line per store per interval, not one per failing request."""
    now = time.monotonic()
    if now - _last_outage_log.get(error.component, -_OUTAGE_LOG_INTERVAL) >= _OUTAGE_LOG_INTERVAL:
        _last_outage_log[error.component] = now
        log.error(_OUTAGE_LINES.get(error.component, "%s"), error)
