"""``python -m benchmarks run --out benchmarks/results/latest.json`` (about 10 minutes)
and ``python -m benchmarks report`` (the table and the plot in docs/benchmarks.md).

``--only`` keeps a run short while developing: ``--only bare,giftwire --viewers 1000`` for
the fan-out side by side, ``--only gc --gc-viewers 3000`` for the collector, and
``--only live --out benchmarks/results/live.json`` for what battles and goals cost, and
``--only cluster --out benchmarks/results/cluster.json`` for one redis-server against a
3-primary cluster (``cluster_scale.py``), then credits into one hot creator batched and
one per call, and the relay's lag (``cluster_credits.py``).

Everything is measured in the same run on the same machine, and each result is reported as
a ratio to its baseline measured next to it: absolute numbers vary by ±30 % between runs of
the same machine kind, ratios much less.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from benchmarks import (
    capacity,
    cluster_credits,
    cluster_scale,
    durability,
    fanout,
    hotpath,
    live,
    report,
)
from benchmarks.procs import REPO, machine
from server.ledger.embedded import RedisProcess

HOT_ROUNDS = 2
"""Hot-path measurements are repeated and each side's best round is kept."""
LATENCY_RATE = 8.0
"""Gifts per second into the room at which p99 latencies are compared (5,000 viewers:
40,000 deliveries per second, about half of a bare broadcast's capacity here)."""


class _Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, line: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {line}", file=sys.stderr, flush=True)


FANOUT_TARGETS = ("bare", "giftwire", "socketio", "coalescing", "floor")
SECTIONS = ("hot", "durability", *FANOUT_TARGETS, "gc", "capacity", "live", "cluster")


def sections(only: str) -> set[str]:
    """``--only``: section names, ``fanout`` meaning all five fan-out targets."""
    chosen: set[str] = set()
    for name in filter(None, (part.strip() for part in only.split(","))):
        if name == "fanout":
            chosen.update(FANOUT_TARGETS)
        elif name in SECTIONS:
            chosen.add(name)
        else:
            raise SystemExit(f"--only: unknown section {name!r} (one of fanout, {SECTIONS})")
    return chosen


async def run(
    viewers: int,
    scale: float,
    only: set[str],
    progress: _Progress,
    gc_viewers: int = 10_000,
    capacity_viewers: int = 10_000,
    live_rounds: int = live.ROUNDS,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_before": _load_average(),
        "machine": machine(),
        "viewers": viewers,
        "scale": scale,
    }
    with tempfile.TemporaryDirectory(prefix="giftwire-bench-") as tmp:
        log_dir = Path(tmp)
        redis_process = RedisProcess(log_dir / "redis")
        redis_process.start()
        assert redis_process.process is not None
        redis = Redis.from_url(redis_process.url)
        try:
            if "hot" in only:
                rounds: list[dict[str, Any]] = []
                for number in range(1, HOT_ROUNDS + 1):
                    # Ceilings and giftwire alternate, so that other work on the machine
                    # during one round does not fall on one side only.
                    progress(f"hot path, round {number} of {HOT_ROUNDS}")
                    hot = await hotpath.measure_ceilings(
                        redis_process.url, redis_process.port, redis_process.process.pid,
                        progress, scale,
                    )  # fmt: skip
                    hot["giftwire"] = await hotpath.measure_end_to_end(
                        redis_process.url, log_dir, progress, scale, {}
                    )
                    rounds.append(hot)
                result["hot_path"] = hotpath.best_of(rounds)
            if "durability" in only:
                result["durability"] = await durability.measure(
                    log_dir / "durability", progress, scale
                )
            if only & set(FANOUT_TARGETS):
                result["fanout"] = await _fanout(redis, redis_process.url, log_dir, viewers,
                                                 progress, only)  # fmt: skip
            if "gc" in only:
                result["gc"] = {
                    key: await fanout.measure_gc(target, redis, gc_viewers, progress)
                    for key, target in (
                        ("bare", fanout.BareWebsockets(log_dir, redis_process.url)),
                        ("giftwire", fanout.Giftwire(log_dir, redis_process.url, coalesce=True)),
                    )
                }
            if "capacity" in only:
                result["capacity"] = await capacity.measure(
                    redis, redis_process.url, redis_process.process.pid, log_dir, progress,
                    viewers=capacity_viewers, rate=capacity_viewers / 10,
                )  # fmt: skip
            if "live" in only:
                result["live"] = await live.measure(
                    redis_process.url, redis_process.port, redis_process.process.pid, log_dir,
                    progress, scale, live_rounds,
                )  # fmt: skip
            if "cluster" in only:
                result["cluster"] = await cluster_scale.measure(
                    log_dir / "cluster", progress, scale
                )
                progress("cluster: credits into one hot creator, then the relay's lag")
                result["cluster"]["hot_creator"] = await cluster_credits.run(
                    cluster_credits.options(scale)
                )
        finally:
            await redis.aclose()
            redis_process.stop()
    result["load_average_after"] = _load_average()
    result["ratios"] = report.ratios(result)
    result["seconds"] = round(time.monotonic() - progress.started, 1)
    return result


