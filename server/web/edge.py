"""The ASGI entry point: WebSocket upgrades to one path go straight to their endpoint.

Starlette runs each WebSocket endpoint inside its middleware stack and router
(``ServerErrorMiddleware``, ``ExceptionMiddleware``, the router, the route, the session
wrapper): coroutines and closures that stay suspended for as long as the connection is
open. For a crowd of idle viewers that is a large share of the objects each one costs, and
of the work of every full garbage collection (``docs/benchmarks.md``). Upgrades to
``prefix + <id>`` skip them: the endpoint gets the same ``WebSocket`` it would get from
Starlette, with ``path_params`` set and ``websocket.app`` the Starlette application; all
other traffic (HTTP, lifespan, other WebSocket paths) goes through Starlette unchanged.
The endpoint handles its own errors, as it does under Starlette, where the middleware
re-raises WebSocket exceptions anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.websockets import WebSocket

Endpoint = Callable[[WebSocket], Awaitable[None]]


class DirectWebSocket:
    """ASGI app: ``endpoint`` for WebSockets at ``prefix + <param>``, else ``app``."""

    __slots__ = ("app", "endpoint", "param", "prefix")

    def __init__(self, app: Starlette, prefix: str, param: str, endpoint: Endpoint) -> None:
        self.app = app
        self.prefix = prefix
        self.param = param
        self.endpoint = endpoint

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            path: str = scope["path"]
            value = path[len(self.prefix) :]
            if path.startswith(self.prefix) and value and "/" not in value:
                scope["app"] = self.app
                scope["path_params"] = {self.param: value}
                await self.endpoint(WebSocket(scope, receive=receive, send=send))
                return
        await self.app(scope, receive, send)
