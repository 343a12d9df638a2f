"""Fan-out: one room of N viewers, fed gift events through Redis pub/sub, three servers.

Every server gets the same input — gift events published on a Redis channel at a set rate —
and the same clients (``loadtest.wsclient``, one asyncio process). For giftwire the events
are published on the room's channel exactly as ``send_gift.lua`` publishes them, and the
stream's hash and feed move with them as the script moves them (``Giftwire.publish``); the
balances are not involved: the hot-path benchmark measures the script. The baselines get
the event as giftwire sends it to viewers, so frames are the same size.

For each server: memory per idle viewer (RSS growth over N connections), then load steps
of rising rate with delivery latency (publish to seen, from a timestamp in the event) until
the server no longer keeps up, then a saturation step whose deliveries per second are the
server's fan-out capacity. Server CPU time is read from /proc for each step.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from redis.asyncio import Redis

from benchmarks.procs import JWT_SECRET, Child, cpu_seconds, giftwire_server, rss_bytes
from client_demo.wire import subprotocols
from loadtest.histogram import Histogram
from loadtest.wsclient import OP_TEXT, WsClientProtocol, open_connection
from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.protocol.events import enrich_gift
from server.web.auth import issue_token

STREAM = "fan"
CREATOR = "fan_creator"
PROBES = 50
"""Viewers of the crowd that also time what they see (``latency_in_crowd_ms``)."""
PROBES_APART = 50
"""Viewers in a process of their own that time what they see (``latency_ms``), joined one
at a time among the crowd (``benchmarks.probe`` says why). 50, so that a 3 s step at one
gift per second still gives 150 samples, and a probe every 100 viewers of 5,000."""
FEED_EVENTS_MAX = 10_000
"""The feed's length, as ``Limits.feed_events_max`` bounds it."""
PUBLISH_SCRIPT = """
redis.call('HSET', KEYS[1], 'seq', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'coins', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'gifts', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], ARGV[1] .. '-0', 'e', ARGV[5])
return redis.call('PUBLISH', KEYS[3], ARGV[5])
"""
"""``Giftwire.publish``: the stream's side of ``send_gift.lua`` (no balances), for the
benchmark's publisher only. KEYS: stream hash, feed, room channel; ARGV: seq, coins,
count, feed length, the event's JSON."""
CONNECTS_IN_FLIGHT_MAX = 100
PER_SOURCE_IP = 4000

Progress = Callable[[str], None]


def gift_event(seq: int) -> dict[str, Any]:
    """A gift event shaped like send_gift.lua's, with the publish time for latency."""
    return {
        "type": "gift",
        "seq": seq,
        "transfer_id": f"{int(time.time() * 1000)}-{seq}",
        "stream_id": STREAM,
        "sender_id": f"user{seq % 997}",
        "sender_name": f"Viewer {seq % 997}",
        "gift_id": "rose",
        "count": 1,
        "combo": 1 + seq % 7,
        "coins": 1,
        "diamonds": 0,
        "ts": int(time.time() * 1000),
        "sent_us": time.time_ns() // 1000,
    }


@dataclass(slots=True)
class Counters:
    frames: int = 0
    events: int = 0
    latency: Histogram = field(default_factory=Histogram)


class Target:
    """A server under test: how to start it, connect to it, publish to it, count frames."""

    name = ""

    def __init__(self, log_dir: Path, redis_url: str) -> None:
        self.log_dir = log_dir
        self.redis_url = redis_url
        self.child: Child | None = None
        self.seq = 0
        self.gc_out: Path | None = None
        """Set: the server runs under ``benchmarks.gc_watch``, which writes here."""

    def python(self) -> list[str]:
        """How to start the server's Python: plain, or with its collections timed."""
        if self.gc_out is None:
            return [sys.executable]
        return [sys.executable, "-m", "benchmarks.gc_watch", str(self.gc_out)]

    async def start(self, redis: Redis) -> None:
        raise NotImplementedError

    def url(self, port: int) -> str:
        raise NotImplementedError

    def protocols(self, index: int) -> list[str]:
        return []

    def opened(self, proto: WsClientProtocol) -> None:
        """Right after the handshake (socket.io's client speaks first)."""

    def events_in(self, payload: bytes) -> int:
        return 1

    def events_of(self, payload: bytes) -> list[dict[str, Any]]:
        return [orjson.loads(payload)]

    async def publish(self, redis: Redis) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


