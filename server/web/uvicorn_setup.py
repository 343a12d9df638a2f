"""How ``giftwire serve`` configures uvicorn: protocol factories bound to ``Settings``.

uvicorn builds its HTTP and WebSocket protocols by calling the configured classes with its
own arguments; ``functools.partial`` adds ours (the send buffer, the pending-request
bounds) without any environment variable, and survives the pickling uvicorn does for
``--workers``. Every connection shares the one options object.
"""

from __future__ import annotations

import functools
from typing import Any

from server.settings import Settings
from server.web.pending import PendingLimits, accept_backlog
from server.web.uvicorn_http import BoundedH11Protocol
from server.web.uvicorn_ws import BoundedWebSocketProtocol, WebSocketOptions


def pending_limits(settings: Settings) -> PendingLimits:
    limits = settings.limits
    return PendingLimits(
        total_max=limits.pending_requests_max,
        per_address_max=limits.pending_requests_per_ip_max,
        timeout_s=limits.request_timeout_s,
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` (besides app and address)."""
    pending = pending_limits(settings)
    ws_options = WebSocketOptions(
        send_buffer_bytes=settings.socket_send_buffer_bytes,
        pending=pending,
        gc_freeze_every=settings.gc_freeze_every_connections,
    )
    return {
        "http": functools.partial(BoundedH11Protocol, pending=pending),
        "ws": functools.partial(BoundedWebSocketProtocol, options=ws_options),
        "ws_max_size": settings.limits.frame_bytes_max,
        # The frame sink writes uncompressed frames (uvicorn_ws._FrameSink), and deflate
        # halves fan-out throughput and multiplies memory per connection (LIMITS.md).
        "ws_per_message_deflate": False,
        "backlog": accept_backlog(),
    }
