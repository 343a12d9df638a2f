"""The coefficients of the capacity model (``docs/capacity.md``), measured in one run, and
the model's prediction checked against a run at 1/100 of the target.

``python -m benchmarks run --only capacity --out benchmarks/results/capacity.json``

Measured here, each in the same run:

* Redis CPU per gift script on one node (``send_gift.lua``), from ``/proc``, with 64 calls
  in flight and paced at the check's rate (the model uses the paced figure);
* on a loopback 3-primary cluster, Redis CPU per debit (``debit_gift.lua``) and per
  credited transfer (``credit_gifts.lua``, batched for one hot creator), each leg on its
  own primary, the same two ways;
* Redis CPU per ``PUBLISH`` of one event to 1 and to 8 subscribed connections: the relay
  cost of each server node a room's channel feeds (the first level of the fan-out tree);
* bytes per event on the wire (a ``gifts`` frame of 1 and of 50 events, JSON, as sent);
* giftwire's server CPU per frame for small and for full frames (3,000 viewers), fitted to
  ``a + b × bytes``, and memory per idle connection;
* then the check: the model predicts the server CPU per delivered event at 10,000 viewers
  and 1,000 gifts/s into one room from the coefficients above, and a run at that load
  measures it (with the resident memory, predicted from the memory per connection).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from benchmarks import fanout
from benchmarks.capacity_model import Coefficients, plan, process_load
from benchmarks.procs import REPO, cpu_seconds, rss_bytes
from loadtest.histogram import Histogram
from loadtest.wsclient import OP_TEXT
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.protocol import events
from server.protocol.codec import WireFormat, encode_frame

Progress = fanout.Progress


async def _usec_per_call(redis: Redis, command: str) -> float:
    stats = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}", {})
    return float(entry.get("usec_per_call", 0.0))


IN_FLIGHT = 64
"""Senders of the coefficient runs: pipelined, each sends its next gift when the last is
answered (64 calls in flight); paced, each one gift every ``IN_FLIGHT / rate`` seconds."""


async def drive(
    send: Callable[[str, int], Awaitable[Any]],
    senders: list[str],
    per_sender: int,
    rate: float | None,
) -> None:
    """``per_sender`` calls of ``send(sender, n)`` for each sender, concurrently. With a
    ``rate``, paced as a crowd of server processes sends: each sender one call every
    ``len(senders) / rate`` seconds, the senders' starts staggered evenly over that interval
    (so calls mostly arrive alone, as they do at a primary fed by many processes), as the
    check's load process does (``capacity_load.py``)."""
    interval = len(senders) / rate if rate else 0.0
    start = time.monotonic()

    async def one(index: int, sender: str) -> None:
        next_at = start + index * interval / len(senders)
        for n in range(per_sender):
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
            await send(sender, n)

    await asyncio.gather(*(one(i, s) for i, s in enumerate(senders)))


async def _reads_processed(redis: Redis) -> int:
    return int((await redis.info("stats")).get("total_reads_processed", 0))


async def redis_gift_cpu(
    redis_url: str, redis_pid: int, gifts: int, rate: float
) -> dict[str, float]:
    """Redis CPU per send_gift script call, pipelined (64 in flight) and paced at ``rate``
    gifts/s: the server's own CPU time from /proc (``INFO commandstats`` times the call by
    the clock, which a loaded machine's preemption inflates; it is kept beside). A paced
    call mostly arrives alone and pays Redis' read and write system calls by itself; the
    calls per read (``INFO stats``) show how alone."""
    redis = Redis.from_url(redis_url)
    fast = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
    ledger = Ledger(redis, keys=Keys(f"cap{time.time_ns() % 10**6}:"), limits=fast)
    out: dict[str, float] = {}
    try:
        await ledger.prepare(load_catalog())
        await ledger.start_stream(stream_id="cap", creator_id="cap_creator", title="capacity")
        senders = [f"s{i}" for i in range(IN_FLIGHT)]
        for sender in senders:
            await ledger.top_up(payment_id=f"p-{sender}", user_id=sender, coins=10**9)
        per_sender = gifts // len(senders)
        for name, pace in (("gift_script", None), ("gift_script_paced", rate)):

            async def send(sender: str, n: int, name: str = name) -> None:
                await ledger.send_gift(
                    client_id=f"{name}-{sender}-{n}", sender_id=sender, sender_name=sender,
                    stream_id="cap", creator_id="cap_creator", gift_id="rose", count=1,
                )  # fmt: skip

            await redis.config_resetstat()
            reads_before, cpu_before = await _reads_processed(redis), cpu_seconds(redis_pid)
            await drive(send, senders, per_sender, pace)
            used = cpu_seconds(redis_pid) - cpu_before
            calls = per_sender * len(senders)
            reads = await _reads_processed(redis) - reads_before
            out[f"{name}_us"] = round(used * 1e6 / calls, 2)
            out[f"{name}_clock_us"] = await _usec_per_call(redis, "evalsha")
            out[f"{name}_calls_per_read"] = round(calls / max(reads, 1), 2)
        return out
    finally:
        await redis.aclose()


