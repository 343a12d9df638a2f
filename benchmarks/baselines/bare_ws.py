"""The fan-out ceiling: a bare ``websockets`` server that ``broadcast()``s every message
published on a Redis channel to every connection, with no queue, no backpressure and no
per-connection state beyond what the library keeps.

    python -m benchmarks.baselines.bare_ws --port 9000 --redis-url redis://… --channel c
"""

from __future__ import annotations

import argparse
import asyncio

from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(port: int, redis_url: str, channel: str) -> None:
    connections: set[ServerConnection] = set()

    async def handler(websocket: ServerConnection) -> None:
        connections.add(websocket)
        try:
            await websocket.wait_closed()
        finally:
            connections.discard(websocket)

    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=4096):
        async for message in pubsub.listen():
            if message["type"] == "message":
                broadcast(connections, message["data"].decode())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.redis_url, args.channel))