class BareWebsockets(Target):
    name = "websockets broadcast()"
    channel = "bench-bare"

    async def start(self, redis: Redis) -> None:
        self.child = Child(
            "bare-ws",
            [*self.python(), "-m", "benchmarks.baselines.bare_ws", "--port", "{port}",
             "--redis-url", self.redis_url, "--channel", self.channel],
            self.log_dir, {},
        )  # fmt: skip
        self.child.start(ready_path=None)
        self.catalog = load_catalog()

    def url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/"

    async def publish(self, redis: Redis) -> None:
        self.seq += 1
        event = enrich_gift(gift_event(self.seq), self.catalog)
        await redis.publish(self.channel, orjson.dumps(event))


class StarletteFloor(Target):
    name = "Starlette endpoint under uvicorn (memory floor)"

    async def start(self, redis: Redis) -> None:
        self.child = Child(
            "starlette",
            [sys.executable, "-m", "benchmarks.baselines.starlette_ws", "--port", "{port}"],
            self.log_dir, {},
        )  # fmt: skip
        self.child.start(ready_path=None)

    def url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/"


class SocketIO(Target):
    name = "python-socketio + AsyncRedisManager"

    async def start(self, redis: Redis) -> None:
        import socketio

        from benchmarks.baselines.socketio_server import CHANNEL

        self.child = Child(
            "socketio",
            [sys.executable, "-m", "benchmarks.baselines.socketio_server", "--port", "{port}",
             "--redis-url", self.redis_url],
            self.log_dir, {},
        )  # fmt: skip
        self.child.start(ready_path=None)
        self.manager = socketio.AsyncRedisManager(self.redis_url, channel=CHANNEL, write_only=True)
        self.catalog = load_catalog()

    def url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"

    def opened(self, proto: WsClientProtocol) -> None:
        pass

    def events_in(self, payload: bytes) -> int:
        return 1 if payload.startswith(b"42") else 0

    def events_of(self, payload: bytes) -> list[dict[str, Any]]:
        return [orjson.loads(payload[2:])[1]] if payload.startswith(b"42") else []

    async def publish(self, redis: Redis) -> None:
        self.seq += 1
        event = enrich_gift(gift_event(self.seq), self.catalog)
        await self.manager.emit("gift", event, room="room", namespace="/")


class Giftwire(Target):
    def __init__(self, log_dir: Path, redis_url: str, *, coalesce: bool) -> None:
        super().__init__(log_dir, redis_url)
        self.coalesce = coalesce
        self.name = "giftwire (coalescing)" if coalesce else "giftwire (frame per gift)"
        self.keys = Keys(f"fan{int(coalesce)}{time.time_ns() % 10**6}:")
        self.epoch = ""
        self.publish_sha = ""

    async def start(self, redis: Redis) -> None:
        # Frame per gift: the room never turns hot, however many viewers it has, and gifts
        # handed over in one loop turn do not share a frame either (a batch of one).
        per_frame = {
            "GIFTWIRE_HOT_ROOM_EVENTS_PER_S": "100000000",
            "GIFTWIRE_ROOM_FRAMES_PER_S_MAX": "1000000000",
            "GIFTWIRE_BATCH_EVENTS_MAX": "1",
        }
        env = {} if self.coalesce else per_frame
        # Stats every 2 s, as deployed; the benchmark's viewers all come from this machine.
        self.child = giftwire_server(
            self.log_dir, self.redis_url, self.keys.prefix, python=self.python(), **env
        )
        ledger = Ledger(redis, keys=self.keys)
        await ledger.prepare(load_catalog())
        await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="fan-out")
        stream = await ledger.stream(STREAM)
        assert stream is not None
        self.epoch = stream.epoch
        self.publish_sha = str(await redis.script_load(PUBLISH_SCRIPT))
        self.child.start()
        self.channel = self.keys.room_channel(STREAM)

    def url(self, port: int) -> str:
        return f"ws://127.0.0.1:{port}/ws/streams/{STREAM}"

    def protocols(self, index: int) -> list[str]:
        token = issue_token(JWT_SECRET, f"v{index}", Role.VIEWER, ttl_s=3600)
        return subprotocols(token)

    def events_in(self, payload: bytes) -> int:
        return payload.count(b'"seq":') if b'"type":"gift' in payload else 0

    def events_of(self, payload: bytes) -> list[dict[str, Any]]:
        if b'"type":"gift' not in payload:
            return []
        doc = orjson.loads(payload)
        return list(doc["events"]) if doc["type"] == "gifts" else [doc]

    async def publish(self, redis: Redis) -> None:
        """What ``send_gift.lua`` does to the stream, in one script run: the hash's
        ``seq``, ``coins`` and ``gifts``, the feed entry ``SEQ-0``, the publish.

        Publishing alone would leave the stream's ``seq`` at 0 while the room delivers
        more: every stats tick would then take it for Redis going back in time, start a
        new epoch, send ``history_changed`` to every viewer and hold the live events
        meanwhile, which is a recovery path and no part of a live room's cost. (One
        command, not a MULTI of five: the publisher must keep up with 1,000 gifts/s.)
        """
        self.seq += 1
        event = {**gift_event(self.seq), "epoch": self.epoch}
        await redis.evalsha(
            self.publish_sha, 3,
            self.keys.stream(STREAM), self.keys.feed(STREAM), self.channel,
            self.seq, event["coins"], event["count"], FEED_EVENTS_MAX, orjson.dumps(event),
        )  # fmt: skip


