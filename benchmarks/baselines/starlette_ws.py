"""The framework's floor: a Starlette WebSocket endpoint under uvicorn with giftwire's own
uvicorn protocol, that accepts and then only reads. Memory per idle connection here is what
any Starlette application pays before it keeps anything of its own.

    python -m benchmarks.baselines.starlette_ws --port 9000
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


app = Starlette(routes=[WebSocketRoute("/", endpoint)])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        ws="server.web.uvicorn_ws:BoundedWebSocketProtocol",
        ws_per_message_deflate=False,
        log_level="warning",
    )
