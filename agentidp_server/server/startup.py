"""Startup failures as one line naming what to fix (issue 15: never a traceback).

Every message here is printed after the runbook's `Failed to start server: Error: `
(or `Migration failed: Error: ` for `agentidp db migrate`). URLs are shown by host
and port only: DATABASE_URL and REDIS_URL may carry a password.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any
from urllib.parse import urlsplit

from agentidp_server.storage.errors import StorageUnavailable

FAILED = "Failed to start server: Error: "
MIGRATION_FAILED = "Migration failed: Error: "
MIGRATE_HINT = "run `agentidp db migrate` first, or set MIGRATE_ON_START=true (development)"


class StartupError(Exception):
    """A startup failure already worded for the operator (one line)."""


def _where(url: str, default_port: int) -> str:
    """`host:port` of a URL, without its user name or password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"
    except ValueError:  # a malformed port: name no port rather than echo the URL
        return "(unparsable URL)"


def database_where(settings: Any) -> str:
    url = str(settings.get("DATABASE_URL") or "")
    if not url or url.startswith("sqlite"):
        return "the embedded SQLite database"
    return f"PostgreSQL at {_where(url, 5432)} (DATABASE_URL)"


def redis_where(settings: Any) -> str:
    url = str(settings.get("REDIS_URL") or "")
    if not url or url.startswith("memory"):
        return "the in-process kv"
    return f"Redis at {_where(url, 6379)} (REDIS_URL)"


def _chain(error: BaseException) -> list[BaseException]:
    """The error and its causes: our wrappers (PluginError, StorageUnavailable) keep less."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _sanitised(text: str, settings: Any) -> str:
    for key in ("DATABASE_URL", "REDIS_URL"):
        url = str(settings.get(key) or "")
        if url:
            text = text.replace(url, f"<{key}>")
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                text = text.replace(password, "***")
    return text.splitlines()[0] if text else text


def describe(error: BaseException, settings: Any) -> str:
    """One line for a failure while opening storage or checking its schema."""
    chain = _chain(error)
    for link in chain:
        if isinstance(link, StartupError):
            return str(link)
    for link in chain:
        text = _sanitised(str(link), settings)
        name = type(link).__name__
        if isinstance(link, sqlite3.OperationalError) and "no such table" in text:
            table = text.rsplit(" ", 1)[-1]
            return f"{database_where(settings)} has no table {table}: {MIGRATE_HINT}"
        if name == "UndefinedTableError":  # asyncpg's, matched by name: imported lazily
            return f"{database_where(settings)}: {text}: {MIGRATE_HINT}"
        if name == "InvalidCatalogNameError":
            return f"{database_where(settings)}: {text} (create it, or fix DATABASE_URL)"
        if isinstance(link, OSError | TimeoutError) or name == "CannotConnectNowError":
            component = redis_where(settings) if _is_redis(chain) else database_where(settings)
            if isinstance(link, ConnectionRefusedError):
                reason = "connection refused"
            elif isinstance(link, TimeoutError):
                reason = "timed out"
            else:
                reason = text or name
            return f"cannot connect to {component}: {reason}"
        if type(link).__module__.startswith("asyncpg"):
            return f"{database_where(settings)}: {text or name}"
    text = _sanitised(str(error), settings)
    return text or type(error).__name__


def _is_redis(chain: list[BaseException]) -> bool:
    return any(
        (isinstance(e, StorageUnavailable) and e.component == "kv")
        or type(e).__module__.startswith("redis")
        for e in chain
    )


def port_in_use(settings: Any, error: OSError) -> str:
    """The listener could not bind: name the address and the setting that moves it."""
    address = f"{settings.HOST}:{settings.PORT}"
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {settings.PORT} is already in use ({address}); "
            "stop the other process or set PORT"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot bind {address}: HOST {settings.HOST} is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"permission denied binding {address}: use a PORT above 1023"
    return f"cannot bind {address}: {error.strerror or error}; check HOST and PORT"