@dataclass(slots=True)
class Step:
    rate_per_s: float
    seconds: float
    published: int
    frames_per_s: float
    events_per_s: float
    server_cpu: float
    """Share of one core the server used during the step."""
    server_us_per_frame: float
    latency_ms: dict[str, float | int]
    """Publish to seen, timed by the probes in their own process."""
    latency_in_crowd_ms: dict[str, float | int]
    """The same, timed by viewers inside the crowd's client process (adds its queue)."""
    probe_p50_ms: list[float]
    """Each probe's median, in the order they joined (spread over the crowd's join order)."""

    def kept_up(self, viewers: int) -> bool:
        return self.events_per_s >= 0.9 * self.rate_per_s * viewers


class Room:
    """N client connections to one target and the counters they feed."""

    def __init__(self, target: Target, viewers: int) -> None:
        self.target = target
        self.viewers = viewers
        self.counters = Counters()
        self.protos: list[WsClientProtocol] = []
        self.failures = 0

    def _on_frame(self, probe: bool, index: int) -> Callable[[int, bytes], None]:
        counters, target = self.counters, self.target
        is_socketio = isinstance(target, SocketIO)

        def on_frame(opcode: int, payload: bytes) -> None:
            if opcode != OP_TEXT:
                return
            counters.frames += 1
            if is_socketio and payload[:1] in (b"0", b"2"):
                proto = self.protos_by_index.get(index)
                if proto is not None:
                    proto.send_text(b"40" if payload[:1] == b"0" else b"3")
                counters.frames -= 1  # engine.io control, not a delivery
                return
            if not probe:
                counters.events += target.events_in(payload)
                return
            now_us = time.time_ns() // 1000
            events = target.events_of(payload)
            counters.events += len(events)
            for event in events:
                counters.latency.record((now_us - event["sent_us"]) / 1e6)

        return on_frame

    async def connect(self, progress: Progress, probes: Probes | None = None) -> float:
        """Connect the crowd, ``probes`` joining one at a time at evenly spaced points."""
        assert self.target.child is not None
        port = self.target.child.port
        url = self.target.url(port)
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT_MAX)
        self.protos_by_index: dict[int, WsClientProtocol] = {}
        started = time.monotonic()

        async def one(index: int) -> None:
            async with gate:
                ip = f"127.0.0.{1 + index // PER_SOURCE_IP}"
                pending = _Deferred()
                try:
                    proto, _ = await open_connection(
                        url,
                        pending,
                        protocols=self.target.protocols(index),
                        source_ip=ip,
                        timeout_s=30,
                    )
                except (OSError, TimeoutError, ConnectionError):
                    self.failures += 1
                    return
                self.protos_by_index[index] = proto
                pending.attach(self._on_frame(index < PROBES, index))
                self.protos.append(proto)
                if len(self.protos) % 1000 == 0:
                    progress(f"{self.target.name}: {len(self.protos):,} viewers connected")

        if probes is None:
            await asyncio.gather(*(one(i) for i in range(self.viewers)))
            return time.monotonic() - started
        # Probe j joins after (j + 1/2) * N / P crowd viewers, once those are all in: the
        # probes sit at the middle of P equal slices of the join order, not after the crowd.
        start = 0
        for j in range(probes.count):
            mark = round((j + 0.5) * self.viewers / probes.count)
            await asyncio.gather(*(one(i) for i in range(start, mark)))
            await probes.join()
            start = mark
        await asyncio.gather(*(one(i) for i in range(start, self.viewers)))
        return time.monotonic() - started

    def close(self) -> None:
        for proto in self.protos:
            proto.close()


