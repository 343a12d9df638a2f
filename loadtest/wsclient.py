"""A minimal WebSocket client for load generation: one asyncio Protocol per connection.

Thousands of viewers in one process cost what their frames cost, so this client does as
little as it can: it never decodes a frame it is not asked to (``on_frame`` gets the raw
payload), keeps no per-message task, and writes pre-masked frames straight to the
transport. It speaks RFC 6455 without extensions (no permessage-deflate), answers pings,
and records the close code. It is a measuring instrument, not a general client: use
``websockets`` for anything else.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - websockets ships the C speedups on CPython
    _apply_mask_c = None

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
HANDSHAKE_BYTES_MAX = 16 * 1024
MESSAGE_BYTES_MAX = 4 * 1024 * 1024

OnFrame = Callable[[int, bytes], None]


class HandshakeError(ConnectionError):
    """The server refused the upgrade; ``status`` and ``body`` say why (giftwire's code)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def _mask(payload: bytes, key: bytes) -> bytes:
    if _apply_mask_c is not None:
        return bytes(_apply_mask_c(payload, key))
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _mask(payload, key)


def parse_frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Take every complete (unmasked, server) frame off the front of ``buffer``:
    (fin, opcode, payload) each. What is left is an incomplete frame."""
    frames: list[tuple[int, int, bytes]] = []
    offset = 0
    size = len(buffer)
    while size - offset >= 2:
        b0 = buffer[offset]
        length = buffer[offset + 1] & 0x7F
        start = offset + 2
        if length == 126:
            if size - start < 2:
                break
            length = int.from_bytes(buffer[start : start + 2], "big")
            start += 2
        elif length == 127:
            if size - start < 8:
                break
            length = int.from_bytes(buffer[start : start + 8], "big")
            start += 8
        if length > MESSAGE_BYTES_MAX:
            raise ValueError("frame too large")
        end = start + length
        if end > size:
            break
        frames.append((b0 & 0x80, b0 & 0x0F, bytes(buffer[start:end])))
        offset = end
    if offset:
        del buffer[:offset]
    return frames


def handshake_status(head: bytes) -> tuple[int, str]:
    """The status and the chosen subprotocol of an HTTP upgrade response's head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() else 0
    subprotocol = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-protocol":
            subprotocol = value.strip()
    return status, subprotocol


class WsClientProtocol(asyncio.Protocol):
    """One client connection. ``opened`` resolves after the 101; ``closed`` at the end."""

    def __init__(self, request: bytes, on_frame: OnFrame) -> None:
        self._request = request
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[float] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.close_code: int | None = None
        self._buffer = bytearray()
        self._handshaking = True
        self._refused_status = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._started = time.perf_counter()
        self.subprotocol = ""

    # asyncio callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._started = time.perf_counter()
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused_status:
            self._refused(self._refused_status)
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._handshaking:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HANDSHAKE_BYTES_MAX:
                    self._fail(ConnectionError("handshake response too large"))
                return
            if not self._handshake(bytes(buffer[: end + 4])):
                return
            del buffer[: end + 4]
        self._frames()

    # Parsing.

    def _handshake(self, head: bytes) -> bool:
        status, self.subprotocol = handshake_status(head)
        if status != 101:
            # A denial response carries a body; wait for it briefly, then report.
            asyncio.get_running_loop().call_later(0.2, self._refused, status)
            self._handshaking = False
            self._refused_status = status
            return False
        self._handshaking = False
        if not self.opened.done():
            self.opened.set_result(time.perf_counter() - self._started)
        return True

    def _refused(self, status: int) -> None:
        head_end = self._buffer.find(b"\r\n\r\n")
        body = bytes(self._buffer[head_end + 4 :]) if head_end >= 0 else b""
        self._fail(HandshakeError(status, body))

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _frames(self) -> None:
        if not self.opened.done():
            return  # a refused handshake: the body stays in the buffer for _refused
        try:
            for fin, opcode, payload in parse_frames(self._buffer):
                self._frame(fin, opcode, payload)
        except ValueError as e:
            self._fail(ConnectionError(str(e)))

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode >= OP_CLOSE:
            self._control(opcode, payload)
            return
        if not fin or opcode == OP_CONT:
            if opcode != OP_CONT:
                self._fragment_opcode = opcode
            self._fragments.append(payload)
            if not fin:
                return
            payload, self._fragments = b"".join(self._fragments), []
            opcode = self._fragment_opcode
        self.on_frame(opcode, payload)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.write(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(encode_frame(OP_CLOSE, payload[:2]))
                self.transport.close()

    # Sending.

    def write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    def send_text(self, text: bytes) -> None:
        """Send a text frame whose payload is already UTF-8 (``orjson.dumps`` output)."""
        self.write(OP_TEXT, text)

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(OP_CLOSE, code.to_bytes(2, "big")))
            self.transport.close()


def build_request(host: str, port: int, path: str, protocols: Sequence[str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def open_connection(
    url: str,
    on_frame: OnFrame,
    *,
    protocols: Sequence[str] = (),
    source_ip: str | None = None,
    timeout_s: float = 10.0,
) -> tuple[WsClientProtocol, float]:
    """Connect to ``ws://host:port/path``; return the protocol and the connect time (s)."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"expected a ws:// URL, got {url!r}")
    host, port = parts.hostname, parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    request = build_request(host, port, path, protocols)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        _, protocol = await loop.create_connection(
            lambda: WsClientProtocol(request, on_frame),
            host,
            port,
            local_addr=(source_ip, 0) if source_ip else None,
        )
        try:
            await protocol.opened
        except BaseException:
            protocol.close()
            raise
    return protocol, time.perf_counter() - started
