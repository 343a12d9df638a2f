"""``python -m benchmarks.archive_costs [--gifts 20000] [--profile]``: where the archiver's
cost goes, per archived entry, measured apart from the gift path.

1. ``gifts`` gifts are sent straight to the ledger with no archiver (the log fills).
2. ``giftwire archive`` runs in this process (``--once``-style drain, batches of
   ``batch_max``) over that log. Over the drain: Redis' CPU and ``INFO commandstats``
   usec per command, PostgreSQL's CPU (every backend), this process's CPU (the archiver's
   own: parsing, mapping, encoding, the drivers), each divided by the entries archived.
3. The same with a steady load and the archiver beside it (``--concurrent``): what Redis
   spends per command while both run, as the archive benchmark's rounds do.

``--profile`` adds a cProfile of the drain (the top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from redis.asyncio import Redis

from benchmarks.procs import cpu_seconds
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import open_record
from server.record.embedded import PostgresProcess

SENDERS = 50
IN_FLIGHT = 200


def _tree_cpu_s(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _commandstats(redis: Redis) -> dict[str, tuple[int, int]]:
    info = await redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }


def _delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n: int
) -> dict[str, Any]:
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 > 0 and name != "info":
            out[name] = {"calls": calls - c0, "usec_per_entry": round((usec - u0) / n, 2)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["usec_per_entry"]))


async def _send(ledger: Ledger, total: int, tag: str) -> float:
    senders = [f"s{i}" for i in range(SENDERS)]
    sent, started = 0, time.perf_counter()
    while sent < total:
        batch = min(IN_FLIGHT, total - sent)
        await asyncio.gather(*(
            ledger.send_gift(client_id=f"{tag}{sent + i}", sender_id=senders[i % SENDERS],
                             sender_name="s", stream_id="st", creator_id="cr", gift_id="rose",
                             count=1)
            for i in range(batch)
        ))  # fmt: skip
        sent += batch
    return time.perf_counter() - started


async def run(
    gifts: int, profile: bool, concurrent: bool, config: ArchiverConfig, pre_sql: Sequence[str] = ()
) -> dict[str, Any]:
    result: dict[str, Any] = {"gifts": gifts, "config": repr(config)}
    with tempfile.TemporaryDirectory(prefix="giftwire-archive-costs-") as tmp:
        redis_proc = RedisProcess(Path(tmp) / "redis")
        postgres = PostgresProcess(Path(tmp) / "postgres")
        redis_proc.start()
        postgres.start()
        try:
            assert redis_proc.process is not None and postgres.process is not None
            rpid, ppid = redis_proc.process.pid, postgres.process.pid
            redis = Redis.from_url(redis_proc.url)
            keys = Keys("cost:")
            limits = Limits(gifts_per_s_max=10**6, gift_burst_max=10**6, receipt_ttl_s=1)
            ledger = Ledger(redis, keys=keys, limits=limits)
            await ledger.prepare(load_catalog())
            await ledger.start_stream(stream_id="st", creator_id="cr", title="t")
            for i in range(SENDERS):
                await ledger.top_up(payment_id=f"p{i}", user_id=f"s{i}", coins=10**12)
            pool = await open_record(postgres.create_database("costs"))
            for statement in pre_sql:
                async with pool.connection() as conn:
                    await conn.execute(statement)  # type: ignore[arg-type]
            archiver = Archiver(redis, pool, keys, config=config)
            await archiver.take_over()
            await archiver.drain()

            # 1. the gifts alone
            s0, r0 = await _commandstats(redis), cpu_seconds(rpid)
            elapsed = await _send(ledger, gifts, "a")
            s1, r1 = await _commandstats(redis), cpu_seconds(rpid)
            result["gifts_alone"] = {
                "gifts_per_s": round(gifts / elapsed),
                "redis_cpu_us_per_gift": round((r1 - r0) * 1e6 / gifts, 1),
                "commands": _delta(s0, s1, gifts),
            }
            # 2. the drain alone
            p0, own0 = _tree_cpu_s(ppid), _own_cpu_s()
            profiler = cProfile.Profile() if profile else None
            if profiler:
                profiler.enable()
            t0 = time.perf_counter()
            archiver.stats.batches = 0
            drained = await archiver.drain()
            t1 = time.perf_counter()
            if profiler:
                profiler.disable()
            s2, r2 = await _commandstats(redis), cpu_seconds(rpid)
            p1, own1 = _tree_cpu_s(ppid), _own_cpu_s()
            n = max(drained, 1)
            result["drain"] = {
                "entries": drained,
                "batches": archiver.stats.batches,
                "entries_per_s": round(drained / (t1 - t0)),
                "archiver_cpu_us_per_entry": round((own1 - own0) * 1e6 / n, 1),
                "postgres_cpu_us_per_entry": round((p1 - p0) * 1e6 / n, 1),
                "redis_cpu_us_per_entry": round((r2 - r1) * 1e6 / n, 1),
                "commands": _delta(s1, s2, n),
            }
            if profiler:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
                result["profile"] = out.getvalue()
            # 3. both at once
            if concurrent:
                stop = asyncio.Event()
                archiver.stats.batches = 0
                recorded0 = archiver.stats.recorded
                task = asyncio.create_task(archiver.run(stop))
                s2, r2, p2 = await _commandstats(redis), cpu_seconds(rpid), _tree_cpu_s(ppid)
                elapsed = await _send(ledger, gifts, "c")
                await asyncio.sleep(1.5)
                s3, r3, p3 = await _commandstats(redis), cpu_seconds(rpid), _tree_cpu_s(ppid)
                stop.set()
                await task
                archived = archiver.stats.recorded - recorded0
                result["concurrent"] = {
                    "gifts_per_s": round(gifts / elapsed),
                    "archived": archived,
                    "batches": archiver.stats.batches,
                    "redis_cpu_us_per_gift": round((r3 - r2) * 1e6 / gifts, 1),
                    "postgres_cpu_us_per_gift": round((p3 - p2) * 1e6 / gifts, 1),
                    "commands": _delta(s2, s3, gifts),
                }
            await pool.close()
            await redis.aclose()
        finally:
            postgres.stop()
            redis_proc.stop()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive_costs", description=__doc__)
    parser.add_argument("--gifts", type=int, default=20_000)
    parser.add_argument("--batch-max", type=int, default=ArchiverConfig().batch_max)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument("--sql", action="append", default=[], help="run on the record first")
    args = parser.parse_args(argv)
    config = ArchiverConfig(batch_max=args.batch_max)
    result = asyncio.run(run(args.gifts, args.profile, args.concurrent, config, args.sql))
    profile = result.pop("profile", None)
    import json

    print(json.dumps(result, indent=1))
    if profile:
        print(profile, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
