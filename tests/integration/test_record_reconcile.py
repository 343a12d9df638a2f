"""Reconcile across both stores: the record's part of the history and Redis' tail replay to
the balances, the record's balances agree with Redis' less the lag, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
from redis.asyncio import Redis

from server.ledger.embedded import RedisProcess
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from server.record.archiver import Archiver, ArchiverConfig
from server.record.connection import RecordPool
from server.record.history import wallet_history
from server.record.reconcile import reconcile_across
from tests.integration.helpers import CREATOR
from tests.integration.record_helpers import mixed_transfers

CONFIG = ArchiverConfig(batch_max=200, block_ms=20)
REPO = Path(__file__).resolve().parents[2]


async def _archive(ledger: Ledger, pool: RecordPool) -> Archiver:
    archiver = Archiver(ledger.redis, pool, ledger.keys, config=CONFIG, consumer="a")
    await archiver.drain()
    return archiver


async def test_a_trimmed_log_reconciles_across_both_stores(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 3_000)
    before = await reconcile(ledger.redis, ledger.keys)
    assert before.ok, before.problems
    await _archive(ledger, record_pool)
    # Redis alone can no longer vouch for the books: its log lost its head.
    alone = await reconcile(ledger.redis, ledger.keys)
    assert not alone.ok
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert report.ok, report.problems
    assert report.ledger.totals == before.totals
    r = report.record
    assert (r.recorded, r.lag, r.trimmed + r.redis_tail) == (len(ids), 0, len(ids))
    assert r.trimmed > len(ids) // 2


async def test_entries_not_archived_yet_are_lag_not_problems(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    ids = await mixed_transfers(ledger, 1_000)
    await _archive(ledger, record_pool)
    more = await mixed_transfers(ledger, 500, seed=2)
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert report.ok, report.problems
    assert report.record.lag == len(more)
    assert report.ledger.totals.entries == len(ids) + len(more)


async def test_an_empty_record_is_all_lag(ledger: Ledger, record_pool: RecordPool) -> None:
    ids = await mixed_transfers(ledger, 300)
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert report.ok, report.problems
    assert (report.record.lag, report.record.recorded, report.record.trimmed) == (len(ids), 0, 0)


async def test_empty_books_reconcile(ledger: Ledger, record_pool: RecordPool) -> None:
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert report.ok, report.problems
    assert report.ledger.totals.entries == 0


async def test_entries_trimmed_without_being_recorded_are_found(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    await mixed_transfers(ledger, 600)
    rows = await ledger.redis.xrange(ledger.keys.ledger(), count=301)
    await ledger.redis.xtrim(ledger.keys.ledger(), minid=rows[-1][0], approximate=False)
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert not report.ok
    assert any("trimmed 300 log entries and the record holds 0" in p for p in report.problems)


async def test_a_tampered_record_is_found(ledger: Ledger, record_pool: RecordPool) -> None:
    await mixed_transfers(ledger, 400)
    await _archive(ledger, record_pool)
    async with record_pool.connection() as conn:
        # Only a superuser can get past the append-only triggers.
        await conn.execute("ALTER TABLE postings DISABLE TRIGGER USER")
        await conn.execute(
            "UPDATE postings SET amount = amount - 1 WHERE account = 'platform'"
            " AND (log_ms, log_seq) = (SELECT min(log_ms), min(log_seq) FROM postings"
            " WHERE account = 'platform' GROUP BY log_ms ORDER BY log_ms LIMIT 1)"
        )
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert not report.ok
    assert any("postings that do not sum to 0" in p for p in report.problems)
    assert any(p.startswith("record: platform is") for p in report.problems)


async def test_a_tampered_redis_balance_is_found(
    ledger: Ledger, record_pool: RecordPool, redis: Redis
) -> None:
    await mixed_transfers(ledger, 400, gifters=3)
    await _archive(ledger, record_pool)
    await redis.hincrby(ledger.keys.account("g1-0"), "coins", 5)
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert any(p.startswith("record: g1-0 coins is") for p in report.problems)
    assert any("account g1-0" in p for p in report.ledger.problems)


async def test_a_different_entry_in_both_stores_is_found(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    await mixed_transfers(ledger, 50)
    await _archive(ledger, record_pool)
    last_id, _ = (await ledger.redis.xrevrange(ledger.keys.ledger(), count=1))[0]
    async with record_pool.connection() as conn:
        await conn.execute("ALTER TABLE transfers DISABLE TRIGGER USER")
        ms, seq = last_id.decode().split("-")
        await conn.execute(
            'UPDATE transfers SET fields = fields || \'{"note": "x"}\''
            " WHERE (log_ms, log_seq) = (%s, %s)",
            [int(ms), int(seq)],
        )
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert any("hold different entries" in p for p in report.problems)


async def _giftwire(redis_url: str, database_url: str, prefix: str, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "GIFTWIRE_REDIS_URL": redis_url,
        "GIFTWIRE_DATABASE_URL": database_url,
        "GIFTWIRE_KEY_PREFIX": prefix,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", *args, env=env, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode in (0, 1), stderr.decode()
    return process.returncode, stdout.decode()


async def test_the_cli_archives_and_reconciles_across_both_stores(
    ledger: Ledger, redis_server: RedisProcess, database_url: str, redis: Redis
) -> None:
    ids = await mixed_transfers(ledger, 500)
    prefix = ledger.keys.prefix
    code, out = await _giftwire(redis_server.url, database_url, prefix, "archive", "--once")
    assert code == 0
    assert orjson.loads(out)["recorded"] == len(ids)
    code, out = await _giftwire(redis_server.url, database_url, prefix, "reconcile", "--json")
    doc = orjson.loads(out)
    assert (code, doc["ok"], doc["problems"]) == (0, True, [])
    assert doc["record"]["lag"] == 0
    assert doc["record"]["trimmed"] + doc["record"]["redis_tail"] == len(ids)
    code, out = await _giftwire(redis_server.url, database_url, prefix, "reconcile")
    assert out.splitlines()[-1] == "books reconcile: OK (Redis and the record)"

    await redis.hincrby(ledger.keys.platform(), "coins", -1)
    code, out = await _giftwire(redis_server.url, database_url, prefix, "reconcile")
    assert code == 1
    assert "record: platform is" in out


async def test_settled_payouts_are_recorded_and_reconcile(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    await mixed_transfers(ledger, 400)
    for i, outcome in enumerate(["paid", "failed", "paid"]):
        await ledger.cash_out(client_id=f"pay{i}", creator_id=CREATOR, diamonds=1_000)
        await ledger.settle_payout(client_id=f"pay{i}", creator_id=CREATOR, outcome=outcome)
    await _archive(ledger, record_pool)
    report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
    assert report.ok, report.problems
    page = await wallet_history(record_pool, CREATOR, before=None, limit=6)
    kinds = [(item["kind"], item["diamonds"]) for item in page.items]
    assert kinds == [
        ("payout_paid", 0), ("cash_out", -1_000), ("payout_failed", 1_000), ("cash_out", -1_000),
        ("payout_paid", 0), ("cash_out", -1_000),
    ]  # fmt: skip


async def test_right_after_a_load_it_waits_for_a_running_archiver(
    ledger: Ledger, record_pool: RecordPool
) -> None:
    stop = asyncio.Event()
    archiver = Archiver(ledger.redis, record_pool, ledger.keys, config=CONFIG, consumer="live")
    task = asyncio.create_task(archiver.run(stop))
    try:
        ids = await mixed_transfers(ledger, 3_000)
        report = await reconcile_across(ledger.redis, ledger.keys, record_pool)
        assert report.ok, report.problems
        assert (report.record.lag, report.ledger.totals.entries) == (0, len(ids))
    finally:
        stop.set()
        await task
