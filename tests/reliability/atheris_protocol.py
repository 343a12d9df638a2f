"""atheris (libFuzzer) harness over the codecs and the message parser.

Run by ``test_fuzz_protocol.py::test_atheris_finds_no_crash`` with a bounded ``-runs``;
by hand: ``python tests/reliability/atheris_protocol.py -runs=1000000``. The first byte
picks the codec (``J`` JSON, anything else msgpack). Any exception other than a documented
refusal is a crash, and libFuzzer then exits non-zero with the input that caused it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from server.domain.errors import ErrorCode
    from server.domain.limits import Limits
    from server.protocol.codec import DecodeError, WireFormat, decode
    from server.protocol.messages import ProtocolError, parse_message

LIMITS = Limits()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fmt = WireFormat.JSON if data[:1] == b"J" else WireFormat.MSGPACK
    body: str | bytes = data[1:]
    if fmt is WireFormat.JSON:
        body = data[1:].decode("utf-8", "surrogateescape")
    try:
        parse_message(decode(body, fmt, LIMITS))
    except DecodeError:
        pass
    except ProtocolError as e:
        if e.code not in ErrorCode:
            raise


if __name__ == "__main__":
    atheris.Setup(sys.argv, atheris.instrument_func(test_one_input))
    atheris.Fuzz()
