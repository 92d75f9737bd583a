"""Identifiers, secrets and times used across the kernel."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime

# Re-exported: the kernel's modules read the clock through `ids.now_ms`.
from agentidp_server.util.clock import now_ms as now_ms

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


def new_id() -> str:
    """A random (version 4) UUID in its canonical text form, RFC 9562 §5.4."""
    # The same as str(uuid.uuid4()) for a quarter of its cost (it is on the token path).
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10xx (RFC 9562 §4.1)
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_client_id() -> str:
    # Lower-case hex: one canonical spelling per client (rate-limit buckets key on it).
    return secrets.token_hex(16)


_CLIENT_ID = re.compile(r"[0-9a-f]{32}")


def could_be_client_id(value: str) -> bool:
    """Whether `value` has the shape `new_client_id` makes; anything else is no client
    of ours and is answered "unknown" without a query (a NUL cannot reach SQL)."""
    return _CLIENT_ID.fullmatch(value) is not None


def new_secret() -> str:
    """256 bits from the OS's random source."""
    return secrets.token_urlsafe(32)


def hash_secret(pepper: str, secret: str) -> str:
    """A keyed hash: a full-entropy secret needs no slow password hash."""
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(pepper: str, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)


# The last instant RFC 3339's four-digit year (and Python's datetime) can show.
LATEST_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z
EARLIEST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    # A row stored out of range (by an older server) renders clamped rather than a 500.
    clamped = min(max(ms, EARLIEST_MS), LATEST_MS)
    return (
        datetime.fromtimestamp(clamped / 1000, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


def parse_iso(value: str) -> int:
    """An RFC 3339 time (with an offset or Z) as unix ms; ValueError otherwise."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("time must carry a UTC offset or Z")
    return int(parsed.timestamp() * 1000)


def valid_scopes(scopes: object) -> bool:
    return isinstance(scopes, list) and all(
        isinstance(s, str) and SCOPE_TOKEN.match(s) for s in scopes
    )
