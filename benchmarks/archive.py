"""``python -m benchmarks.archive [--scale 1.0] [--pin pinned] [--out FILE]``: what the
durable record costs the hot path, measured in one run (``FILE``: by default
``benchmarks/results/archive.json``).

* **Gifts per second** end to end (gifters over WebSockets against one ``giftwire serve``,
  as ``benchmarks.hotpath`` measures it) with the archiver off (no database) and on (serve
  runs its archiver into a PostgreSQL of its own), alternating; the ratio on / off of the
  best rounds, and of each pair of rounds.
* **Placement** (``--pin``). ``pinned``: the gift path (this process, which is the load
  generator, the server and Redis) on every core but the last, the record (PostgreSQL and
  the archiver) on the last one, in the off rounds *and* the on rounds, so that the off
  rounds neither get the record's core for free nor lose it. That is what the target is
  about: does recording take anything from the gift path, where the record has CPU of its
  own (on a deployment, PostgreSQL on its own host). ``free``: every process on every
  core, as the operating system schedules them (on a 2-core machine the archiver and
  PostgreSQL then compete with the gift path). ``pinned`` is the default (about 4 minutes
  on the 2-core machine); ``both`` runs a round of each, alternated, in the same run (about
  6 minutes when the machine is quiet).
* **CPU per gift**: the server's, Redis', the load generator's (the gift path), and the
  archiver's and PostgreSQL's; the gift path's CPU per gift off / on is a second estimate
  of the ratio, steadier than gifts/s on a shared machine.
* **Archive lag**: for every transfer of the "on" rounds, the time from its commit in
  Redis (the entry id's clock) to the commit of its batch in PostgreSQL (``archived_at``),
  p50 / p99 / max.
* **Redis memory under a sustained load** of ``200,000 × scale`` gifts sent straight to the
  ledger, with ``giftwire archive`` running and without: ``used_memory`` and the log's own
  bytes at each tenth of the load. Receipts expire after 1 s so that only the log can grow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
from redis.asyncio import Redis

from benchmarks.hotpath import measure_end_to_end
from benchmarks.procs import REPO, machine
from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.embedded import PostgresProcess

ROUNDS = 3
PLACEMENTS = {"pinned": ("pinned",), "free": ("free",), "both": ("pinned", "free")}
MEMORY_GIFTS = 200_000
MEMORY_SAMPLES = 10
SENDERS = 50
IN_FLIGHT = 200


def _say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class Placement:
    """Which cores the gift path and the record run on in a round (``None``: every core)."""

    def __init__(self, name: str) -> None:
        self.name = name
        cores = sorted(os.sched_getaffinity(0))
        self.all = set(cores)
        if name == "pinned":
            if len(cores) < 2:
                raise SystemExit("--pin pinned needs at least 2 cores")
            self.gift, self.record = set(cores[:-1]), {cores[-1]}
        else:
            self.gift = self.record = self.all

    def apply(self, redis_pid: int, postgres_pid: int) -> None:
        """This process (the load generator, and the server it starts) and Redis on the
        gift path's cores, PostgreSQL (its postmaster: backends forked later inherit) on the
        record's. The archiver, a child of serve, is moved by ``CpuSampler`` when it appears."""
        os.sched_setaffinity(0, self.gift)
        _pin_tree(redis_pid, self.gift)
        _pin_tree(postgres_pid, self.record)


def _pin_tree(pid: int, cores: set[int]) -> None:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                proc.cpu_affinity(sorted(cores))


class CpuSampler:
    """CPU seconds that Redis, PostgreSQL and the archiver (``giftwire archive``, a child of
    serve that dies with it) use during a round: sampled every 0.25 s, each process's last
    sample kept, so that the cost of the record can be placed rather than guessed."""

    def __init__(self, redis_pid: int, postgres_pid: int, archiver_cores: set[int]) -> None:
        self.roots = {"redis": redis_pid, "postgres": postgres_pid}
        self.archiver_cores = sorted(archiver_cores)
        self.last: dict[tuple[str, int], float] = {}
        self.first: dict[tuple[str, int], float] = {}
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> None:
        seen: list[tuple[str, psutil.Process]] = []
        for role, pid in self.roots.items():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                seen += [(role, p) for p in [root, *root.children(recursive=True)]]
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            cmd = proc.info.get("cmdline") or []
            if "server.cli" in cmd and "archive" in cmd and proc.info.get("cwd") == str(REPO):
                seen.append(("archiver", proc))
                with contextlib.suppress(psutil.Error):
                    if proc.cpu_affinity() != self.archiver_cores:
                        proc.cpu_affinity(self.archiver_cores)
        for role, proc in seen:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                key = (role, proc.pid)
                self.last[key] = times.user + times.system
                self.first.setdefault(key, self.last[key] if role != "archiver" else 0.0)

    async def _loop(self) -> None:
        while not self._stop:
            await asyncio.to_thread(self._sample)
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, float]:
        self._stop = True
        if self._task is not None:
            await self._task
        self._sample()
        used: dict[str, float] = {"redis": 0.0, "postgres": 0.0, "archiver": 0.0}
        for key, last in self.last.items():
            used[key[0]] += last - self.first[key]
        return used


