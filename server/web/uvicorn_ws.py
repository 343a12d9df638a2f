"""uvicorn's sans-I/O websockets protocol with bounded per-connection send buffers.

On loopback and fast links Linux grows a socket's send buffer up to several MiB, so a viewer
that stops reading can hold megabytes of kernel memory before the server notices it is
slow. Setting SO_SNDBUF fixes that buffer (and turns off its autotuning) and lowering the
transport's high-water mark makes backpressure reach the connection's outbox early, where
the documented lag/4008 policy applies. ``GIFTWIRE_SOCKET_SEND_BUFFER_BYTES`` sets both.

The protocol also offers the application a frame sink (the ASGI extension
``giftwire.frame_sink``): a way to write frames that were framed once for a whole room
straight to this connection's transport, without an ASGI ``send`` per viewer, which costs a
coroutine, uvicorn's per-connection text encoding and websockets' per-connection framing.
See ``server/realtime/outbox.py`` for how it is used and its contract.
"""

from __future__ import annotations

import asyncio
import os
import socket

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

SEND_BUFFER_ENV = "GIFTWIRE_SOCKET_SEND_BUFFER_BYTES"
SEND_BUFFER_BYTES_DEFAULT = 64 * 1024  # Settings.socket_send_buffer_bytes
FRAME_SINK_EXTENSION = "giftwire.frame_sink"
INCOMING_MESSAGES_QUEUED_MAX = 16
"""Messages read from one connection that may wait for the app before reading pauses."""


def _send_buffer_bytes() -> int:
    raw = os.environ.get(SEND_BUFFER_ENV, "")
    return int(raw) if raw.isdigit() else SEND_BUFFER_BYTES_DEFAULT


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = _send_buffer_bytes()
        sock = transport.get_extra_info("socket")
        if sock is not None and limit > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
            if isinstance(transport, asyncio.WriteTransport):
                transport.set_write_buffer_limits(high=limit, low=limit // 4)
        super().connection_made(transport)

    def send_receive_event_to_app(self) -> None:
        # uvicorn logs a full traceback for every text message that is not UTF-8 before it
        # closes with 1007: a client could fill the log at will. Close the same way, quietly.
        if self.curr_msg_data_type == "text":
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(1007, "invalid UTF-8")
                self.handle_parser_exception()
                return
        self._queue_for_app()

    def _queue_for_app(self) -> None:
        """Hand the message to the app, pausing reading only at a bound.

        uvicorn pauses reading after every message until the app has taken it: two epoll
        calls per message on a busy gifter's connection (about 5 % of the server's CPU
        under load). Up to ``INCOMING_MESSAGES_QUEUED_MAX`` messages may wait instead; at
        that bound reading pauses as before, and uvicorn resumes it once the app has
        drained the queue.
        """
        if self.read_paused or self.queue.qsize() >= INCOMING_MESSAGES_QUEUED_MAX - 1:
            super().send_receive_event_to_app()
            return
        self.read_paused = True  # so that uvicorn does not pause reading for this one
        super().send_receive_event_to_app()
        self.read_paused = False  # nothing was paused

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # uvicorn keeps the upgrade request and response (headers and all) for the
            # connection's lifetime but never reads them after the 101: about 3 KiB per
            # idle viewer.
            self.request = self.response = None  # type: ignore[assignment]
        elif message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A denial response (401, 404, ...) is the end of the handshake, but uvicorn
            # leaves handshake_complete unset and, once the app returns, logs "ASGI callable
            # returned without completing handshake" for every refused client.
            self.handshake_complete = True

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # set only when the upgrade request was valid
            scope["extensions"][FRAME_SINK_EXTENSION] = {"sink": _FrameSink(self)}


class _FrameSink:
    """``server.realtime.outbox.FrameSink`` over this protocol's transport."""

    __slots__ = ("_protocol", "_transport", "_writable")

    def __init__(self, protocol: BoundedWebSocketProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._writable = protocol.writable  # set while the buffer is below high water

    def _open(self) -> bool:
        p = self._protocol
        # Accepted (the 101 went out), not closing from either side, transport alive.
        return (
            p.handshake_complete
            and p.initial_response is None
            and not p.close_sent
            and not p.disconnected
            and p.conn.state is State.OPEN
        )

    def writable(self) -> bool:
        return self._writable.is_set() and self._open()

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def try_write(self, data: bytes) -> bool:
        # The broadcast path, once per viewer: the cheapest checks first. The sink exists
        # only once the handshake completed, so only closing and backpressure matter here.
        p = self._protocol
        if not self._writable.is_set() or p.close_sent or p.disconnected:
            return False
        if p.conn.state is not State.OPEN:
            return False
        self._transport.write(data)
        return True

    async def wait_writable(self) -> bool:
        await self._writable.wait()
        return self._open()
