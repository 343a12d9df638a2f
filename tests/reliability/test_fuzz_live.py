"""Hostile input against a live server over real WebSockets (issue item 7).

Hypothesis draws the frames (``hostile.py``); each is sent on a JSON or msgpack connection,
whole or in fragments, followed by a ``ping`` that marks the end of its answers. Every
answer must be an ``error`` with a documented code, and every close a documented close
code; the connection is opened again after a close. Frames no client library would send
(lying lengths, bad opcodes, invalid UTF-8, unmasked frames) go over a raw socket.

Afterwards the server still answers, its log has no traceback (the ``spawn`` fixture), the
fuzzing user's coins have not moved, and its memory and CPU per message are compared with
a run of plain pings of the same size.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from client_demo.wire import subprotocols
from server.domain.errors import ErrorCode
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.protocol.close_codes import CloseCode
from tests.reliability.conftest import Spawn
from tests.reliability.helpers import CREATOR, STREAM, readyz_status, rss_kib
from tests.reliability.hostile import json_text, msgpack_bytes
from tests.support.servers import ServerProcess, http_json, token

FRAMES_PER_FORMAT = 400
DOCUMENTED_CODES = {code.value for code in ErrorCode}
DOCUMENTED_CLOSES: set[int | None] = {code.value for code in CloseCode}
DOCUMENTED_CLOSES.add(None)  # the TCP connection closed without a close frame
HARMLESS = {"welcome", "pong", "stats", "leaderboard", "lag", "gap", "stream", "gift", "gifts"}
COINS = 1_000


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@dataclass
class Fuzzer:
    """One connection per wire format, reopened after every close."""

    server: ServerProcess
    fmt: str
    ws: ClientConnection | None = None
    frames: int = 0
    closes: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    barrier: int = 0
    spent: int = 0
    applied: int = 0
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def _connection(self) -> ClientConnection:
        if self.ws is None:
            self.ws = self.stack.enter_context(
                connect(
                    self.server.ws_url(STREAM),
                    subprotocols=subprotocols(token("fuzzer"), self.fmt),  # type: ignore[arg-type]
                    open_timeout=10,
                    close_timeout=2,
                    max_size=None,
                )
            )
            # A stats broadcast may come before the welcome (seen while writing this test).
            while self._decode(self.ws.recv(timeout=10))["type"] != "welcome":
                pass
        return self.ws

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        return dict(msgpack.unpackb(raw) if isinstance(raw, bytes) else orjson.loads(raw))

    def _ping(self) -> str | bytes:
        message = {"type": "ping", "id": f"barrier{self.barrier}"}
        return msgpack.packb(message) if self.fmt == "msgpack" else orjson.dumps(message).decode()

    def send(self, frame: str | bytes | list[str] | list[bytes]) -> None:
        """Send one frame (a list: as fragments), then read every answer up to the barrier."""
        ws = self._connection()
        self.frames += 1
        self.barrier += 1
        try:
            ws.send(frame)
            ws.send(self._ping())
            while True:
                message = self._decode(ws.recv(timeout=10))
                kind = message["type"]
                if kind == "error":
                    assert message["code"] in DOCUMENTED_CODES, message
                    self.codes[message["code"]] += 1
                elif kind == "gift_ack":
                    # A hostile frame may still be a valid gift (duplicate keys, say): it is
                    # applied once, as its ack says, and paid for.
                    if not message["replayed"]:
                        self.spent += message["coins"]
                        self.applied += 1
                elif kind == "pong" and message["id"] == f"barrier{self.barrier}":
                    return
                else:
                    assert kind in HARMLESS, message
        except ConnectionClosed:
            # 1006 is the client library's word for "no close frame came": the server had
            # already closed (1009, say) while fragments were still being written.
            code = None if ws.close_code == 1006 else ws.close_code
            assert code in DOCUMENTED_CLOSES, f"undocumented close {code}"
            self.closes[code or 1006] += 1
            self.ws = None
            self.stack.close()

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def live(
    redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> Iterator[tuple[ServerProcess, dict[str, Fuzzer], Redis]]:
    redis = Redis.from_url(redis_server.url)
    redis.hset(keys.stream(STREAM), mapping={"state": "live", "creator": CREATOR, "seq": 0})
    redis.hset(keys.account("fuzzer"), "coins", COINS)
    server = spawn(redis_server.url)
    fuzzers = {fmt: Fuzzer(server, fmt) for fmt in ("json", "msgpack")}
    yield server, fuzzers, redis
    for fuzzer in fuzzers.values():
        fuzzer.close()
    redis.close()


def _fragments(frame: str | bytes, cuts: int) -> list[str] | list[bytes]:
    size = max(1, len(frame) // (cuts + 1))
    parts = [frame[i : i + size] for i in range(0, len(frame), size)] or [frame]
    return parts  # type: ignore[return-value]


frames = st.one_of(
    st.tuples(st.just("json"), json_text()),
    st.tuples(st.just("msgpack"), msgpack_bytes()),
    st.tuples(st.just("json"), msgpack_bytes()),  # binary on a JSON connection
    st.tuples(st.just("msgpack"), json_text()),  # text on a msgpack connection
)


def test_hostile_frames_get_documented_answers_and_change_nothing(
    live: tuple[ServerProcess, dict[str, Fuzzer], Redis], keys: Keys
) -> None:
    server, fuzzers, redis = live
    pid = server.process.pid  # type: ignore[union-attr]
    fuzzers["json"].send('{"type":"ping"}')  # connections and room are warm
    fuzzers["msgpack"].send(msgpack.packb({"type": "ping"}))

    # Baseline: plain pings, as many as the hostile frames to come.
    rss_before, cpu_before = rss_kib(pid), _cpu_ticks(pid)
    for n in range(FRAMES_PER_FORMAT):
        fuzzers["json"].send(orjson.dumps({"type": "ping", "id": f"p{n}"}).decode())
        fuzzers["msgpack"].send(msgpack.packb({"type": "ping", "id": f"p{n}"}))
    cpu_pings = _cpu_ticks(pid) - cpu_before
    baseline_frames = fuzzers["json"].frames + fuzzers["msgpack"].frames

    @settings(
        max_examples=FRAMES_PER_FORMAT * 2,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(kind_frame=frames, cuts=st.integers(0, 3), oversized=st.booleans())
    def fuzz(kind_frame: tuple[str, str | bytes], cuts: int, oversized: bool) -> None:
        fmt, frame = kind_frame
        if isinstance(frame, str):
            frame = frame.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        if oversized and cuts == 3:
            frame = frame * (5_000 // max(1, len(frame)) + 1)  # past the 4 KiB limit
        fuzzers[fmt].send(_fragments(frame, cuts) if cuts else frame)

    cpu_before = _cpu_ticks(pid)
    fuzz()
    cpu_hostile = _cpu_ticks(pid) - cpu_before
    hostile_frames = sum(f.frames for f in fuzzers.values()) - baseline_frames
    rss_after = rss_kib(pid)

    assert readyz_status(server) == 200
    spent = sum(f.spent for f in fuzzers.values())
    assert int(redis.hget(keys.account("fuzzer"), "coins") or 0) == COINS - spent
    assert int(redis.hget(keys.stream(STREAM), "seq") or 0) == sum(
        f.applied for f in fuzzers.values()
    )
    # Bounded: what a hostile frame costs the server is of the order of a ping.
    per_ping = max(cpu_pings, 1) / baseline_frames
    per_hostile = cpu_hostile / hostile_frames
    assert per_hostile <= 10 * per_ping, (per_hostile, per_ping)
    assert rss_after - rss_before < 32 * 1024, (rss_before, rss_after)
    closes = sum((f.closes for f in fuzzers.values()), Counter[int]())
    codes = sum((f.codes for f in fuzzers.values()), Counter[str]())
    print(
        f"\nlive fuzz: {hostile_frames} hostile frames; errors {dict(codes)}; "
        f"closes {dict(closes)}; CPU per frame {per_hostile / per_ping:.2f}x a ping; "
        f"RSS {rss_before} -> {rss_after} KiB"
    )


# Raw frames: what no WebSocket library would send.


def _raw_connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws/streams/{STREAM} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {', '.join(subprotocols(token('fuzzer')))}\r\n\r\n"
    )
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
           length: int | None = None, rsv: int = 0) -> bytes:  # fmt: skip
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack(">H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code(sock: socket.socket) -> int | None:
    """Read until the server's close frame (its code) or EOF (None)."""
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            break
        data += chunk
        while len(data) >= 2:
            opcode, size = data[0] & 0x0F, data[1] & 0x7F
            start = 2
            if size == 126:
                size, start = struct.unpack(">H", data[2:4])[0], 4
            elif size == 127:
                size, start = struct.unpack(">Q", data[2:10])[0], 10
            if len(data) < start + size:
                break
            if opcode == 0x8:
                return int(struct.unpack(">H", data[start : start + 2])[0]) if size >= 2 else None
            data = data[start + size :]
    return None


