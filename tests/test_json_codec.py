"""The hot path's JSON encoder (agentidp_server/util/json_codec.py)."""

from __future__ import annotations

import json

from agentidp_server.util.json_codec import dumps


def test_compact_utf8_json() -> None:
    value = {"sub": "agent", "aud": ["a", "b"], "exp": 1_800_000_000, "name": "Zoë", "ok": True}
    encoded = dumps(value)
    assert b" " not in encoded
    assert "Zoë".encode() in encoded  # UTF-8, not \\u escapes
    assert json.loads(encoded) == value


def test_what_orjson_refuses_is_encoded_as_the_standard_library_does() -> None:
    for value in ({"big": 2**70}, {1: "integer key"}):
        assert dumps(value) == json.dumps(value, separators=(",", ":")).encode()


def test_a_lone_surrogate_is_escaped_not_a_crash() -> None:
    encoded = dumps({"error_description": "grant_type \ud800 is not supported"})
    assert encoded.isascii()
    assert json.loads(encoded) == {"error_description": "grant_type \ud800 is not supported"}
