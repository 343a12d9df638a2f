"""Hostile input against the codecs and the message parser, in process (issue item 7).

Whatever the bytes, ``decode`` + ``parse_message`` either return a well-formed client
message or raise ``DecodeError`` / ``ProtocolError`` with a documented code: never any
other exception. The live variant, against a real server, is ``test_fuzz_live.py``; the
atheris run is ``test_fuzz_atheris.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain.accounts import is_valid_id
from server.domain.errors import ErrorCode
from server.domain.limits import GIFT_COUNT_MAX, Limits
from server.protocol.codec import DecodeError, WireFormat, decode
from server.protocol.messages import (
    SEQUENCE_MAX,
    Ping,
    ProtocolError,
    Resume,
    SendGift,
    parse_message,
)
from tests.reliability.hostile import json_text, msgpack_bytes

LIMITS = Limits()
EXAMPLES = 700
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check(data: str | bytes, fmt: WireFormat) -> None:
    try:
        message = parse_message(decode(data, fmt, LIMITS))
    except DecodeError:
        return
    except ProtocolError as e:
        assert e.code in ErrorCode
        assert e.client_id is None or is_valid_id(e.client_id)
        return
    # Anything that parses is a message the server can act on safely.
    if isinstance(message, SendGift):
        assert is_valid_id(message.client_id) and is_valid_id(message.gift_id)
        assert type(message.count) is int and 1 <= message.count <= GIFT_COUNT_MAX
    elif isinstance(message, Resume):
        assert type(message.since) is int and 0 <= message.since <= SEQUENCE_MAX
    else:
        assert isinstance(message, Ping)
        assert message.client_id is None or is_valid_id(message.client_id)


@FUZZ
@given(text=json_text())
def test_json_frames(text: str) -> None:
    _check(text, WireFormat.JSON)


@FUZZ
@given(data=msgpack_bytes())
def test_msgpack_frames(data: bytes) -> None:
    _check(data, WireFormat.MSGPACK)


@FUZZ
@given(data=st.one_of(json_text().map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()))
def test_frames_of_the_wrong_kind(data: bytes) -> None:
    # Binary on a JSON connection, and text on a msgpack one, are refused, not guessed at.
    _check(data, WireFormat.JSON)
    _check(data.decode("latin-1"), WireFormat.MSGPACK)


def test_bounds_hold_at_their_edges() -> None:
    deep = '{"type":"ping","id":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(DecodeError):
        decode(deep, WireFormat.JSON, LIMITS)
    with pytest.raises(DecodeError):
        decode('{"type":"resume","since":' + "9" * 5_000 + "}", WireFormat.JSON, LIMITS)
    with pytest.raises(ProtocolError):
        parse_message(decode('{"type":"resume","since":9007199254740992}', WireFormat.JSON, LIMITS))
    largest = parse_message(
        decode('{"type":"resume","since":9007199254740991}', WireFormat.JSON, LIMITS)
    )
    assert largest == Resume(SEQUENCE_MAX)
    # Duplicate keys: the last one wins, once, and the ack names what was applied.
    dup = parse_message(
        decode(
            '{"type":"send_gift","id":"a","gift":"universe","gift":"rose"}', WireFormat.JSON, LIMITS
        )
    )
    assert isinstance(dup, SendGift) and dup.gift_id == "rose"


ATHERIS_RUNS = 300_000
HARNESS = Path(__file__).with_name("atheris_protocol.py")


def test_atheris_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris did not install here (docs/reliability.md)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, seed in enumerate(
        [
            b'J{"type":"send_gift","id":"g1","gift":"rose","count":3}',
            b'J{"type":"resume","since":12}',
            b"M\x83\xa4type\xa9send_gift\xa2id\xa2g1\xa4gift\xa4rose",
            b'J{"type":"ping","id":"p"}',
        ]
    ):
        (corpus / f"seed{n}").write_bytes(seed)
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={ATHERIS_RUNS}",
            "-seed=1",
            "-max_len=4096",
            "-rss_limit_mb=1024",
            str(corpus),
        ],
        capture_output=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
    assert "Done" in output