RAW_CASES: dict[str, tuple[bytes, set[int | None]]] = {
    "length claims 2^63 bytes": (_frame(0x1, b"{}", length=2**63 - 1), {1009}),
    "length claims 1 MiB, sends 10 bytes": (_frame(0x1, b"{}", length=2**20), {1009}),
    "length claims 100, sends 2, then garbage": (
        _frame(0x1, b"{}", length=100) + b"x" * 200, {None, 1000, 1002, 1006}),
    "invalid UTF-8 in a text frame": (_frame(0x1, b'{"type":"ping","id":"\xff\xfe"}'), {1007}),
    "lone surrogate encoded in UTF-8": (
        _frame(0x1, b'{"type":"ping","id":"\xed\xa0\x80"}'), {1007}),
    "unmasked client frame": (_frame(0x1, b'{"type":"ping"}', masked=False), {1002}),
    "reserved opcode 3": (_frame(0x3, b"x"), {1002}),
    "reserved bits set": (_frame(0x1, b'{"type":"ping"}', rsv=0b111), {1002}),
    "control frame of 200 bytes": (_frame(0x9, b"x" * 200), {1002}),
    "fragmented control frame": (_frame(0x9, b"x", fin=False), {1002}),
    "continuation without a start": (_frame(0x0, b"{}"), {1002}),
    "new message inside a fragmented one": (
        _frame(0x1, b'{"ty', fin=False) + _frame(0x1, b'pe":"ping"}'), {1002}),
    "endless fragments past the size limit": (
        b"".join(_frame(0x1 if i == 0 else 0x0, b"x" * 1000, fin=False) for i in range(10)),
        {1009}),
    "close frame with an invalid code": (_frame(0x8, struct.pack(">H", 999)), {1002}),
    "close frame with invalid UTF-8 reason": (
        _frame(0x8, struct.pack(">H", 1000) + b"\xff"), {1007}),
}  # fmt: skip


