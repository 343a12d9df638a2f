"""uvicorn's sans-I/O websockets protocol, bounded, with a frame sink for broadcasts.

What this adds to uvicorn's ``WebSocketsSansIOProtocol``:

- **A bounded send buffer.** On loopback and fast links Linux grows a socket's send buffer
  up to several MiB, so a viewer that stops reading can hold megabytes of kernel memory
  before the server notices it is slow. ``SO_SNDBUF`` fixes that buffer (and turns off its
  autotuning) and a lower transport high-water mark makes backpressure reach the
  connection's outbox early, where the documented lag/4008 policy applies. The size is
  ``Settings.socket_send_buffer_bytes``, passed in by the protocol factory
  (``uvicorn_setup.py``).
- **Bounded handshakes.** From the upgrade until the application accepts or refuses it, a
  connection counts as pending in ``pending.PendingRequests`` (per address, per process,
  with a timeout), like an incomplete HTTP request.
- **Quiet refusals.** A handshake refused with an HTTP response (401, 429…) is complete:
  uvicorn would log an error for each one.
- **Quiet, graceful failure closes.** A text message that is not UTF-8 closes with 1007
  without uvicorn's traceback (a log a client could fill at will); a message past
  ``frame_bytes_max`` closes with 1009. After such a close frame the server half-closes
  and reads (and discards) until the client's EOF, for at most ``CLOSE_LINGER_S``: closing
  the socket while the client is still sending would make the kernel answer with a reset,
  which can destroy the close frame before the client reads it (the client sees 1006).
  Frames that arrive after the application closed are discarded, whatever they contain.
- **Fewer read pauses.** Up to ``INCOMING_MESSAGES_QUEUED_MAX`` messages may wait for the
  application before reading pauses (uvicorn pauses after every one).
- **Less memory per idle connection.** The upgrade request and response are dropped after
  the accept; the incoming queue and the ``writable`` flag are slotted objects instead of
  an ``asyncio.Queue`` and an ``asyncio.Event`` (``docs/benchmarks.md``: memory and GC).
- **Short garbage collections** with a crowd connected: ``gc_freeze.FreezePolicy`` counts
  accepted and closed connections.
- **A frame sink** (the ASGI extension ``giftwire.frame_sink``): frames that were framed
  once for a whole room go straight to this connection's transport, without an ASGI
  ``send`` per viewer. See ``_FrameSink`` for its assumptions.

Framework internals: this subclasses
``uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol`` (first
shipped in uvicorn 0.35; ``disconnected``, ``close_timer``, ``pause_writing`` clearing
``writable`` and the discarding of messages after ``websocket.close`` arrived in 0.53,
``frames`` in 0.50) and reads its attributes ``conn`` (a ``websockets.ServerProtocol``),
``transport``, ``queue``, ``frames``, ``curr_msg_data_type``, ``read_paused``,
``writable`` (both replaced with objects of the same interface: ``put_nowait``, ``get``,
``qsize``, ``empty``; ``set``, ``clear``, ``is_set``, ``wait``), ``handshake_complete``,
``initial_response``, ``close_sent``,
``disconnected``, ``close_timer``, ``request``, ``response`` and ``scope``, and overrides
``connection_made``, ``data_received``, ``send_receive_event_to_app``,
``handle_connect``, ``handle_parser_exception``, ``send`` and ``connection_lost``.
``pyproject.toml`` pins uvicorn and websockets to the minor versions this was tested on;
``tests/unit/test_uvicorn_contract.py`` fails on an upgrade that breaks these assumptions.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.http11 import Request
from websockets.protocol import State

from server.web.gc_freeze import freeze_policy
from server.web.pending import PendingLimits, PendingRequests, pending_requests

SEND_BUFFER_BYTES_DEFAULT = 64 * 1024  # Settings.socket_send_buffer_bytes
FRAME_SINK_EXTENSION = "giftwire.frame_sink"
INCOMING_MESSAGES_QUEUED_MAX = 16
"""Messages read from one connection that may wait for the app before reading pauses."""
CLOSE_LINGER_S = 2.0
"""How long a failed connection is read (and discarded) after its close frame."""


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """What the factory passes to every connection (one shared object, not per viewer)."""

    send_buffer_bytes: int = SEND_BUFFER_BYTES_DEFAULT
    pending: PendingLimits = field(default_factory=PendingLimits)
    gc_freeze_every: int = 0
    """``gc_freeze.FreezePolicy``: freeze after this many accepts (0: never)."""


_DEFAULT_OPTIONS = WebSocketOptions()


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module docstring. Class attributes are defaults shared by all connections:
    an idle viewer pays only for what it sets."""

    _discarding = False
    _accepted = False

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        options: WebSocketOptions = _DEFAULT_OPTIONS,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.options = options
        # uvicorn's asyncio.Queue and asyncio.Event cost four deques (about 600 bytes each)
        # and two more objects per connection, for one reader and one writer.
        self.queue = _MessageQueue()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    @property
    def pending(self) -> PendingRequests:
        return pending_requests(self.options.pending)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self.options.send_buffer_bytes
        sock = transport.get_extra_info("socket")
        if sock is not None and limit > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
            if isinstance(transport, asyncio.WriteTransport):
                transport.set_write_buffer_limits(high=limit, low=limit // 4)
        super().connection_made(transport)
        client = self.client[0] if self.client else ""
        if not self.pending.admit(self, client, self._handshake_expired):
            # Too many handshakes pending from this address: read nothing, start nothing.
            self._discarding = True
            self.transport.abort()

    def _handshake_expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _handshake_done(self) -> None:
        if self.handshake_complete or self.close_sent:
            self.pending.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.release(self)
        if self._accepted and self.options.gc_freeze_every:
            freeze_policy(self.options.gc_freeze_every).closed()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return  # refused, or after a failure close frame: read until EOF, discard all
        super().data_received(data)

    def send_receive_event_to_app(self) -> None:
        if self.close_sent or self.conn.state is not State.OPEN:
            # Closing (we sent a close frame, e.g. 4008): whatever arrives now is
            # discarded unread, valid or not. Deciding about UTF-8 here would try to send
            # a second close frame, which websockets refuses with InvalidState.
            self.frames = []
            return
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

    def handle_parser_exception(self) -> None:
        """A failure close (1002, 1007, 1009): send the close frame, then linger.

        uvicorn closes the socket right after the close frame. A client still sending (the
        rest of an oversized message, say) then gets a TCP reset from the kernel, and a
        reset can discard the close frame before the client reads it. Half-closing and
        reading until the client's EOF delivers the frame; ``CLOSE_LINGER_S`` bounds it.
        """
        code = self.conn.close_sent.code if self.conn.close_sent else 1006
        reason = self.conn.close_sent.reason if self.conn.close_sent else ""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.pending.release(self)
        transport = self.transport
        if transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        self._discarding = True
        transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(CLOSE_LINGER_S, transport.close)

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        kind = message["type"]
        if kind == "websocket.accept" and self.handshake_complete and not self._accepted:
            self._accepted = True
            if self.options.gc_freeze_every:
                freeze_policy(self.options.gc_freeze_every).opened()
            # uvicorn keeps the upgrade request and response (headers and all) for the
            # connection's lifetime but never reads them after the 101: about 3 KiB per
            # idle viewer.
            self.request = self.response = None  # type: ignore[assignment]
        elif kind == "websocket.http.response.body" and not message.get("more_body", False):
            # A refusal (401, 429…) is a complete handshake. uvicorn does not mark it so
            # and logs "ASGI callable returned without completing handshake" at ERROR for
            # every refused client: a log line anyone could add at will.
            self.handshake_complete = True
        self._handshake_done()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        self._handshake_done()  # refused by websockets itself (not a valid upgrade)
        scope = getattr(self, "scope", None)
        if scope is not None:  # set only when the upgrade request was valid
            scope["extensions"][FRAME_SINK_EXTENSION] = {"sink": _FrameSink(self)}


class _MessageQueue:
    """What uvicorn uses of ``asyncio.Queue``, for its one reader (the app's ``receive``).

    Unbounded like uvicorn's (the read pause bounds it); a second concurrent ``get`` is a
    bug and raises rather than losing a wake-up.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("one reader at a time")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


class _Flag:
    """What uvicorn uses of ``asyncio.Event`` (``writable``); set at first."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters = self._waiters  # set() may have replaced the list meanwhile
            if waiters and waiter in waiters:
                waiters.remove(waiter)
        return True


class _FrameSink:
    """``server.realtime.outbox.FrameSink`` over this protocol's transport.

    Assumptions, each checked by ``tests/unit/test_uvicorn_contract.py``:

    - **No fragmentation.** The bytes written here are whole, final, unmasked frames
      without extension bits (``OutFrame.wire``), written to the transport between the
      frames uvicorn writes. That is valid only because uvicorn (through websockets'
      ``send_text``/``send_binary``) never fragments an outgoing message: each ASGI
      ``websocket.send`` becomes exactly one final frame in one ``transport.write``, so a
      sink write can never land between two fragments of one message. It also needs
      permessage-deflate off (``ws_per_message_deflate=False``), which ``uvicorn_setup``
      sets: these frames carry no RSV1 bit and are never compressed.
    - **Open means accepted and not closing.** The sink exists once the upgrade request
      was parsed; it writes only after the 101 went out and before either side started to
      close, and while the transport is alive. ``writable`` is also False while the
      transport's buffer is above its high-water mark (uvicorn's ``writable`` event,
      cleared by ``pause_writing``).
    """

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
        # The broadcast path, once per viewer: the cheapest checks first. The application
        # uses the sink only after its accept, so only closing and backpressure matter here.
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
