"""The peer a Python team would otherwise pick: python-socketio (ASGI, under uvicorn) with
its ``AsyncRedisManager``. Every connection joins one room; a write-only manager in the
benchmark emits to that room through Redis, the way a multi-process socket.io deployment
broadcasts.

    python -m benchmarks.baselines.socketio_server --port 9000 --redis-url redis://…
"""

from __future__ import annotations

import argparse
from typing import Any

import socketio
import uvicorn

CHANNEL = "bench-socketio"
ROOM = "room"


def build(redis_url: str) -> Any:
    manager = socketio.AsyncRedisManager(redis_url, channel=CHANNEL)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, transports=["websocket"])

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's --ws")
    args = parser.parse_args()
    uvicorn.run(
        build(args.redis_url),
        host="127.0.0.1",
        port=args.port,
        ws=args.ws,
        ws_per_message_deflate=False,
        log_level="warning",
    )