def test_raw_frames_are_closed_with_documented_codes(
    live: tuple[ServerProcess, dict[str, Fuzzer], Redis], keys: Keys
) -> None:
    server, _, redis = live
    seen: dict[str, int | None] = {}
    for name, (payload, _) in RAW_CASES.items():
        sock = _raw_connect(server)
        try:
            sock.sendall(payload)
            code = _close_code(sock)
        finally:
            sock.close()
        seen[name] = code
    wrong = {name: code for name, code in seen.items() if code not in RAW_CASES[name][1]}
    assert not wrong, f"unexpected closes: {wrong}"
    undocumented = {name: code for name, code in seen.items() if code not in DOCUMENTED_CLOSES}
    assert not undocumented, f"undocumented closes: {undocumented}"
    assert readyz_status(server) == 200
    assert int(redis.hget(keys.account("fuzzer"), "coins") or 0) == COINS
    print(f"\nraw frames: {seen}")


# Text that ``str.isdigit()`` accepts but is no ASCII number: int() rejects the first two
# (a 500 with a traceback before the fix) and reads the third as 3.
NOT_ASCII_NUMBERS = ["²", "1²", "٣", "１"]  # superscript two, Arabic-Indic three, fullwidth one
# Header values (latin-1, as HTTP carries them) that are not ASCII: compare_digest raised
# TypeError on them, a 500 and a 60-line traceback per unauthenticated request.
NOT_ASCII_SIGNATURES = ["sha256=²", "sha256=é" + "0" * 63, "é", "sha256=" + "ÿ" * 64]


def _status_code(method: str, url: str, **kwargs: Any) -> tuple[int, str]:
    status, body = http_json(method, url, **kwargs)
    return status, body["error"]["code"] if status >= 400 else ""


def test_non_ascii_numbers_and_headers_get_documented_refusals(
    live: tuple[ServerProcess, dict[str, Fuzzer], Redis], keys: Keys
) -> None:
    server, _, redis = live
    base = f"{server.http}/api/streams/{STREAM}"
    for raw in NOT_ASCII_NUMBERS:
        text = urllib.parse.quote(raw)
        for url in (f"{base}/gifts?after={text}", f"{base}/gifts?limit={text}",
                    f"{base}/leaderboard?limit={text}"):  # fmt: skip
            assert _status_code("GET", url) == (400, "invalid_request"), (raw, url)
        since_url = server.ws_url(STREAM) + f"?since={text}"
        bearer = [f"bearer.{token('fuzzer')}"]
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(
                since_url,
                subprotocols=bearer,
                open_timeout=10,  # type: ignore[arg-type]
            ),
        ):
            pass
        response = refused.value.response
        assert response.status_code == 400, raw
        assert orjson.loads(response.body)["error"]["code"] == "invalid_request"
    # ASCII still works, so the refusals above are about the digits.
    assert _status_code("GET", f"{base}/gifts?after=0&limit=5") == (200, "")

    event = orjson.dumps({"type": "payment.succeeded", "payment_id": "p1", "user_id": "fuzzer",
                          "coins": 5})  # fmt: skip
    webhook = f"{server.http}/api/webhooks/payments"
    for signature in NOT_ASCII_SIGNATURES:
        refusal = _status_code(
            "POST", webhook, raw=event, headers={"x-giftwire-signature": signature}
        )
        assert refusal == (401, "bad_signature"), signature
    for bearer in ("é", "²." * 3, "ÿ" * 40):
        refusal = _status_code("GET", f"{server.http}/api/me/wallet", headers={
            "authorization": f"Bearer {bearer}"})  # fmt: skip
        assert refusal == (401, "unauthorized"), bearer
    assert readyz_status(server) == 200
    assert int(redis.hget(keys.account("fuzzer"), "coins") or 0) == COINS
    # The spawn fixture then checks the server's log holds no traceback.
