"""RFC 8785 (JCS) canonical JSON, with a fast path for the values audit events hold.

The `rfc8785` package serialises in pure Python, which cost about a tenth of a
token request's CPU. For ASCII strings, safe integers, booleans, null, lists
and objects with ASCII keys, orjson with sorted keys (it writes no whitespace)
gives exactly the JCS form: JCS escapes strings as ECMAScript's
JSON.stringify does (RFC 8785 §3.2.2.2: `"`, `\\`, and control characters as
\\b \\f \\n \\r \\t or lower-case \\u00xx, as orjson does), ASCII
keys sort the same by UTF-16 code units as by code points (§3.2.3), and
integers within ±(2**53 - 1) print as ECMAScript prints them (§3.2.2.3).
Anything else (non-ASCII text, floats, large integers, other types) goes to
`rfc8785`, which also raises its errors for values JCS cannot represent.
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

_INT_LIMIT = 2**53 - 1


def _plain(value: Any) -> bool:
    """Whether `value` is made only of types the fast path writes exactly as JCS."""
    kind = type(value)
    if kind is str:
        return bool(value.isascii())
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_INT_LIMIT <= value <= _INT_LIMIT)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical form of `value`, as UTF-8 bytes."""
    if _plain(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # nesting deeper than orjson allows
    return bytes(rfc8785.dumps(value))