async def redis_publish_cpu(redis_url: str, messages: int) -> dict[str, float]:
    """Redis µs per PUBLISH of one gift event (as the scripts publish it) to 1 and to 8
    subscribed connections: the cost of each server node a room's channel feeds."""
    payload = orjson.dumps(fanout.gift_event(1))
    out: dict[str, float] = {"event_bytes": len(payload)}
    for subscribers in (1, 8):
        clients = [Redis.from_url(redis_url) for _ in range(subscribers)]
        pubsubs = [c.pubsub() for c in clients]
        for p in pubsubs:
            await p.subscribe("cap-tree")
        readers = [asyncio.create_task(_drain(p)) for p in pubsubs]
        publisher = Redis.from_url(redis_url)
        await publisher.config_resetstat()
        for start in range(0, messages, 100):
            pipe = publisher.pipeline(transaction=False)
            for _ in range(min(100, messages - start)):
                pipe.publish("cap-tree", payload)  # type: ignore[unused-awaitable]
            await pipe.execute()
        out[f"publish_{subscribers}_subscribers_us"] = await _usec_per_call(publisher, "publish")
        for task in readers:
            task.cancel()
        for p, c in zip(pubsubs, clients, strict=True):
            await p.aclose()  # type: ignore[no-untyped-call]
            await c.aclose()
        await publisher.aclose()
    one, eight = out["publish_1_subscribers_us"], out["publish_8_subscribers_us"]
    out["relay_us_per_subscriber"] = round((eight - one) / 7, 3)
    return out


async def cluster_leg_cpu(base_dir: Path, gifts: int, rate: float) -> dict[str, float]:
    """Redis µs per debit (debit_gift.lua) and per credited transfer (credit_gifts.lua,
    batched per stream) on a loopback 3-primary cluster: every sender on one primary, the
    hot creator on another, so each primary's EVALSHA time is one leg's. Pipelined (64 in
    flight: the credits batch ~27 to a call) and paced at ``rate`` (the model's figures:
    what a primary fed by many server processes sees, credits mostly one to a call)."""
    from server.ledger.cluster_keys import ClusterKeys, slot_of
    from server.ledger.cluster_ledger import ClusterLedger
    from server.ledger.cluster_runner import ClusterScriptRunner
    from tests.support.cluster import RedisCluster

    cluster = RedisCluster(base_dir, replicas=0)
    cluster.start()
    runner = ClusterScriptRunner(cluster.startup_urls, timeout_s=10.0)
    keys = ClusterKeys("cap:")
    limits = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
    ledger = ClusterLedger(runner, keys=keys, limits=limits)
    clients: dict[int, Redis] = {}
    try:
        await ledger.prepare(load_catalog())
        owner = {p.port: p for p in cluster.primaries()}

        def port_of(user: str) -> int:
            return cluster.primary_for_slot(slot_of(keys.account(user))).port

        creator = "hot_creator"
        ports = sorted(owner)
        sender_port = next(p for p in ports if p != port_of(creator))
        credit_port = port_of(creator)
        senders = [u for u in (f"s{i}" for i in range(2000)) if port_of(u) == sender_port]
        senders = senders[:IN_FLIGHT]
        await ledger.start_stream(stream_id="cap", creator_id=creator, title="capacity")
        for sender in senders:
            await ledger.top_up(payment_id=f"p-{sender}", user_id=sender, coins=10**9)
        clients = {port: Redis(port=port) for port in ports}
        pids = {node.port: node.process.pid for node in cluster.nodes if node.process}
        per_sender = gifts // len(senders)
        sent = per_sender * len(senders)
        out: dict[str, float] = {}
        for suffix, pace in (("_pipelined", None), ("", rate)):

            async def send(sender: str, n: int, suffix: str = suffix) -> None:
                await ledger.send_gift(
                    client_id=f"{sender}-{n}{suffix}", sender_id=sender, sender_name=sender,
                    stream_id="cap", creator_id=creator, gift_id="rose", count=1,
                )  # fmt: skip

            for client in clients.values():
                await client.config_resetstat()
            cpu_before = {port: cpu_seconds(pids[port]) for port in ports}
            await drive(send, senders, per_sender, pace)
            used = {port: cpu_seconds(pids[port]) - cpu_before[port] for port in ports}
            stats = {port: await c.info("commandstats") for port, c in clients.items()}
            debit = stats[sender_port].get("cmdstat_evalsha", {})
            credit = stats[credit_port].get("cmdstat_evalsha", {})
            calls = max(int(credit.get("calls", 1)), 1)
            out |= {
                # The whole node's CPU per gift: the script, its connection, the outbox
                # cleanup.
                f"debit{suffix}_us": round(used[sender_port] * 1e6 / sent, 2),
                f"credit{suffix}_us_per_transfer": round(used[credit_port] * 1e6 / sent, 2),
                f"credit{suffix}_transfers_per_call": round(sent / calls, 1),
                f"debit{suffix}_clock_us": float(debit.get("usec_per_call", 0.0)),
                f"credit{suffix}_clock_us_per_call": float(credit.get("usec_per_call", 0.0)),
            }
        return out
    finally:
        for client in clients.values():
            await client.aclose()
        await ledger.aclose()
        await runner.aclose()
        cluster.stop()


