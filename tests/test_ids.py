"""Identifiers: new_id is a canonical random UUID (RFC 9562 §5.4)."""

from __future__ import annotations

import uuid

from agentidp_server.util.ids import new_id


def test_new_id_is_a_canonical_version_4_uuid():
    seen = set()
    for _ in range(2000):
        text = new_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case, hyphenated: one spelling per id
        seen.add(text)
    assert len(seen) == 2000