async def _retried(ledger: Ledger, client_id: str, sender: str) -> None:
    """One gift, retried with the same id after a timeout (its outcome was unknown), as a
    client must: a stall of the loaded machine should not end the run."""
    for attempt in range(5):
        try:
            await ledger.send_gift(
                client_id=client_id,
                sender_id=sender,
                sender_name="s",
                stream_id="mem",
                creator_id="memc",
                gift_id="rose",
                count=1,
            )
            return
        except UnavailableError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.5)


def _lag_ms(database_url: str) -> dict[str, float]:
    """Archive lag of every transfer of a round, and ``steady_*``: of those committed in
    Redis after the archiver's first batch (the archiver starts with the round's server,
    imports and migrates a new database meanwhile: the first transfers wait for that)."""
    query = (
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag), count(*)"
        " FROM (SELECT extract(epoch FROM archived_at - at) * 1000 AS lag FROM transfers"
        " WHERE at >= %s) AS t"
    )
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, ["-infinity"]).fetchone()
        first = conn.execute("SELECT min(archived_at) FROM transfers").fetchone()
        steady = conn.execute(query, [first[0] if first else None]).fetchone()
    assert row is not None and steady is not None
    (p50, p99), top, count = row
    result = {"p50": round(p50, 1), "p99": round(p99, 1), "max": round(float(top), 1),
              "transfers": int(count)}  # fmt: skip
    if steady[1] is not None:
        (s50, s99), stop, _ = steady
        result |= {"steady_p50": round(s50, 1), "steady_p99": round(s99, 1),
                   "steady_max": round(float(stop), 1)}  # fmt: skip
    return result


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _round(
    redis_url: str,
    pids: tuple[int, int],
    log_dir: Path,
    scale: float,
    env: dict[str, str],
    placement: Placement,
) -> dict[str, Any]:
    # Every round starts from an empty Redis: otherwise the rounds' logs (80,000 entries
    # each without the archiver) pile up and later rounds pay for a larger dataset.
    flusher = Redis.from_url(redis_url)
    try:
        await flusher.flushall()
    finally:
        await flusher.aclose()
    placement.apply(*pids)
    sampler = CpuSampler(*pids, placement.record)
    sampler.start()
    own0 = _own_cpu_s()
    try:
        result = await measure_end_to_end(redis_url, log_dir, _say, scale, env)
    finally:
        used = await sampler.stop()
        # The server and its Redis/PostgreSQL set-up are over: the rest runs anywhere.
        os.sched_setaffinity(0, placement.all)
    # This process is the load generator (plus the sampler's thread, and the server's
    # start and stop, a small share of a round).
    used["load_generator"] = _own_cpu_s() - own0
    acked = max(1, int(result["acked"]))
    result["cpu_us_per_gift"] = {role: round(s * 1e6 / acked, 1) for role, s in used.items()}
    cpu = result["cpu_us_per_gift"]
    result["gift_path_cpu_us_per_gift"] = round(
        result["server_cpu_us_per_gift"] + cpu["redis"] + cpu["load_generator"], 1
    )
    _say(f"  {result['gifts_per_s']:,} gifts/s; CPU per gift (µs) beside the server "
         f"({result['server_cpu_us_per_gift']}): {cpu}")  # fmt: skip
    return result


async def _throughput(
    redis_url: str,
    postgres: PostgresProcess,
    log_dir: Path,
    scale: float,
    pids: tuple[int, int],
    placements: Sequence[str],
) -> dict[str, Any]:
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"off": [], "on": []} for name in placements
    }
    lags: dict[str, list[dict[str, float]]] = {name: [] for name in placements}
    for number in range(1, ROUNDS + 1):
        for name in placements:
            placement = Placement(name)
            _say(f"{name}: archiver off, round {number}")
            off = await _round(redis_url, pids, log_dir, scale, {}, placement)
            rounds[name]["off"].append(off)
            database = postgres.create_database(f"bench{number}{name}_{time.time_ns() % 10**6}")
            _say(f"{name}: archiver on, round {number}")
            env = {"GIFTWIRE_DATABASE_URL": database}
            on = await _round(redis_url, pids, log_dir, scale, env, placement)
            # The last batches land a moment after the last ack.
            await asyncio.sleep(2)
            rounds[name]["on"].append(on)
            lags[name].append(_lag_ms(database))
    return {name: _summary(rounds[name], lags[name]) for name in placements}