async def _drain(pubsub: Any) -> None:
    while True:
        await pubsub.get_message(timeout=1.0)


def _frame_doc(count: int) -> dict[str, Any]:
    catalog = load_catalog()
    batch = [events.enrich_gift(fanout.gift_event(seq), catalog) for seq in range(1, count + 1)]
    return events.gift_frame(batch)


def frame_bytes(count: int) -> int:
    """Bytes on the wire of one frame of ``count`` gift events (JSON, header included)."""
    return len(encode_frame(_frame_doc(count), WireFormat.JSON).wire)


async def _calibrate(
    redis: Redis, redis_url: str, log_dir: Path, viewers: int, progress: Progress
) -> dict[str, Any]:
    """Server µs per frame with 1 event per frame and with full frames, and memory per
    connection, on ``viewers`` viewers of one giftwire process."""
    target = fanout.Giftwire(log_dir, redis_url, coalesce=True)
    # Low and high rate: below the hot threshold (a frame per gift), and 50 per 50 ms tick.
    result = await fanout.measure(target, redis, viewers, [10.0], 1000.0, progress, step_s=5.0)
    low, high = result["steps"][0], result["saturation"]
    return {"viewers": result["held"], "idle_bytes_per_viewer": result["idle_bytes_per_viewer"],
            "low": low, "high": high}  # fmt: skip


