"""Latency probes: a few viewers in a process of their own, spread over the delivery order.

Why a process of their own. The fan-out room's thousands of viewers share one client
process, which reads a broadcast's frames one after the other: a probe among them would
measure that process's queue as much as the server. These probes join the same room from
a separate process, so what they time is the server and the network, not the crowd.

Why spread. A server writes a broadcast to its connections one after the other, so a
viewer's latency depends on where it sits in that order: the first is written to at once,
the last after the whole room (60-130 ms for 5,000 viewers on the 2-core box). Probes that
all join after the crowd sample wherever the server puts its newest connections: at the
end of a room kept in join order, or in one corner of a hash table if their objects were
allocated side by side. So ``benchmarks.fanout`` connects the probes one at a time *among*
the crowd: probe ``j`` of ``P`` joins after ``(j + 1/2) * N / P`` of the ``N`` crowd
viewers, at the middle of its slice of the join order. Whether a server delivers in join
order, in a rotation of it, or in an order unrelated to it, the probes then sample its
whole delivery order evenly (stratified in the first two cases, at random in the third),
and the same way for every server. Each report gives every probe's own median, in join
order (``by_probe_p50``), which shows what a server does: both servers measured side by
side keep their connections in a ``set`` (iterated in hash order), and there each probe
keeps its own place from step to step, unrelated to when it joined, from the first
written to (1-2 ms) to the last (the time one broadcast takes to reach the whole room).

Driven over stdin/stdout by ``benchmarks.fanout``: it prints ``ready`` at start; each
``join`` line connects one more probe and is answered with ``joined <n>`` once the server
has it in the room (giftwire: its welcome arrived; socket.io: the namespace connect was
acknowledged, after the server's connect handler entered the room; bare websockets: the
handshake is done); each ``report`` line is answered with the latency summary (JSON) since
the previous one.

    python -m benchmarks.probe --url ws://… --kind giftwire
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
JOIN_TIMEOUT_S = 30.0


def _events(kind: str, payload: bytes) -> list[dict[str, object]]:
    if kind == "socketio":
        return [orjson.loads(payload[2:])[1]] if payload.startswith(b"42") else []
    if kind == "giftwire":
        if b'"type":"gift' not in payload:
            return []
        doc = orjson.loads(payload)
        return list(doc["events"]) if doc["type"] == "gifts" else [doc]
    return [orjson.loads(payload)]


def _in_room(kind: str, payload: bytes) -> bool:
    """This frame shows the server has put the probe in the room (see the module doc)."""
    if kind == "giftwire":
        return b'"type":"welcome"' in payload
    if kind == "socketio":
        return payload.startswith(b"40")
    return True


class Probe:
    """One probe connection and what it has timed since the last report."""

    def __init__(self, index: int, kind: str) -> None:
        self.index = index
        self.kind = kind
        self.histogram = Histogram()
        self.proto: WsClientProtocol | None = None
        self.reply: bytes | None = None
        """socket.io's answer to the open packet, if it came with the handshake."""
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode != OP_TEXT:
            return
        now_us = time.time_ns() // 1000
        kind = self.kind
        if kind == "socketio" and payload[:1] in (b"0", b"2"):
            reply = b"40" if payload[:1] == b"0" else b"3"
            if self.proto is not None:
                self.proto.send_text(reply)
            else:
                self.reply = reply
            return
        if not self.joined.done() and _in_room(kind, payload):
            self.joined.set_result(None)
        for event in _events(kind, payload):
            self.histogram.record((now_us - int(event["sent_us"])) / 1e6)  # type: ignore[call-overload]

    async def connect(self, url: str, secret: str) -> None:
        protocols: list[str] = []
        if self.kind == "giftwire":
            token = issue_token(secret, f"probe{self.index}", Role.VIEWER, ttl_s=3600)
            protocols = subprotocols(token)
        self.proto, _ = await open_connection(url, self.on_frame, protocols=protocols)
        if self.reply is not None:
            self.proto.send_text(self.reply)
        if self.kind == "bare":
            self.joined.set_result(None)
        async with asyncio.timeout(JOIN_TIMEOUT_S):
            await self.joined


def report(probes: list[Probe]) -> dict[str, object]:
    """All probes' latencies merged, and each probe's median in join order; then reset."""
    merged = Histogram()
    by_probe: list[float] = []
    for probe in probes:
        merged.merge(probe.histogram)
        by_probe.append(probe.histogram.summary_ms()["p50"])
        probe.histogram = Histogram()
    return {**merged.summary_ms(), "by_probe_p50": by_probe}


async def main(url: str, kind: str, secret: str) -> None:
    probes: list[Probe] = []
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.strip()
        if command == b"join":
            probe = Probe(len(probes), kind)
            await probe.connect(url, secret)
            probes.append(probe)
            print(f"joined {len(probes)}", flush=True)
        elif command == b"report":
            print(orjson.dumps(report(probes)).decode(), flush=True)
    for probe in probes:
        if probe.proto is not None:
            probe.proto.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["giftwire", "bare", "socketio"], required=True)
    parser.add_argument("--secret", default="")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.kind, args.secret))
