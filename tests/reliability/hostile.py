"""Hypothesis strategies for hostile frames, shared by the in-process and live fuzzers.

Each strategy produces what a broken or malicious client could put in one WebSocket
message: JSON text that is malformed, deeply nested, full of huge integers, NaN, Infinity,
lone surrogates or duplicate keys; msgpack bytes with ext types, binary strings,
non-string keys and lengths that lie; and message-shaped objects with wrong types and
extra fields.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import msgpack
from hypothesis import strategies as st

MESSAGE_TYPES = ["send_gift", "resume", "ping", "SEND_GIFT", "", "transfer", "welcome"]
FIELD_NAMES = [
    "type", "id", "gift", "count", "since", "sender", "price", "creator", "__proto__",
    "constructor", "", "ïd", "id\u0000", "coins", "stream_id",
]  # fmt: skip

huge_ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
"""Any code points, lone surrogates included."""

scalars = st.one_of(st.none(), st.booleans(), huge_ints, floats, any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8), st.dictionaries(st.sampled_from(FIELD_NAMES), inner)
    ),
    max_leaves=30,
)


@st.composite
def message_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """An object that looks like a client message, with hostile fields and values."""
    doc: dict[str, Any] = {"type": draw(st.sampled_from(MESSAGE_TYPES))}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=6)):
        doc[name] = draw(json_values)
    return doc


def _to_json(value: Any) -> str:
    # The standard library writes NaN, Infinity and integers of any size, which orjson
    # would not: exactly the frames a strict decoder must refuse.
    return json.dumps(value, ensure_ascii=False)


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=3, max_value=2_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return '{"type":"ping","id":' + opener * depth + "1" + closer * depth + "}"


@st.composite
def duplicate_keys(draw: st.DrawFn) -> str:
    gifts = draw(st.lists(st.sampled_from(["rose", "universe", "x"]), min_size=2, max_size=4))
    pairs = ",".join(f'"gift":"{gift}"' for gift in gifts)
    return '{"type":"send_gift","id":"dup",' + pairs + "}"


def json_text() -> st.SearchStrategy[str]:
    return st.one_of(
        json_values.map(_to_json),
        message_shaped().map(_to_json),
        deep_nesting(),
        duplicate_keys(),
        any_text,
        st.sampled_from(
            [
                '{"type":"ping","id":NaN}',
                '{"type":"resume","since":Infinity}',
                '{"type":"resume","since":-Infinity}',
                '{"type":"resume","since":1e400}',
                '{"type":"resume","since":1.0}',
                '{"type":"send_gift","id":"a","gift":"rose","count":1e0}',
                '{"type":"ping","id":"\\ud800"}',
                '{"type":"ping","id":"\\udfff\\ud800"}',
                '{"type":"ping"',
                '{"type":"ping"}}',
                "\ufeff{}",
                "",
            ]
        ),
    )


def _lying_lengths() -> st.SearchStrategy[bytes]:
    """msgpack containers and strings whose length header promises more than follows."""
    headers = [
        b"\xdb" + struct.pack(">I", 2**32 - 1),  # str32 of 4 GiB
        b"\xdd" + struct.pack(">I", 2**32 - 1),  # array32 of 4 G items
        b"\xdf" + struct.pack(">I", 2**32 - 1),  # map32 of 4 G pairs
        b"\xc6" + struct.pack(">I", 2**31),  # bin32
        b"\xc9" + struct.pack(">I", 2**31) + b"\x01",  # ext32
        b"\xde\xff\xff",  # map16 of 65535 pairs
        b"\x8f",  # fixmap of 15 pairs
    ]
    return st.tuples(st.sampled_from(headers), st.binary(max_size=64)).map(lambda t: t[0] + t[1])


msgpack_values = st.recursive(
    st.one_of(
        scalars,
        st.binary(max_size=64),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=16)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.integers(), st.binary()), inner),
    ),
    max_leaves=30,
)


def _packb(value: Any) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass"))
    except (OverflowError, ValueError, TypeError):
        return b"\xc1"  # "never used": as hostile as anything else


def msgpack_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        msgpack_values.map(_packb),
        message_shaped().map(_packb),
        _lying_lengths(),
        st.binary(max_size=512),
    )
