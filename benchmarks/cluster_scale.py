"""Gifts per second and Redis CPU per gift: one redis-server against a 3-primary cluster.

``python -m benchmarks run --only cluster --out benchmarks/results/cluster.json`` (about
a minute and a half) starts a redis-server and a loopback cluster of 3 primaries (no
replicas, so that each side is Redis doing the ledger's work and nothing else; both with
AOF ``everysec``), and drives both with the same load generator in this process: the
ledger's own ``send_gift`` (``Ledger``: one send_gift.lua per gift; ``ClusterLedger``: the
debit leg, then the credit leg batched per stream, then the outbox entry's XDEL),
``SENDERS`` senders over ``ROOMS`` rooms of as many creators, ``IN_FLIGHT`` gifts awaited
at once. Rounds alternate (single, cluster, single, …), so that the neighbours' load does
not fall on one side only; each side's best round is kept, all rounds are in the JSON.

Measured per round: gifts/s; **Redis CPU per gift**, the sum over every primary of its
``INFO cpu`` ``used_cpu_user + used_cpu_sys`` delta, divided by the gifts; each primary's
share of it; and the load generator's CPU per gift (this process).

What two cores can and cannot show: the three primaries, the single node and the load
generator share them, so 3 shards cannot run faster than one Redis here: the gifts/s
compare two clients on the same two cores more than two Redis deployments. What carries
over is Redis' CPU per gift and how evenly the primaries share it: with a core per
primary, the ledger's ceiling is about ``primaries × 10^6 / (cluster µs per gift)`` while
the shares stay even; ``docs/capacity.md``'s model takes it from there.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks.fanout import Progress
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.support.cluster import RedisCluster

SENDERS = 512
ROOMS = 32
IN_FLIGHT = 128
GIFTS = 12_000
"""Gifts per round at scale 1."""
ROUNDS = 3
LIMITS = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)


async def _cpu_s(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _Side:
    """One ledger (single node or cluster) and the Redis primaries under it."""

    def __init__(self, name: str, ledger: Ledger | ClusterLedger, primaries: list[Redis]) -> None:
        self.name = name
        self.ledger = ledger
        self.primaries = primaries
        self.rounds: list[dict[str, Any]] = []

    async def setup(self) -> None:
        await self.ledger.prepare(load_catalog())
        for room in range(ROOMS):
            await self.ledger.start_stream(
                stream_id=f"room{room}", creator_id=f"creator{room}", title="bench"
            )
        await asyncio.gather(
            *(
                self.ledger.top_up(payment_id=f"p{n}", user_id=f"s{n}", coins=10**9)
                for n in range(SENDERS)
            )
        )

    async def round(self, number: int, gifts: int) -> dict[str, Any]:
        rng = random.Random(number)
        plan = [(f"s{rng.randrange(SENDERS)}", rng.randrange(ROOMS)) for _ in range(gifts)]
        work = iter(enumerate(plan))

        async def worker() -> None:
            for n, (sender, room) in work:
                await self.ledger.send_gift(
                    client_id=f"r{number}-{n}", sender_id=sender, sender_name=sender,
                    stream_id=f"room{room}", creator_id=f"creator{room}", gift_id="rose",
                    count=1,
                )  # fmt: skip

        cpu_before = [await _cpu_s(p) for p in self.primaries]
        client_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_before
        await asyncio.sleep(0.2)  # the cluster's outbox XDELs, batched in the background
        used = [
            await _cpu_s(p) - before for p, before in zip(self.primaries, cpu_before, strict=True)
        ]
        total = sum(used)
        result = {
            "round": number,
            "gifts": gifts,
            "seconds": round(elapsed, 3),
            "gifts_per_s": round(gifts / elapsed),
            "redis_cpu_us_per_gift": round(total * 1e6 / gifts, 1),
            "primary_cpu_shares": [round(u / total, 3) if total else 0.0 for u in used],
            "client_cpu_us_per_gift": round(client_cpu * 1e6 / gifts, 1),
            "load_average": _load_average(),
        }
        self.rounds.append(result)
        return result


def _load_average() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


async def measure(base_dir: Path, progress: Progress, scale: float = 1.0) -> dict[str, Any]:
    gifts = max(1000, int(GIFTS * scale))
    single_redis = RedisProcess(base_dir / "single")
    cluster = RedisCluster(base_dir / "cluster", replicas=0)
    single_redis.start()
    progress("cluster: forming a 3-primary loopback cluster")
    cluster.start()
    single_client = Redis.from_url(single_redis.url)
    primaries = [Redis(port=p.port) for p in cluster.primaries()]
    runner = ClusterScriptRunner(cluster.startup_urls, timeout_s=30.0)
    single = Ledger(single_client, keys=Keys("bench:"), limits=LIMITS)
    sharded = ClusterLedger(runner, keys=ClusterKeys("bench:"), limits=LIMITS)
    sides = [_Side("single", single, [single_client]), _Side("cluster", sharded, primaries)]
    try:
        for side in sides:
            progress(f"cluster: preparing the {side.name} side")
            await side.setup()
        for number in range(1, ROUNDS + 1):
            for side in sides:
                progress(f"cluster: {side.name}, round {number} of {ROUNDS}, {gifts:,} gifts")
                row = await side.round(number, gifts)
                progress(
                    f"  {row['gifts_per_s']:,} gifts/s, Redis {row['redis_cpu_us_per_gift']} µs"
                    f"/gift, client {row['client_cpu_us_per_gift']} µs/gift, load "
                    f"{row['load_average'][0]}"
                )
    finally:
        await runner.aclose()
        for client in [single_client, *primaries]:
            await client.aclose()
        cluster.stop()
        single_redis.stop()
    return summarize({side.name: side.rounds for side in sides})


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each side's best round (by gifts/s), the ratios, and the model's ceilings: gifts/s
    that ``primaries`` cores of Redis could take at the measured CPU per gift."""
    best = {name: max(rows, key=lambda r: r["gifts_per_s"]) for name, rows in rounds.items()}
    single, cluster = best["single"], best["cluster"]
    single_us = min(r["redis_cpu_us_per_gift"] for r in rounds["single"])
    cluster_us = min(r["redis_cpu_us_per_gift"] for r in rounds["cluster"])
    return {
        "senders": SENDERS,
        "rooms": ROOMS,
        "in_flight": IN_FLIGHT,
        "rounds": rounds,
        "best": best,
        "gifts_per_s_ratio": round(cluster["gifts_per_s"] / single["gifts_per_s"], 2),
        "redis_cpu_ratio": round(cluster_us / single_us, 2),
        "model": {
            "single_core_ceiling_gifts_per_s": round(1e6 / single_us),
            "three_primaries_ceiling_gifts_per_s": round(3 * 1e6 / cluster_us),
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| | gifts/s (best round) | Redis CPU per gift | primaries' shares | client CPU per gift |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["best"].items():
        shares = " / ".join(f"{s:.0%}" for s in row["primary_cpu_shares"])
        lines.append(
            f"| {name} | {row['gifts_per_s']:,} | {row['redis_cpu_us_per_gift']} µs | {shares} "
            f"| {row['client_cpu_us_per_gift']} µs |"
        )
    model = result["model"]
    lines.append(
        f"\ncluster/single: {result['gifts_per_s_ratio']}x gifts/s, "
        f"{result['redis_cpu_ratio']}x Redis CPU per gift; ceilings at that CPU: one core "
        f"{model['single_core_ceiling_gifts_per_s']:,}/s, three primaries "
        f"{model['three_primaries_ceiling_gifts_per_s']:,}/s"
    )
    return "\n".join(lines)
