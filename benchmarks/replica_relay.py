"""What relaying a room's events to the server processes costs a shard's primary, with
the subscribers on the primary (``GIFTWIRE_CLUSTER_SUBSCRIBE=primary``) and on its
replica (``replica``), against none at all.

    ./dev python -m benchmarks.replica_relay [--subscribers 50] [--events 4000]

On a loopback 3-primary + 3-replica cluster: ``--subscribers`` connections (each one
server process's link) ``SSUBSCRIBE`` one room channel on the primary of its slot, or on
its replica; one client ``SPUBLISH``es ``--events`` events of ``EVENT_BYTES`` on the
primary, pipelined, and every subscriber reads all of them (raw sockets that count bytes:
the subscribers' own CPU is not what is measured). CPU is ``INFO cpu`` ``used_cpu_user +
used_cpu_sys`` of each node, before and after, divided by the events. The primary copies
every event to its replica over the cluster bus in each case: that is in the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from redis.asyncio import Redis

from server.ledger.cluster_keys import slot_of
from tests.support.cluster import RedisCluster

CHANNEL = "{u:bench}:s:room:room"
EVENT_BYTES = 150
"""About one gift event as published (``LIMITS.md``: 153 B of JSON)."""
PIPELINE = 100


def _frame(kind: bytes, payload: bytes) -> bytes:
    channel = CHANNEL.encode()
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n%s" % (len(kind), kind, len(channel), channel, payload)


async def _subscriber(port: int, events: int, ready: asyncio.Event, count: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    channel = CHANNEL.encode()
    writer.write(b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
    await reader.readexactly(len(_frame(b"ssubscribe", b":1\r\n")))
    count[0] += 1
    if count[0] == count[1]:
        ready.set()
    message = _frame(b"smessage", b"$%d\r\n%s\r\n" % (EVENT_BYTES, b"x" * EVENT_BYTES))
    await reader.readexactly(len(message) * events)
    writer.close()


async def _cpu_s(port: int) -> float:
    client = Redis(port=port)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _round(primary: int, replica: int, on: int | None, subscribers: int, events: int
                 ) -> dict[str, float]:  # fmt: skip
    ready, count = asyncio.Event(), [0, subscribers]
    readers = [
        asyncio.create_task(_subscriber(on, events, ready, count))
        for _ in range(subscribers if on is not None else 0)
    ]
    if readers:
        await ready.wait()
    before = {port: await _cpu_s(port) for port in (primary, replica)}
    publisher = Redis(port=primary)
    payload = b"x" * EVENT_BYTES
    try:
        for start in range(0, events, PIPELINE):
            pipe = publisher.pipeline(transaction=False)
            for _ in range(min(PIPELINE, events - start)):
                pipe.execute_command("SPUBLISH", CHANNEL, payload)  # type: ignore[no-untyped-call]
            await pipe.execute()
        await asyncio.gather(*readers)
    finally:
        await publisher.aclose()
    after = {port: await _cpu_s(port) for port in (primary, replica)}
    return {
        "primary_us_per_event": (after[primary] - before[primary]) / events * 1e6,
        "replica_us_per_event": (after[replica] - before[replica]) / events * 1e6,
    }


async def measure(subscribers: int, events: int, rounds: int = 3) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisCluster(Path(tmp) / "cluster")
        cluster.start()
        try:
            owner = cluster.primary_for_slot(slot_of(CHANNEL))
            replica = next(n.port for n in cluster.topology() if n.primary_id == owner.node_id)
            sides = {"none": None, "on_primary": owner.port, "on_replica": replica}
            results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
            for _ in range(rounds):  # interleaved, so that a busy moment hits every side
                for side, on in sides.items():
                    results[side].append(await _round(owner.port, replica, on, subscribers, events))
        finally:
            cluster.stop()
    best = {
        side: {key: round(min(r[key] for r in rows), 2) for key in rows[0]}
        for side, rows in results.items()
    }
    return {"subscribers": subscribers, "events": events, "rounds": rounds, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--events", type=int, default=4000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.subscribers, args.events)), indent=2))


if __name__ == "__main__":
    main()
