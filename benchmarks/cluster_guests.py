"""Gifts to guests on a Redis Cluster against gifts to the creator, in one run.

``python -m benchmarks.cluster_guests [--gifts 1000] [--rounds 2]`` starts a loopback
3-primary + 3-replica cluster, puts three guests on one stream's stage (their accounts in
three thirds of the slots, so on three primaries), and sends ``--gifts`` gifts through
``ClusterLedger.send_gift`` (the whole fast path: debit, credit, and for gifts to guests one
guest-credit per guest), ``--in-flight`` at a time, from ``--senders`` senders, in three
kinds interleaved per round: to the creator, to one guest, and to every guest (``*``, a
split over three slots). It reports gifts/s per kind, each kind's ratio to the plain gift
of its round, the primaries' CPU per gift (``INFO cpu``, user + system, summed over the
three), and checks that the books reconcile after each round. Results:
``benchmarks/results/cluster_guests.json``.

What it can and cannot show on this machine: two cores run the six redis-servers, the
client and whatever else runs, so gifts/s are the client's as much as Redis'; the ratios
within a round and Redis' CPU per gift are the figures to read. A gift to guests costs a
read of the stage and a guest-credit per guest more than a gift to the creator (batched
per guest, as credits are per stream).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from benchmarks.procs import REPO, machine
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_runner import ClusterScriptRunner
from tests.support.cluster import RedisCluster

RESULTS = REPO / "benchmarks" / "results" / "cluster_guests.json"
LIMITS = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
KINDS = ("creator", "one_guest", "all_guests")


async def _open(cluster: RedisCluster, prefix: str) -> ClusterLedger:
    runner = ClusterScriptRunner(cluster.startup_urls[:1], timeout_s=30.0)
    ledger = ClusterLedger(runner, keys=ClusterKeys(prefix), limits=LIMITS)
    await ledger.prepare(load_catalog())
    return ledger


def _guests() -> list[str]:
    found: dict[int, str] = {}
    while len(found) < 3:
        guest = f"guest-{uuid.uuid4().hex[:8]}"
        found.setdefault(slot_of(f"{{u:{guest}}}") * 3 // 16384, guest)
    return sorted(found.values())


async def _cpu_s(ledger: ClusterLedger) -> float:
    total = 0.0
    for slot in (0, 8000, 16000):  # one slot of each primary of the loopback cluster
        info = await ledger.runner.client(ledger.runner.primary_of(slot)).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


async def _round(
    ledger: ClusterLedger, kind: str, gifts: int, senders: list[str], in_flight: int,
    stream: str, creator: str, guest: str,
) -> dict[str, Any]:  # fmt: skip
    to = {"creator": None, "one_guest": guest, "all_guests": "*"}[kind]
    queue = list(range(gifts))

    async def worker(w: int) -> None:
        while queue:
            i = queue.pop()
            sender = senders[(w + i) % len(senders)]
            await ledger.send_gift(
                client_id=f"{kind}-{i}", sender_id=sender, sender_name=sender,
                stream_id=stream, creator_id=creator, gift_id="cap", count=1, to=to,
            )  # fmt: skip

    cpu = await _cpu_s(ledger)
    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    elapsed = time.perf_counter() - start
    cpu = await _cpu_s(ledger) - cpu
    return {
        "kind": kind,
        "gifts_per_s": round(gifts / elapsed),
        "redis_cpu_us_per_gift": round(cpu / gifts * 1e6),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisCluster(Path(tmp))
        cluster.start()
        try:
            for r in range(args.rounds):
                ledger = await _open(cluster, f"benchg{r}:")
                try:
                    creator, stream = f"creator{r}", f"stream{r}"
                    await ledger.start_stream(stream_id=stream, creator_id=creator, title="b")
                    guests = _guests()
                    for guest in guests:
                        await ledger.guests.invite(
                            stream_id=stream, creator_id=creator, guest_id=guest
                        )
                        await ledger.guests.join(stream_id=stream, guest_id=guest, name=guest)
                    senders = [f"sender{r}-{i}" for i in range(args.senders)]
                    for sender in senders:
                        await ledger.top_up(
                            payment_id=f"p-{sender}", user_id=sender, coins=99 * args.gifts * 3
                        )
                    one: dict[str, dict[str, Any]] = {}
                    # Each kind in its own prefix of client ids, all in one stream.
                    for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                        one[kind] = await _round(
                            ledger, kind, args.gifts, senders, args.in_flight, stream,
                            creator, guests[0],
                        )  # fmt: skip
                    for kind in KINDS:
                        one[kind]["ratio"] = round(
                            one[kind]["gifts_per_s"] / one["creator"]["gifts_per_s"], 2
                        )
                    report = await reconcile_cluster(ledger)
                    one["reconcile"] = {"ok": report.ok and not report.pending}
                    rounds.append(one)
                    print(f"round {r}: {one}", file=sys.stderr)
                finally:
                    await ledger.aclose()
        finally:
            cluster.stop()
    return {
        "machine": machine(),
        "load_average_1m": os.getloadavg()[0],
        "gifts": args.gifts,
        "senders": args.senders,
        "in_flight": args.in_flight,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gifts", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result["rounds"]).decode())


if __name__ == "__main__":
    main()
