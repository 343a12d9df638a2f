"""``server/web/edge.py``: which upgrades skip Starlette's stack, and what they get."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.websockets import WebSocket

from server.web.edge import DirectWebSocket


class Recorder:
    def __init__(self) -> None:
        self.endpoint: list[WebSocket] = []
        self.starlette: list[dict[str, Any]] = []

    async def endpoint_called(self, websocket: WebSocket) -> None:
        self.endpoint.append(websocket)

    async def starlette_called(self, scope: Any, receive: Any, send: Any) -> None:
        self.starlette.append(scope)


async def _nothing() -> dict[str, Any]:
    return {}


async def test_an_upgrade_to_a_stream_goes_straight_to_the_endpoint() -> None:
    recorder = Recorder()
    app = Starlette()
    direct = DirectWebSocket(app, "/ws/streams/", "stream_id", recorder.endpoint_called)
    scope: dict[str, Any] = {"type": "websocket", "path": "/ws/streams/show-1", "headers": []}
    await direct(scope, _nothing, _nothing)
    (websocket,) = recorder.endpoint
    assert websocket.path_params == {"stream_id": "show-1"}
    assert websocket.app is app  # websocket.app.state.services as under Starlette
    assert direct.state is app.state


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("http", "/ws/streams/show-1"),
        ("websocket", "/ws/streams/"),
        ("websocket", "/ws/streams/a/b"),
        ("websocket", "/ws/other"),
        ("lifespan", ""),
    ],
)
async def test_everything_else_goes_through_starlette(kind: str, path: str) -> None:
    recorder = Recorder()
    direct = DirectWebSocket(Starlette(), "/ws/streams/", "stream_id", recorder.endpoint_called)
    direct.app = recorder.starlette_called  # type: ignore[assignment]
    await direct({"type": kind, "path": path}, _nothing, _nothing)
    assert recorder.endpoint == []
    assert len(recorder.starlette) == 1
