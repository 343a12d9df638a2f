"""send_gift.lua alone, plain against live: where the live features' cost sits in Redis.

``redis-benchmark`` runs giftwire's own send_gift (the same KEYS and ARGV as
``hotpath.script_call``) with EVALSHA, 50 clients, pipelines of 16, on four streams in
turn, round after round: ``plain`` (nothing running), ``battle`` (in a battle),
``goals`` (with ``goals`` goals) and ``live`` (both), so that the live side's cost splits
into its two features.
Redis is the bottleneck here, so its CPU time per run (from /proc: preemption by other
work on the machine does not count, unlike wall time) is the steady number; commandstats'
``usec_per_call`` is wall time inside the script and is kept beside it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

from redis.asyncio import Redis

from benchmarks.hotpath import CREATOR, STREAM, Progress, _prepare, _redis_benchmark
from benchmarks.procs import cpu_seconds
from server.domain.goals import Goal, GoalKind
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger

OPPONENT = "hot-rival"
OPPONENT_CREATOR = "hcr"
PIPELINE = 16
VARIANTS: dict[str, tuple[bool, bool]] = {
    # name: (in a battle, with goals)
    "plain": (False, False),
    "battle": (True, False),
    "goals": (False, True),
    "live": (True, True),
}


async def _start(redis: Redis, keys: Keys, limits: Limits, battle: bool, goals: int) -> None:
    """A battle between ``STREAM`` and a rival for the longest allowed time, and ``goals``
    goals on ``STREAM`` (coins and roses alternately, targets never reached)."""
    ledger = Ledger(redis, keys=keys, limits=limits)
    for g in range(goals):
        kind = GoalKind.GIFT if g % 2 else GoalKind.COINS
        goal = Goal(f"g{g}", kind, "rose" if g % 2 else "", 10**12, f"goal {g}")
        await ledger.set_goal(stream_id=STREAM, actor_id=CREATOR, goal=goal)
    if not battle:
        return
    await ledger.start_stream(stream_id=OPPONENT, creator_id=OPPONENT_CREATOR, title="rival")
    await ledger.battles.invite(
        battle_id="bench-battle", from_stream=STREAM, to_stream=OPPONENT, actor_id=CREATOR,
        duration_s=limits.battle_seconds_max,
    )  # fmt: skip
    await ledger.battles.accept(
        battle_id="bench-battle", from_stream=STREAM, to_stream=OPPONENT,
        actor_id=OPPONENT_CREATOR,
    )  # fmt: skip


def _evalsha_stats(port: int) -> tuple[int, int]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "commandstats"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
            return int(fields["calls"]), int(fields["usec"])
    return 0, 0


async def measure(
    redis_url: str, redis_port: int, redis_pid: int, progress: Progress, scale: float,
    rounds: int, goals: int,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """``rounds`` runs of each variant, interleaved (plain, battle, goals, live, plain, …)."""
    limits = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
    redis = Redis.from_url(redis_url)
    stamp = time.time_ns() % 10**6
    sides = {name: Keys(f"ls{name[0]}{stamp}:") for name in VARIANTS}
    # A subscriber on each room channel, as giftwire has one while viewers watch.
    subscribers = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, never waited on here
            ["redis-cli", "-p", str(redis_port), "subscribe", keys.room_channel(STREAM)],
            stdout=subprocess.DEVNULL,
        )
        for keys in sides.values()
    ]
    measured: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    try:
        shas = {side: await _prepare(redis, keys, limits) for side, keys in sides.items()}
        for name, (battle, with_goals) in VARIANTS.items():
            await _start(redis, sides[name], limits, battle, goals if with_goals else 0)
        requests = int(100_000 * scale)
        for number in range(1, rounds + 1):
            for side, keys in sides.items():
                calls, usec = _evalsha_stats(redis_port)
                cpu = cpu_seconds(redis_pid)
                rps = await asyncio.to_thread(
                    _redis_benchmark, redis_port, shas[side], keys, limits, requests, PIPELINE
                )
                cpu = cpu_seconds(redis_pid) - cpu
                calls1, usec1 = _evalsha_stats(redis_port)
                one = {
                    "runs_per_s": round(rps),
                    "redis_cpu_us_per_run": round(cpu / requests * 1e6, 1),
                    "evalsha_usec_per_call": round((usec1 - usec) / max(calls1 - calls, 1), 2),
                }
                progress(f"send_gift alone, {side}, round {number}: {one}")
                measured[side].append(one)
    finally:
        for subscriber in subscribers:
            subscriber.terminate()
            subscriber.wait()
        await redis.aclose()
    return measured
