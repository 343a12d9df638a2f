"""Latency probes: a few viewers in a process of their own.

The fan-out room's thousands of viewers share one client process, which reads a broadcast's
frames one after the other: a probe among them would measure that process's queue as much
as the server. These probes join the same room from a separate process, so what they time
is the server (where in its fan-out order they sit) and the network, not the crowd.

Driven over stdin/stdout by ``benchmarks.fanout``: it prints ``ready`` once connected, and
answers each ``report`` line with the latency summary (JSON) since the previous one.

    python -m benchmarks.probe --url ws://… --kind giftwire --count 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import orjson

from client_demo.wire import subprotocols
from loadtest.histogram import Histogram
from loadtest.wsclient import OP_TEXT, WsClientProtocol, open_connection
from server.domain.accounts import Role
from server.web.auth import issue_token

JWT_SECRET_ENV = "GIFTWIRE_JWT_SECRET"


def _events(kind: str, payload: bytes) -> list[dict[str, object]]:
    if kind == "socketio":
        return [orjson.loads(payload[2:])[1]] if payload.startswith(b"42") else []
    if kind == "giftwire":
        if b'"type":"gift' not in payload:
            return []
        doc = orjson.loads(payload)
        return list(doc["events"]) if doc["type"] == "gifts" else [doc]
    return [orjson.loads(payload)]


async def main(url: str, kind: str, count: int, secret: str) -> None:
    histogram = Histogram()
    protos: dict[int, WsClientProtocol] = {}
    replies: dict[int, bytes] = {}

    def on_frame(index: int) -> object:
        def handle(opcode: int, payload: bytes) -> None:
            nonlocal histogram
            if opcode != OP_TEXT:
                return
            if kind == "socketio" and payload[:1] in (b"0", b"2"):
                reply = b"40" if payload[:1] == b"0" else b"3"
                if index in protos:
                    protos[index].send_text(reply)
                else:
                    replies[index] = reply  # the open packet came with the handshake
                return
            now_us = time.time_ns() // 1000
            for event in _events(kind, payload):
                histogram.record((now_us - int(event["sent_us"])) / 1e6)  # type: ignore[call-overload]

        return handle

    for index in range(count):
        protocols: list[str] = []
        if kind == "giftwire":
            token = issue_token(secret, f"probe{index}", Role.VIEWER, ttl_s=3600)
            protocols = subprotocols(token)
        proto, _ = await open_connection(url, on_frame(index), protocols=protocols)  # type: ignore[arg-type]
        protos[index] = proto
        if index in replies:
            proto.send_text(replies.pop(index))
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"report":
            print(orjson.dumps(histogram.summary_ms()).decode(), flush=True)
            histogram = Histogram()
    for proto in protos.values():
        proto.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["giftwire", "bare", "socketio"], required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.kind, args.count, args.secret))