async def measure(
    redis: Redis,
    redis_url: str,
    redis_pid: int,
    log_dir: Path,
    progress: Progress,
    *,
    viewers: int = 10_000,
    rate: float = 1000.0,
    calibration_viewers: int = 3000,
) -> dict[str, Any]:
    limits = Limits()
    progress("capacity: Redis CPU per gift script and per publish")
    coefficients: dict[str, Any] = {
        **await redis_gift_cpu(redis_url, redis_pid, 4096, rate),
        **await redis_publish_cpu(redis_url, 20_000),
        **await cluster_leg_cpu(log_dir / "cluster", 4096, rate),
        "frame_bytes_1": frame_bytes(1),
        "frame_bytes_50": frame_bytes(50),
    }
    progress(f"capacity: calibrating the fan-out on {calibration_viewers:,} viewers")
    calibration = await _calibrate(redis, redis_url, log_dir, calibration_viewers, progress)
    low, high = calibration["low"], calibration["high"]
    # Bytes per frame at each calibration step, from the events per frame it delivered.
    bytes_low = _bytes_for(low["events_per_s"] / max(low["frames_per_s"], 1), coefficients)
    bytes_high = _bytes_for(high["events_per_s"] / max(high["frames_per_s"], 1), coefficients)
    slope = max(
        (high["server_us_per_frame"] - low["server_us_per_frame"]) / max(bytes_high - bytes_low, 1),
        0.0,
    )
    fixed = low["server_us_per_frame"] - slope * bytes_low
    coefficients.update(
        server_us_per_frame_fixed=round(fixed, 3),
        server_us_per_frame_byte=round(slope, 5),
        idle_bytes_per_viewer=calibration["idle_bytes_per_viewer"],
    )
    model = Coefficients.of(coefficients)
    nominal = process_load(model, rate * BIG_ROOM_SHARE, viewers, limits)
    progress(f"capacity: the 1/100 run, {viewers:,} viewers and {rate:g} gifts/s")
    measured = await check_run(redis, redis_url, redis_pid, log_dir, progress, viewers, rate)
    # The model's inputs as the run achieved them: viewers held, gifts committed, and the
    # big room's share of them read from its sequence (not assumed from the load's 1 %).
    achieved = measured["gifts_per_s"]
    big_rate = measured["big_room_gifts_per_s"]
    predicted = process_load(model, big_rate, measured["held"], limits)
    # Paced: the check's load is (capacity_load.py, as ``drive`` paces).
    predicted["redis_cpu"] = round(achieved * coefficients["gift_script_paced_us"] / 1e6, 3)
    # The cost of one frame as the run wrote them (its events per frame), against the model.
    frames = max(measured["frames_per_s"], 1)
    measured["server_us_per_frame"] = round(measured["server_cpu"] * 1e6 / frames, 2)
    written = model.frame_bytes(measured["events_per_s"] / frames)
    predicted["server_us_per_frame"] = round(model.us_per_frame(written), 2)
    ratios = {
        name: round(measured[name] / predicted[name], 3) if predicted[name] else None
        for name in (
            "events_per_s",
            "frames_per_s",
            "server_cpu",
            "server_us_per_frame",
            "redis_cpu",
            "rss_growth_bytes",
        )
    }
    return {
        "coefficients": coefficients,
        "plan": plan(model, big_room_share=BIG_ROOM_SHARE),
        "nominal_1_100": nominal,
        "calibration": calibration,
        "predicted": predicted,
        "measured": measured,
        "ratios": ratios,
        "within_25_percent": {k: v is not None and abs(v - 1) <= 0.25 for k, v in ratios.items()},
    }


BIG_ROOM_SHARE = 0.01
"""The mega room's share of all gifts (the model's assumption, docs/capacity.md)."""
SMALL_ROOMS = 99
SENDERS = 64
LOAD_WARMUP_S = 2.0
"""The load's first seconds, not measured (the room turns hot, the first frames go out)."""
LOAD_MARGIN_S = 2.0
"""The load runs this much longer than the window, half of it before and half after."""


LAG_VIEWERS = 20
"""Viewers of the crowd that also time each gift, from the ``ts`` (ms) the script stamped."""


class _Crowd(fanout.Room):
    """Viewers that count frames and events; the first ``LAG_VIEWERS`` also time each gift
    from its ``ts`` to its arrival (ledger events carry no µs publish timestamp, and the
    millisecond is enough to see whether the room keeps up)."""

    def _on_frame(self, probe: bool, index: int) -> Any:
        count = super()._on_frame(False, index)
        if index >= LAG_VIEWERS:
            return count
        counters, events_of = self.counters, self.target.events_of

        def on_frame(opcode: int, payload: bytes) -> None:
            count(opcode, payload)
            if opcode == OP_TEXT:
                now_ms = time.time() * 1000
                for event in events_of(payload):
                    counters.latency.record((now_ms - event["ts"]) / 1000)

        return on_frame