def _summary(
    rounds: dict[str, list[dict[str, Any]]], lags: list[dict[str, float]]
) -> dict[str, Any]:
    off_rounds, on_rounds = rounds["off"], rounds["on"]
    off = max(off_rounds, key=lambda r: r["gifts_per_s"])
    on = max(on_rounds, key=lambda r: r["gifts_per_s"])
    for side in (*off_rounds, *on_rounds):
        side.pop("reconciled", None)  # loadtest's Redis-only check: moot once the log is trimmed

    def median_cpu(side: list[dict[str, Any]]) -> float:
        return float(statistics.median(r["gift_path_cpu_us_per_gift"] for r in side))

    return {
        "off": off,
        "on": on,
        "ratio_on_off": round(on["gifts_per_s"] / off["gifts_per_s"], 3),
        # Each "on" round against the "off" round just before it: drift in the machine's
        # other load falls on both sides of a pair.
        "paired_ratios": [
            round(n["gifts_per_s"] / f["gifts_per_s"], 3)
            for f, n in zip(off_rounds, on_rounds, strict=True)
        ],
        # The gift path's CPU per gift, median of the rounds, off / on: the throughput
        # ratio to expect where the gift path is CPU-bound on its cores.
        "gift_path_cpu_ratio_off_on": round(median_cpu(off_rounds) / median_cpu(on_rounds), 3),
        "archive_lag_ms": max(lags, key=lambda lag: lag["p99"]),
        "all_rounds_archive_lag_ms": lags,
        "all_rounds_gifts_per_s": {
            "off": [r["gifts_per_s"] for r in off_rounds],
            "on": [r["gifts_per_s"] for r in on_rounds],
        },
        "all_rounds_cpu_us_per_gift": {
            side: [
                {"server": r["server_cpu_us_per_gift"], **r["cpu_us_per_gift"]}
                for r in rounds[side]
            ]
            for side in ("off", "on")
        },
    }


async def _sustained(redis_url: str, database_url: str | None, log_dir: Path, scale: float,
                     tag: str) -> dict[str, Any]:  # fmt: skip
    keys = Keys(f"mem{tag}:")
    redis = Redis.from_url(redis_url)
    limits = Limits(gifts_per_s_max=10**6, gift_burst_max=10**6, receipt_ttl_s=1)
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    archiver = None
    if database_url:
        env = {
            **os.environ,
            "GIFTWIRE_REDIS_URL": redis_url,
            "GIFTWIRE_DATABASE_URL": database_url,
            "GIFTWIRE_KEY_PREFIX": keys.prefix,
        }
        archiver = subprocess.Popen(  # noqa: ASYNC220 (started once, not awaited)
            [sys.executable, "-m", "server.cli", "archive"], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=(log_dir / f"archive-{tag}.log").open("wb"),
        )  # fmt: skip
    try:
        await ledger.start_stream(stream_id="mem", creator_id="memc", title="memory")
        senders = [f"s{i}" for i in range(SENDERS)]
        for sender in senders:
            await ledger.top_up(payment_id=f"p{sender}", user_id=sender, coins=10**12)
        total = int(MEMORY_GIFTS * scale)
        step = total // MEMORY_SAMPLES
        samples = []
        sent, started = 0, time.perf_counter()
        while sent < total:
            batch = min(IN_FLIGHT, total - sent)
            await asyncio.gather(*(
                _retried(ledger, f"{tag}{sent + i}", senders[i % SENDERS])
                for i in range(batch)
            ))  # fmt: skip
            sent += batch
            if sent % step == 0:
                info = await redis.info("memory")
                log_bytes = int(await redis.memory_usage(keys.ledger()) or 0)
                entries = await redis.xlen(keys.ledger())
                samples.append({"gifts": sent, "used_memory": int(info["used_memory"]),
                                "log_bytes": log_bytes, "log_entries": entries})  # fmt: skip
        elapsed = time.perf_counter() - started
    finally:
        if archiver is not None:
            archiver.terminate()
            archiver.wait(20)
        await redis.aclose()
    first, last = samples[0], samples[-1]
    return {
        "gifts": total,
        "gifts_per_s": round(total / elapsed),
        "samples": samples,
        "used_memory_growth_bytes": last["used_memory"] - first["used_memory"],
        "log_bytes_max": max(s["log_bytes"] for s in samples),
    }