def _load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows here."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


async def _fanout(
    redis: Redis, redis_url: str, log_dir: Path, viewers: int, progress: _Progress,
    only: set[str],
) -> dict[str, Any]:  # fmt: skip
    per_frame_rates = [1.0, 2.0, 4.0, LATENCY_RATE, 12.0, 16.0, 24.0]
    # Offer 200,000 deliveries a second: more than any of them sends on this machine.
    saturating = max(40.0, 200_000 / viewers)
    targets: list[tuple[str, fanout.Target, list[float], float]] = [
        ("bare", fanout.BareWebsockets(log_dir, redis_url), per_frame_rates, saturating),
        ("giftwire", fanout.Giftwire(log_dir, redis_url, coalesce=False), per_frame_rates,
         saturating),
        ("socketio", fanout.SocketIO(log_dir, redis_url), per_frame_rates, saturating),
        ("coalescing", fanout.Giftwire(log_dir, redis_url, coalesce=True), [50.0, 200.0, 400.0],
         1000.0),
        ("floor", fanout.StarletteFloor(log_dir, redis_url), [], 0.0),
    ]  # fmt: skip
    out: dict[str, Any] = {}
    for section, target, rates, saturation in targets:
        if section not in only:
            continue
        progress(f"fan-out: {target.name}, {viewers:,} viewers")
        key = {
            fanout.BareWebsockets: "bare",
            fanout.SocketIO: "socketio",
            fanout.StarletteFloor: "starlette_floor",
        }.get(type(target), "giftwire_coalescing" if "coalescing" in target.name else "giftwire")
        out[key] = await fanout.measure(target, redis, viewers, rates, saturation, progress)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every benchmark, write JSON")
    r.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latest.json")
    r.add_argument("--viewers", type=int, default=5000, help="viewers in the fan-out room")
    r.add_argument("--scale", type=float, default=1.0, help="multiply gift counts (0.1: quick)")
    r.add_argument("--only", default="hot,fanout,durability,gc",
                   help="comma list of: hot, durability, fanout (= bare, giftwire, socketio, "
                        "coalescing, floor), gc, capacity, live, cluster")  # fmt: skip
    r.add_argument("--gc-viewers", type=int, default=10_000,
                   help="viewers that connect and sit idle while GC pauses are timed")  # fmt: skip
    r.add_argument("--capacity-viewers", type=int, default=10_000,
                   help="viewers of the capacity model's check run (gifts/s: a tenth)")  # fmt: skip
    r.add_argument("--live-rounds", type=int, default=live.ROUNDS,
                   help="rounds of each side (plain, live) in the live section")  # fmt: skip
    r.add_argument("--report", action="store_true", help="then update docs/benchmarks.md")
    p = sub.add_parser("report", help="write the table and the plot into docs/")
    p.add_argument("--in", dest="path", type=Path,
                   default=REPO / "benchmarks" / "results" / "latest.json")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "run":
        progress = _Progress()
        chosen = sections(args.only)
        live.check_rounds(args.live_rounds)
        result = asyncio.run(
            run(args.viewers, args.scale, chosen, progress, args.gc_viewers,
                args.capacity_viewers, args.live_rounds)
        )  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"wrote {args.out}")
        if "hot_path" in result or "fanout" in result:
            print(report.table(result))
        if "durability" in result:
            print(durability.table(result["durability"]))
        if "live" in result:
            print(live.table(result["live"]))
        if "cluster" in result:
            print(cluster_scale.table(result["cluster"]))
            print(cluster_credits.table(result["cluster"]["hot_creator"]))
        if args.report:
            if "hot_path" in result or "fanout" in result:
                report.write_docs(result)
            if "durability" in result:
                durability.write_docs(result)
        return 0
    report.write_docs(orjson.loads(args.path.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
