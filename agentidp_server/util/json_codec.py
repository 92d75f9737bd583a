"""Compact JSON as UTF-8 bytes, for the token endpoint's hot path.

orjson encodes in Rust, several times faster than the standard library; for a
value it refuses (an integer beyond 64 bits, a dict with non-string keys, an
unknown type, a lone surrogate) the standard library's answer, or its error,
is kept.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """`value` as compact JSON (no spaces), non-ASCII text as UTF-8."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        # ASCII escapes: a lone surrogate (which orjson refuses) is still valid JSON.
        return json.dumps(value, separators=(",", ":")).encode()