class _Deferred:
    """Frames that arrive before the counting callback is attached are replayed to it."""

    def __init__(self) -> None:
        self.target: Callable[[int, bytes], None] | None = None
        self.early: list[tuple[int, bytes]] = []

    def __call__(self, opcode: int, payload: bytes) -> None:
        if self.target is None:
            self.early.append((opcode, payload))
        else:
            self.target(opcode, payload)

    def attach(self, target: Callable[[int, bytes], None]) -> None:
        self.target = target
        for opcode, payload in self.early:
            target(opcode, payload)
        self.early = []


class Probes:
    """``benchmarks.probe`` in a child process, joined to the same room."""

    kinds: ClassVar[dict[str, str]] = {
        "BareWebsockets": "bare",
        "SocketIO": "socketio",
        "Giftwire": "giftwire",
    }

    def __init__(self, target: Target, count: int = PROBES_APART) -> None:
        self.target = target
        self.count = count
        self.joined = 0
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the probe process; its probes join later, one per ``join``."""
        assert self.target.child is not None
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.probe",
            "--url", self.target.url(self.target.child.port),
            "--kind", self.kinds[type(self.target).__name__],
            "--secret", JWT_SECRET,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await self._line(30.0)  # "ready"

    async def join(self) -> None:
        """One more probe, returning once the server has it in the room."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"join\n")
        await self.process.stdin.drain()
        await self._line(40.0)  # "joined <n>"
        self.joined += 1

    async def _line(self, timeout_s: float) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError("the probe process exited")
        return line

    async def report(self) -> dict[str, Any]:
        """Latency since the previous report (``by_probe_p50``: each probe's median)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        return dict(orjson.loads(await self._line(10.0)))

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _step(
    room: Room, probes: Probes, redis: Redis, rate: float, seconds: float, warmup_s: float
) -> Step:
    target, counters = room.target, room.counters
    assert target.child is not None
    pid = target.child.pid
    interval = 1.0 / rate
    started = time.monotonic()
    next_at = started
    published = 0
    mark: tuple[float, int, int, float] | None = None
    counters.latency = Histogram()
    while (now := time.monotonic()) < started + seconds:
        if mark is None and now >= started + warmup_s:
            mark = (now, counters.frames, counters.events, cpu_seconds(pid))
            counters.latency = Histogram()
            await probes.report()  # start the probes' count here
        await target.publish(redis)
        published += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    end = (time.monotonic(), counters.frames, counters.events, cpu_seconds(pid))
    await asyncio.sleep(0.5)  # late deliveries count toward the latency of this step
    latency = await probes.report()
    by_probe = latency.pop("by_probe_p50")
    in_crowd = counters.latency.summary_ms()
    assert mark is not None
    span = end[0] - mark[0]
    frames = end[1] - mark[1]
    cpu = end[3] - mark[3]
    return Step(
        rate_per_s=rate,
        seconds=round(span, 2),
        published=published,
        frames_per_s=round(frames / span),
        events_per_s=round((end[2] - mark[2]) / span),
        server_cpu=round(cpu / span, 2),
        server_us_per_frame=round(cpu / frames * 1e6, 2) if frames else 0.0,
        latency_ms=latency,
        latency_in_crowd_ms=in_crowd,
        probe_p50_ms=list(by_probe),
    )


async def measure(
    target: Target,
    redis: Redis,
    viewers: int,
    rates: Sequence[float],
    saturation_rate: float,
    progress: Progress,
    step_s: float = 4.0,
) -> dict[str, Any]:
    """Start the target, connect the viewers, step the load up, then saturate it."""
    await target.start(redis)
    assert target.child is not None
    room = Room(target, viewers)
    probes = Probes(target)
    try:
        # One connection first, so that lazy imports and the room itself are not counted.
        warm = Room(target, 1)
        warm.protos_by_index = {}
        await warm.connect(progress)
        await asyncio.sleep(0.5)
        latency = bool(rates or saturation_rate)
        if latency:
            await probes.start()
        rss_before = rss_bytes(target.child.pid)
        connect_s = await room.connect(progress, probes if latency else None)
        await asyncio.sleep(1.5)
        rss_after = rss_bytes(target.child.pid)
        held = len(room.protos)
        # The probes joined among the crowd: the memory they took counts, and so do they.
        per_viewer = (rss_after - rss_before) / max(held + probes.joined, 1)
        progress(f"{target.name}: {held:,} viewers, {per_viewer / 1024:.1f} KiB each")
        result: dict[str, Any] = {
            "server": target.name,
            "viewers": viewers,
            "held": held,
            "connect_failures": room.failures,
            "connect_s": round(connect_s, 2),
            "idle_bytes_per_viewer": round(per_viewer),
        }
        if not latency:
            return result  # memory only
        result["probes"] = probes.joined
        steps: list[Step] = []
        for rate in rates:
            step = await _step(room, probes, redis, rate, step_s, warmup_s=1.0)
            steps.append(step)
            progress(
                f"{target.name}: {rate:g}/s -> {step.events_per_s:,.0f} deliveries/s,"
                f" p99 {step.latency_ms['p99']} ms, cpu {step.server_cpu:.0%}"
            )
            if not step.kept_up(held):
                break
        saturation = await _step(room, probes, redis, saturation_rate, step_s, warmup_s=1.5)
        progress(
            f"{target.name}: saturated at {saturation.frames_per_s:,.0f} frames/s,"
            f" {saturation.events_per_s:,.0f} events/s, cpu {saturation.server_cpu:.0%}"
        )
        result["steps"] = [_step_json(s) for s in steps]
        result["saturation"] = _step_json(saturation)
        return result
    finally:
        await probes.stop()
        room.close()
        target.stop()


def _step_json(step: Step) -> dict[str, Any]:
    return {name: getattr(step, name) for name in Step.__slots__}


async def measure_gc(
    target: Target, redis: Redis, viewers: int, progress: Progress, idle_s: float = 5.0
) -> dict[str, Any]:
    """Garbage collection while ``viewers`` connect and then sit idle (no gifts).

    The server runs under ``benchmarks.gc_watch``: every collection is timed by
    ``gc.callbacks``, in wall time (what a viewer waits) and in the collecting thread's CPU
    time (what the collector did: on a shared machine the wall time also counts the moments
    other processes had the core). A census of tracked objects before and after gives the
    objects each connection adds.
    """
    target.gc_out = target.log_dir / f"gc-{type(target).__name__}-{time.time_ns()}.json"
    await target.start(redis)
    assert target.child is not None
    room = Room(target, viewers)
    try:
        warm = Room(target, 1)
        warm.protos_by_index = {}
        await warm.connect(progress)
        before = await _gc_census(target)
        connect_s = await room.connect(progress)
        await asyncio.sleep(idle_s)
        after = await _gc_census(target)
        held = max(len(room.protos), 1)
        result = {
            "server": target.name,
            "viewers": viewers,
            "held": len(room.protos),
            "connect_s": round(connect_s, 2),
            # Collections between the two censuses: while the viewers connected and idled.
            "max_pause_ms": after["window"]["max_pause_ms"],
            "max_pause_cpu_ms": after["window"]["max_pause_cpu_ms"],
            "collections": after["window"]["collections"],
            "max_pause_since_start_ms": after["max_pause_ms"],
            "generations": after["generations"],
            "objects_per_viewer": round(
                (after["tracked_objects"] - before["tracked_objects"]) / held, 1
            ),
            "tracked_objects": after["tracked_objects"],
            "census_per_viewer": {
                name: round((count - before["census"].get(name, 0)) / held, 2)
                for name, count in list(after["census"].items())[:15]
            },
        }
        progress(
            f"{target.name}: GC with {held:,} viewers: longest pause"
            f" {result['max_pause_ms']} ms ({result['max_pause_cpu_ms']} ms CPU),"
            f" {result['objects_per_viewer']} objects per viewer"
        )
        return result
    finally:
        room.close()
        target.stop()
        target.gc_out = None


async def _gc_census(target: Target) -> dict[str, Any]:
    """Ask gc_watch for a census (SIGUSR1) and wait for the summary that has it."""
    import os
    import signal

    assert target.child is not None and target.gc_out is not None
    asked = time.time()
    os.kill(target.child.pid, signal.SIGUSR1)
    async with asyncio.timeout(60):
        while True:
            await asyncio.sleep(0.25)
            if target.gc_out.exists():
                summary: dict[str, Any] = orjson.loads(target.gc_out.read_bytes())
                if summary.get("census_at", 0) >= asked:
                    return summary
