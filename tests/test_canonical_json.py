"""The audit hash's canonical JSON (agentidp_server/util/canonical_json.py) against RFC 8785.

The `rfc8785` package is the reference: for any JSON value, the fast path must
write the same bytes, or raise the same error where JCS has no representation.
"""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agentidp_server.util.canonical_json import _plain, canonical

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=127))
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.text(st.characters(max_codepoint=127)), inner)
    ),
    max_leaves=25,
)


def _reference(value: Any) -> bytes | type[Exception]:
    try:
        return bytes(rfc8785.dumps(value))
    except rfc8785.CanonicalizationError as error:
        return type(error)


def _ours(value: Any) -> bytes | type[Exception]:
    try:
        return canonical(value)
    except rfc8785.CanonicalizationError as error:
        return type(error)


@settings(max_examples=1000, deadline=None)
@given(_values)
def test_same_bytes_as_the_reference(value: Any) -> None:
    assert _ours(value) == _reference(value)


@pytest.mark.parametrize(
    "value",
    [
        # Every ASCII control character, quote, backslash, slash and DEL (RFC 8785 §3.2.2.2).
        "".join(chr(i) for i in range(128)),
        {"b": 1, "a": [True, False, None], "A": {"z": "", "_": -0}},
        [2**53 - 1, -(2**53 - 1)],
        {"details": {"grant_type": "client_credentials", "scope": "a b", "exp": 1_800_000_000}},
    ],
)
def test_plain_values_take_the_fast_path_and_match(value: Any) -> None:
    assert _plain(value)
    assert canonical(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        "é",  # non-ASCII text: the reference writes it
        {"\U0001f600": 1, "\uff61": 2},  # keys whose UTF-16 and code point orders differ
        2**53,  # outside JCS's integer domain: the reference raises
        0.1,
        "\ud800",  # a lone surrogate: not UTF-8, the reference raises
        {1: "a"},  # json would turn the key into "1"; JCS has no such object
    ],
)
def test_other_values_go_to_the_reference(value: Any) -> None:
    assert not _plain(value)
    assert _ours(value) == _reference(value)


def test_nesting_deeper_than_orjson_allows_goes_to_the_reference() -> None:
    value: Any = "leaf"
    for _ in range(300):
        value = {"act": value}
    assert _plain(value)
    assert canonical(value) == rfc8785.dumps(value)
