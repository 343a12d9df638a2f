"""A blocking WebSocket client for the Locust users (gevent makes its socket cooperative).

It shares the frame codec of ``loadtest.wsclient``; ``recv`` returns one decoded JSON
message at a time. Locust's users are greenlets, so blocking here blocks only one user.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from loadtest.wsclient import (
    HANDSHAKE_BYTES_MAX,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    build_request,
    encode_frame,
    handshake_status,
    parse_frames,
)


class ConnectionClosedError(ConnectionError):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"connection closed (code {code})")
        self.code = code


class SyncWebSocket:
    def __init__(self, url: str, protocols: list[str], timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        started = time.perf_counter()
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(build_request(host, port, parts.path or "/", protocols))
        self._buffer = bytearray()
        self._messages: list[tuple[int, bytes]] = []
        self.close_code: int | None = None
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > HANDSHAKE_BYTES_MAX:
                raise ConnectionError("handshake response too large")
            self._read()
        end = self._buffer.index(b"\r\n\r\n") + 4
        status, self.subprotocol = handshake_status(bytes(self._buffer[:end]))
        if status != 101:
            self.sock.settimeout(1.0)
            try:
                while True:
                    self._read()
            except (OSError, ConnectionError):
                pass
            body = bytes(self._buffer[end:])
            self.sock.close()
            raise HandshakeError(status, body)
        del self._buffer[:end]
        self.connect_s = time.perf_counter() - started

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosedError(self.close_code)
        self._buffer += chunk

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, orjson.dumps(message)))

    def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next JSON message; ``TimeoutError`` after ``timeout_s``."""
        self.sock.settimeout(timeout_s)
        while True:
            while self._messages:
                opcode, payload = self._messages.pop(0)
                if opcode == OP_TEXT:
                    return dict(orjson.loads(payload))
            try:
                self._read()
            except TimeoutError:
                raise
            except OSError as e:
                raise ConnectionClosedError(self.close_code) from e
            for _, opcode, payload in parse_frames(self._buffer):
                if opcode == OP_PING:
                    self.sock.sendall(encode_frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                    self.close()
                    raise ConnectionClosedError(self.close_code)
                else:
                    self._messages.append((opcode, payload))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        self.sock.close()
