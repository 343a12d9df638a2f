"""What acknowledging only durable writes costs: ``everysec`` vs ``always`` vs
``always`` + ``WAIT 1`` (a local replica), side by side in one run.

Each configuration gets its own redis-server(s) on the same disk (the benchmark's temp
folder; a tmpfs would make fsync free and the comparison meaningless, so the folder's
file system type is recorded). Gifts go through the real ``Ledger`` and its pipelining
runner, in this process, the way a server process calls it: ``senders`` tasks, each
sending one gift and awaiting its ack before the next (as a client does); every ack's
latency is recorded. Two load shapes: one sender alone (each gift pays the whole fsync
or replication round trip) and many senders (pipelines share one fsync, one WAIT).
Configurations alternate within each round, and each keeps its best round: interference
from other work on the machine only ever slows a measurement down.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from benchmarks.procs import REPO
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger

Progress = Callable[[str], None]
CONFIGS = ("everysec", "always", "always_wait1")
SHAPES = {"one_sender": 1, "many_senders": 64}
ROUNDS = 2
STREAM = "dur"
CREATOR = "dur_creator"
LIMITS = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000, redis_timeout_s=10.0)


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class _Redis:
    """The redis-server(s) of one configuration."""

    def __init__(self, folder: Path, config: str) -> None:
        fsync = "everysec" if config == "everysec" else "always"
        self.replicas = 1 if config == "always_wait1" else 0
        extra = ("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0")
        self.primary = RedisProcess(folder / "primary", appendfsync=fsync, extra_args=extra)
        self.replica: RedisProcess | None = None
        if self.replicas:
            self.replica = RedisProcess(
                folder / "replica",
                appendfsync="everysec",
                extra_args=("--replicaof", "127.0.0.1", str(self.primary.port)),
            )

    async def __aenter__(self) -> _Redis:
        self.primary.start()
        if self.replica is not None:
            self.replica.start()
            client = Redis.from_url(self.primary.url)
            try:
                for _ in range(400):
                    await client.set("sync-probe", "1")
                    if await client.wait(1, 100) >= 1:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("the benchmark's replica never caught up")
            finally:
                await client.aclose()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.replica is not None:
            self.replica.stop()
        self.primary.stop()


async def _measure(server: _Redis, senders: int, seconds: float, tag: str) -> dict[str, Any]:
    redis = Redis.from_url(server.primary.url)
    keys = Keys(f"d{tag}:")
    ledger = Ledger(
        redis, keys=keys, limits=LIMITS, wait_replicas=server.replicas, wait_timeout_ms=1000
    )
    try:
        await ledger.prepare(load_catalog())
        await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="durability")
        for s in range(senders):
            await ledger.top_up(payment_id=f"pay{s}", user_id=f"s{s}", coins=10**12)
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def sender(s: int) -> None:
            n = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await ledger.send_gift(
                    client_id=f"g{n}", sender_id=f"s{s}", sender_name="S", stream_id=STREAM,
                    creator_id=CREATOR, gift_id="rose", count=1,
                )  # fmt: skip
                latencies.append(time.perf_counter() - started)
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(sender(s) for s in range(senders)))
        wall = time.perf_counter() - started
    finally:
        await redis.aclose()
    latencies.sort()
    return {
        "senders": senders,
        "gifts": len(latencies),
        "gifts_per_s": round(len(latencies) / wall),
        "ack_latency_ms": {
            name: round(_percentile(latencies, q) * 1000, 3)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }


def _filesystem(folder: Path) -> str:
    try:
        out = subprocess.run(
            ["df", "--output=fstype", str(folder)], capture_output=True, text=True, timeout=10
        ).stdout.split()
        return out[-1] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _better(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    return b if a is None or b["gifts_per_s"] > a["gifts_per_s"] else a


async def measure(folder: Path, progress: Progress, scale: float) -> dict[str, Any]:
    """Every configuration × load shape, ``ROUNDS`` times alternating; the best of each."""
    seconds = max(0.5, 2.0 * scale)
    best: dict[str, dict[str, dict[str, Any] | None]] = {
        config: dict.fromkeys(SHAPES) for config in CONFIGS
    }
    rounds: list[dict[str, Any]] = []
    for number in range(1, ROUNDS + 1):
        this_round: dict[str, Any] = {}
        for config in CONFIGS:
            async with _Redis(folder / f"r{number}-{config}", config) as server:
                this_round[config] = {}
                for shape, senders in SHAPES.items():
                    tag = f"{number}{config[:3]}{senders}"
                    result = await _measure(server, senders, seconds, tag)
                    this_round[config][shape] = result
                    best[config][shape] = _better(best[config][shape], result)
                    progress(
                        f"durability round {number}: {config}, {senders} sender(s): "
                        f"{result['gifts_per_s']:,} gifts/s, ack p50 "
                        f"{result['ack_latency_ms']['p50']} ms, p99 "
                        f"{result['ack_latency_ms']['p99']} ms"
                    )
        rounds.append(this_round)
    results: dict[str, Any] = {config: dict(best[config]) for config in CONFIGS}
    results["ratios"] = ratios(results)
    results["filesystem"] = _filesystem(folder)
    results["seconds_per_measurement"] = seconds
    results["cpus"] = os.cpu_count()
    results["rounds"] = rounds
    return results


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Throughput of ``always`` and ``always_wait1`` relative to ``everysec`` (same run)."""
    out: dict[str, float] = {}
    for config in ("always", "always_wait1"):
        for shape in SHAPES:
            base = cast(dict[str, Any], results["everysec"][shape])["gifts_per_s"]
            out[f"{config}_{shape}_throughput"] = round(
                results[config][shape]["gifts_per_s"] / base, 2
            )
    return out


def table(results: dict[str, Any]) -> str:
    """The side-by-side table of docs/benchmarks.md."""
    lines = [
        "| acknowledged after | senders | gifts/s | × everysec | ack p50 (ms) | ack p99 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "everysec": "`everysec` (Redis applied it)",
        "always": "`always` (fsynced)",
        "always_wait1": "`always` + `WAIT 1` (fsynced, on a replica)",
    }
    for config in CONFIGS:
        for shape in SHAPES:
            r = results[config][shape]
            base = results["everysec"][shape]["gifts_per_s"]
            lines.append(
                f"| {names[config]} | {r['senders']} | {r['gifts_per_s']:,} | "
                f"{r['gifts_per_s'] / base:.2f} | {r['ack_latency_ms']['p50']} | "
                f"{r['ack_latency_ms']['p99']} |"
            )
    return "\n".join(lines)


DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- durability:start -->", "<!-- durability:end -->"


def write_docs(result: dict[str, Any]) -> None:
    """Replace the durability table of docs/benchmarks.md with this run's."""
    durability = result["durability"]
    load = result.get("load_average_before", [])
    section = "\n\n".join(
        [
            START,
            f"Run {result.get('when', '')}, {durability['cpus']} cores shared with other work "
            f"(load average before: {', '.join(str(x) for x in load)}), data on "
            f"{durability['filesystem']}, {durability['seconds_per_measurement']} s per "
            f"measurement, best of {ROUNDS} rounds:",
            table(durability),
            END,
        ]
    )
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + section + tail)
