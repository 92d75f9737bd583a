"""The JSON objects inside a compact JWS (RFC 7515 §7.1), read before any check.

Every unverified read of a header or payload goes through here: whatever a
client puts in a segment (bad base64, not JSON, JSON nested 40,000 deep, not an
object) is "no object", never an exception that becomes a 500.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def unverified_part(token: str, index: int) -> dict[str, Any] | None:
    """Segment `index` (0: header, 1: payload) of a compact JWS as a JSON object, or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    segment = parts[index]
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
