"""Exactly once under faults: ``kill -9`` of the archiver process, of PostgreSQL and of Redis
at random moments during 20,000 transfers. Afterwards every committed transfer is in the
record once, every transfer's postings sum to zero, and the books reconcile across both
stores."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.connection import open_record
from server.record.embedded import PostgresProcess
from server.record.reconcile import reconcile_across
from tests.integration.record_helpers import (
    explain_mismatch,
    mixed_transfers,
    recorded_ids,
    repeated_calls,
    retried,
    unbalanced_transfers,
)

REPO = Path(__file__).resolve().parents[2]
TRANSFERS = 20_000
KILLS_MIN = 5
EXTRA_ROUNDS_MAX = 10
EXTRA_ROUND_TRANSFERS = 2_000
LEASE_TTL_MS = 500
REDIS_START_WAIT_S = 60.0


class ArchiverProcess:
    """``giftwire archive`` in a child process, which the test kills with SIGKILL."""

    def __init__(self, redis_url: str, database_url: str, prefix: str, log_path: Path) -> None:
        self.env = {
            **os.environ,
            "GIFTWIRE_REDIS_URL": redis_url,
            "GIFTWIRE_DATABASE_URL": database_url,
            "GIFTWIRE_KEY_PREFIX": prefix,
            "GIFTWIRE_LOG_LEVEL": "warning",
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "archive",
                 "--lease-ttl-ms", str(LEASE_TTL_MS)],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    server.stop()


async def _chaos(
    target: str,
    archiver: ArchiverProcess,
    redis: RedisProcess,
    postgres: PostgresProcess,
    done: asyncio.Event,
    rng: random.Random,
    kills: list[int],
    restarts: list[str],
) -> None:
    """Kill ``target`` with SIGKILL at random moments until ``done``, counting in ``kills[0]``;
    each Redis restart notes in ``restarts`` the last log id it came back with."""
    while not done.is_set():
        # Redis replays its AOF at every start, longer as the load goes on: kill it less often.
        await asyncio.sleep(rng.uniform(0.1, 0.6) * (3 if target == "redis" else 1))
        if target == "archiver":
            archiver.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            archiver.start()
        elif target == "postgres":
            postgres.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await asyncio.to_thread(postgres.start)
        else:
            killed_ms = int(time.time() * 1000)
            redis.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            # Late in the load its AOF takes 5 s and more to replay on a loaded machine:
            # more than start()'s default wait for it.
            await asyncio.to_thread(redis.start, REDIS_START_WAIT_S)
            restarts.append(f"killed at {killed_ms}: {await _last_log_id(redis.url)}")
        kills[0] += 1


async def _last_log_id(url: str) -> str:
    """The last id of the ledger log a restarted Redis holds, and its length."""
    client = Redis.from_url(url)
    try:
        info = await client.xinfo_stream(Keys(prefix="faults:").ledger())
        return f"last {info['last-generated-id'].decode()}, length {info['length']}"
    except Exception as e:  # diagnostics only: never fail the load for it
        return f"unknown ({type(e).__name__}: {e})"
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("target", ["archiver", "postgres", "redis"])
async def test_every_transfer_is_recorded_once_under_kill_9(
    target: str, fault_redis: RedisProcess, own_postgres: PostgresProcess, tmp_path: Path
) -> None:
    keys = Keys(prefix="faults:")
    database_url = own_postgres.create_database("record")
    redis = Redis.from_url(fault_redis.url)
    limits = Limits(
        gifts_per_s_max=100_000, gift_burst_max=100_000, redis_timeout_s=1.0, payout_hold_days=0
    )
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    archiver = ArchiverProcess(fault_redis.url, database_url, keys.prefix, tmp_path / "arch.log")
    archiver.start()
    done, rng, kills, restarts = asyncio.Event(), random.Random(target), [0], list[str]()
    chaos = asyncio.create_task(
        _chaos(target, archiver, fault_redis, own_postgres, done, rng, kills, restarts)
    )
    pool = None
    try:
        try:
            ids = await mixed_transfers(ledger, TRANSFERS, seed=7)
            # On a quiet machine the load can outrun the faults (a Redis restart replays its
            # AOF): keep it going, in bounded rounds, until enough of them have hit it.
            for seed in range(8, 8 + EXTRA_ROUNDS_MAX):
                if kills[0] >= KILLS_MIN:
                    break
                ids |= await mixed_transfers(ledger, EXTRA_ROUND_TRANSFERS, seed=seed)
        finally:
            done.set()
            await chaos
        assert kills[0] >= KILLS_MIN, "the faults must have hit during the load"
        if archiver.process is None or archiver.process.poll() is not None:
            archiver.start()
        pool = await open_record(database_url)
        deadline = asyncio.get_running_loop().time() + 120
        while len(recorded := await recorded_ids(pool)) < len(ids):
            assert asyncio.get_running_loop().time() < deadline, (
                f"{len(recorded)} of {len(ids)} recorded:\n{archiver.log_path.read_text()[-3000:]}"
            )
            await asyncio.sleep(0.2)
        archiver.stop()
        assert len(recorded) == len(set(recorded))
        if set(recorded) != ids:
            explained = await explain_mismatch(pool, redis, keys, ids, recorded)
            pytest.fail(f"{explained}\nrepeated calls: {await repeated_calls(pool)}\n"
                        f"Redis restarts: {restarts}\n{_logs(archiver, fault_redis)}")  # fmt: skip
        assert await unbalanced_transfers(pool) == 0
        report = await retried(functools.partial(reconcile_across, redis, keys, pool))
        assert report.ok, (
            f"{report.problems[:10]}\n{report.ledger.problems[:10]}\n"
            f"repeated calls: {await repeated_calls(pool)}\nRedis restarts: {restarts}\n"
            f"{_logs(archiver, fault_redis)}"
        )
        assert (report.record.recorded, report.record.lag) == (len(ids), 0)
        # The log was trimmed as the record caught up: far below the transfers made.
        assert await retried(functools.partial(redis.xlen, keys.ledger())) < len(ids) // 4
    finally:
        archiver.stop()
        if pool is not None:
            await pool.close()
        await redis.aclose()


def _logs(archiver: ArchiverProcess, redis: RedisProcess) -> str:
    """The tails of the archiver's and Redis' logs, for a failure's message."""
    redis_log = redis.data_dir / "redis.log"
    return (
        f"archiver log:\n{archiver.log_path.read_text()[-3000:]}\n"
        f"redis log:\n{redis_log.read_text()[-4000:] if redis_log.exists() else ''}"
    )