async def run(scale: float, pin: str, memory: bool = True) -> dict[str, Any]:
    placements = PLACEMENTS[pin]
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "machine": machine(), "scale": scale,
                              "placements": list(placements)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="giftwire-bench-archive-") as tmp:
        log_dir = Path(tmp)
        # No automatic AOF rewrite: a rewrite is a forked child busy for seconds, which
        # would land on whichever round happens to cross the threshold.
        redis = RedisProcess(log_dir / "redis", extra_args=("--auto-aof-rewrite-percentage", "0"))
        postgres = PostgresProcess(log_dir / "postgres")
        redis.start()
        postgres.start()
        try:
            # The 2-core machine is shared: the load average says how much the ratio means.
            result["load_average"] = {"start": os.getloadavg()}
            assert redis.process is not None and postgres.process is not None
            pids = (redis.process.pid, postgres.process.pid)
            result["throughput"] = await _throughput(
                redis.url, postgres, log_dir, scale, pids, placements
            )
            Placement("free").apply(*pids)
            result["load_average"]["after_throughput"] = os.getloadavg()
            if memory:
                _say("sustained load, archiver off")
                off = await _sustained(redis.url, None, log_dir, scale, "off")
                _say("sustained load, archiver on")
                database = postgres.create_database("sustained")
                on = await _sustained(redis.url, database, log_dir, scale, "on")
                result["memory"] = {"off": off, "on": on}
            result["load_average"]["end"] = os.getloadavg()
        finally:
            postgres.stop()
            redis.stop()
    return result


def table(result: dict[str, Any]) -> str:
    m = result.get("memory")
    lines = ["| measure | archiver off | archiver on |", "|---|---|---|"]
    for name, t in result["throughput"].items():
        lag = t["archive_lag_ms"]
        off, on = t["off"], t["on"]
        lines += [
            f"| **{name}**: gifts/s end to end (best of {ROUNDS}) | {off['gifts_per_s']:,} "
            f"| {on['gifts_per_s']:,} (**{t['ratio_on_off']:.2f}×**) |",
            f"| {name}: on / off, each pair of rounds | | "
            f"{', '.join(map(str, t['paired_ratios']))} |",
            f"| {name}: gift path CPU per gift (µs; server + Redis + load generator), "
            f"off / on = {t['gift_path_cpu_ratio_off_on']:.2f} "
            f"| {off['gift_path_cpu_us_per_gift']} | {on['gift_path_cpu_us_per_gift']} |",
            f"| {name}: server CPU per gift (µs) | {off['server_cpu_us_per_gift']} "
            f"| {on['server_cpu_us_per_gift']} |",
            *(
                f"| {name}: {role} CPU per gift (µs) | {off['cpu_us_per_gift'].get(role, '—')} "
                f"| {on['cpu_us_per_gift'].get(role, '—')} |"
                for role in ("redis", "load_generator", "archiver", "postgres")
            ),
            f"| {name}: archive lag p50 / p99 / max (ms), all; after the first batch | — "
            f"| {lag['p50']} / {lag['p99']} / {lag['max']}; {lag.get('steady_p50')} / "
            f"{lag.get('steady_p99')} / {lag.get('steady_max')} |",
        ]
    lines += (
        []
        if m is None
        else [
            f"| Redis used_memory growth over {m['on']['gifts']:,} gifts | "
            f"{m['off']['used_memory_growth_bytes'] / 2**20:+.1f} MiB "
            f"| {m['on']['used_memory_growth_bytes'] / 2**20:+.1f} MiB |",
            f"| largest ledger log (bytes) | {m['off']['log_bytes_max']:,} "
            f"| {m['on']['log_bytes_max']:,} |",
        ]
    )
    lines += [
        f"| load average (1 min) at start / after throughput / end | "
        f"{' / '.join(f'{v[0]:.1f}' for v in result.get('load_average', {}).values())} | |",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply gift counts")
    parser.add_argument(
        "--pin",
        choices=sorted(PLACEMENTS),
        default="pinned",
        help="pinned: gift path and record on cores of their own; free: anywhere; both: "
        "a round of each, alternated",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the sustained load (Redis memory)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/archive.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.scale, args.pin, memory=not args.no_memory))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
