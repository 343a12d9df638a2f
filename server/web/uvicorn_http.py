"""uvicorn's h11 HTTP protocol with every incomplete request bounded and timed out.

uvicorn has no timeout on reading a request: its keep-alive timer runs only between a
response and the next request, and the first byte of that request cancels it. A client
that sends a header line every few seconds, or the first request line and nothing more,
holds its connection (a file descriptor) for as long as it likes. This subclass puts each
connection in ``pending.PendingRequests`` until its request is complete (head and body),
so a slow request is closed after ``request_timeout_s`` and one address can hold at most
``pending_requests_per_ip_max`` incomplete requests at once (see ``pending.py``).

Framework internals: this subclasses ``uvicorn.protocols.http.h11_impl.H11Protocol`` and
relies on its ``connection_made``, ``data_received``, ``connection_lost``,
``on_response_complete`` and ``handle_websocket_upgrade`` hooks, its ``conn`` (an
``h11.Connection``), ``client`` and ``transport`` attributes, and on h11's ``their_state``
being ``IDLE`` until a request head has arrived and ``DONE`` once its body has.
``pyproject.toml`` pins uvicorn and h11 to the versions this was checked against;
``tests/unit/test_uvicorn_contract.py`` fails on an upgrade that breaks any of it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from server.web.pending import PendingLimits, PendingRequests, pending_requests

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: 16\r\n\r\n"
    b"request timeout\n"
)
_COMPLETE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
"""h11 states of the client's side once its request has fully arrived (or failed)."""


class BoundedH11Protocol(H11Protocol):
    """``H11Protocol`` whose incomplete requests are bounded (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        pending: PendingLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.pending: PendingRequests = pending_requests(pending or PendingLimits())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_pending()

    def _start_pending(self) -> None:
        address = self.client[0] if self.client else ""
        if not self.pending.admit(self, address, self._expired):
            # Over the address's bound: nothing has been read, nothing is answered. An
            # abort (RST) frees the descriptor at once, without a FIN_WAIT state.
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self in self.pending and self.conn.their_state in _COMPLETE:
            self.pending.release(self)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The WebSocket protocol counts the handshake from here (uvicorn_ws.py).
        self.pending.release(self)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Keep-alive: the time for the next request starts now, whatever the client sends
        # (uvicorn's own keep-alive timer stops at the next request's first byte).
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._start_pending()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.release(self)
        super().connection_lost(exc)

    def _expired(self) -> None:
        """Too slow (or evicted): close; say why when no response has started."""
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE and self.conn.their_state is not h11.ERROR:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()