def _load_cpu_s(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except FileNotFoundError:
        raise RuntimeError("the load process ended before the measured window did") from None


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (all cores, from ``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def check_run(
    redis: Redis,
    redis_url: str,
    redis_pid: int,
    log_dir: Path,
    progress: Progress,
    viewers: int,
    rate: float,
    seconds: float = 8.0,
) -> dict[str, Any]:
    """``viewers`` on one giftwire process in one room; ``rate`` real gifts a second
    (send_gift.lua), 1 % into that room and the rest into 99 rooms without viewers."""
    target = fanout.Giftwire(log_dir, redis_url, coalesce=True)
    await target.start(redis)
    assert target.child is not None
    fast = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
    client = Redis.from_url(redis_url)
    ledger = Ledger(client, keys=target.keys, limits=fast)
    room = _Crowd(target, viewers)
    try:
        await ledger.prepare(load_catalog())
        for i in range(SMALL_ROOMS):
            await ledger.start_stream(stream_id=f"small{i}", creator_id=f"c{i}", title="s")
        for i in range(SENDERS):
            await ledger.top_up(payment_id=f"cap-{i}", user_id=f"u{i}", coins=10**9)
        rss_before = rss_bytes(target.child.pid)
        await room.connect(progress)
        await asyncio.sleep(1.5)
        rss_growth = rss_bytes(target.child.pid) - rss_before
        # The load runs longer than the window on both sides; the window is this process's
        # own (its clock, its reads of Redis, /proc and its counters at the same instants).
        # Marks taken when the load's output was read came late when this process's loop
        # was behind, and did not match the gifts they were divided by.
        load = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.capacity_load", "--redis-url", redis_url,
            "--prefix", target.keys.prefix, "--rate", str(rate),
            "--big-share", str(BIG_ROOM_SHARE), "--big-stream", fanout.STREAM,
            "--big-creator", fanout.CREATOR, "--small-rooms", str(SMALL_ROOMS),
            "--senders", str(SENDERS), "--warmup-s", str(LOAD_WARMUP_S),
            "--seconds", str(seconds + LOAD_MARGIN_S),
            stdout=asyncio.subprocess.DEVNULL, cwd=REPO,
        )  # fmt: skip
        counters, pid = room.counters, target.child.pid
        streams = [target.keys.stream(fanout.STREAM)]
        streams += [target.keys.stream(f"small{i}") for i in range(SMALL_ROOMS)]

        async def mark() -> dict[str, float]:
            if load.returncode is not None:
                raise RuntimeError("the load ended before the measured window did")
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                pipe.hget(stream, "seq")  # type: ignore[unused-awaitable]
            seqs = [int(seq or 0) for seq in await pipe.execute()]
            return {
                "at": time.monotonic(), "frames": counters.frames, "events": counters.events,
                # Gifts that committed, from each stream's sequence: the big room's is
                # what reached it, not the load's intent.
                "sent": sum(seqs), "big_seq": seqs[0],
                "server": cpu_seconds(pid), "redis": cpu_seconds(redis_pid),
                # The viewers' client is this process; the rest of the machine is the
                # load process, Redis and whatever else runs on it.
                "client": time.process_time(), "load": _load_cpu_s(load.pid),
                "machine": _machine_busy_s(),
            }  # fmt: skip

        await asyncio.sleep(LOAD_WARMUP_S + LOAD_MARGIN_S / 2)
        start = await mark()
        counters.latency = Histogram()
        await asyncio.sleep(seconds)
        end = await mark()
        latency = counters.latency.summary_ms()
        await load.wait()
        span = end["at"] - start["at"]

        def per_s(name: str, digits: int | None = None) -> float:
            return round((end[name] - start[name]) / span, digits)

        return {
            "held": len(room.protos),
            "connect_failures": room.failures,
            "gifts_per_s": round(per_s("sent")),
            "big_room_gifts_per_s": per_s("big_seq", 2),
            "frames_per_s": round(per_s("frames")),
            "events_per_s": round(per_s("events")),
            "server_cpu": per_s("server", 3),
            "redis_cpu": per_s("redis", 3),
            "client_cpu": per_s("client", 3),
            "load_cpu": per_s("load", 3),
            "machine_busy_cores": per_s("machine", 2),
            "gift_latency_ms": latency,
            "rss_growth_bytes": rss_growth,
            "seconds": round(span, 2),
        }
    finally:
        room.close()
        target.stop()
        await client.aclose()


def _bytes_for(events_per_frame: float, c: dict[str, Any]) -> float:
    """Bytes of a frame of ``events_per_frame`` events, linear between the measured 1 and 50."""
    per_event = (c["frame_bytes_50"] - c["frame_bytes_1"]) / 49
    return float(c["frame_bytes_1"] + per_event * (events_per_frame - 1))
