"""Reconcile across both stores on the loopback cluster: the record's balances, per account
and ``transit``, against Redis' (less the lag, reported per slot), and a tampered record
found, each tampering by a line of its own."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from server.domain.errors import UnavailableError
from server.ledger.cluster_clawbacks import apply_clawback, receipt_clawbacks
from server.ledger.cluster_credits import CreditResult, Transfer
from server.ledger.cluster_guests import GuestCredit, GuestResult
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.cluster_relay import Relay
from server.ledger.guests import ALL_GUESTS
from server.ledger.keys import Keys
from server.record.cluster_logs import recorded_entries
from server.record.cluster_reconcile import ClusterRecordReport, reconcile_cluster_record
from server.record.connection import RecordPool
from tests.cluster.legs import funded, gift, live_stream, open_ledger, uid
from tests.cluster.record_helpers import ClusterRecord, cluster_record
from tests.cluster.test_cluster_guests import guests_in_three_thirds, on_stage
from tests.cluster.test_cluster_hold import HELD
from tests.support.cluster import RedisCluster


@dataclass
class Books:
    ledger: ClusterLedger
    record: ClusterRecord
    creator: str
    senders: list[str]
    pending_coins: int


@pytest.fixture
async def books(
    redis_cluster: RedisCluster, keys: Keys, record_pool: RecordPool
) -> AsyncIterator[Books]:
    """Gifts credited, one debit left in flight (its process died between the legs), all
    archived and the logs trimmed; then two more gifts, not archived (the lag)."""
    ledger = await open_ledger(redis_cluster, keys.prefix)
    crashed = await open_ledger(redis_cluster, keys.prefix)

    async def died(transfer: Transfer) -> CreditResult:
        raise UnavailableError("died between the legs")

    crashed.credits.credit = died  # type: ignore[method-assign]
    try:
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            stream, creator = await live_stream(ledger)
            senders = [await funded(ledger, 1_000) for _ in range(3)]
            for n, sender in enumerate(senders * 2):
                await gift(ledger, sender, stream, creator, gift_id="cap", client_id=f"g{n}")
            with pytest.raises(UnavailableError):
                await gift(crashed, senders[0], stream, creator, gift_id="cap", client_id="x")
            pending = (await reconcile_cluster(ledger)).totals["coins_pending"]
            assert pending > 0
            archiver = record.archiver()
            await archiver.drain()
            for ledger_log in archiver.logs:  # all of it is recorded: trim it, as it will
                await record.client.xtrim(ledger_log.key, maxlen=0)
            for n, sender in enumerate(senders[1:]):
                await gift(ledger, sender, stream, creator, gift_id="cap", client_id=f"late{n}")
            yield Books(ledger, record, creator, senders, pending)
    finally:
        await crashed.aclose()
        await ledger.aclose()


async def _reconcile(
    books: Books, pool: RecordPool, *, replay_ok: bool = True
) -> ClusterRecordReport:
    recorded = await recorded_entries(pool, books.ledger.keys)
    cluster = await reconcile_cluster(books.ledger, recorded)
    # The replay of the history (the record's part, then Redis') agrees with Redis' accounts,
    # unless the record lost part of that history.
    assert cluster.ok == replay_ok, cluster.problems
    return await reconcile_cluster_record(books.ledger, pool, cluster)


async def _tamper(pool: RecordPool, *statements: str) -> None:
    async with pool.connection() as conn:
        # Only a superuser can get past the append-only triggers.
        await conn.execute("ALTER TABLE postings DISABLE TRIGGER USER")
        await conn.execute("ALTER TABLE transfers DISABLE TRIGGER USER")
        for statement in statements:
            await conn.execute(statement)


async def test_a_clean_cluster_record_reconciles_with_lag_and_transit(
    books: Books, record_pool: RecordPool
) -> None:
    report = await _reconcile(books, record_pool)
    assert report.ok, report.problems
    assert report.record.lag == 4  # two gifts not archived yet, each a debit and a credit
    assert sum(report.lag_per_slot.values()) == 4 and len(report.lag_per_slot) >= 2
    assert report.transit == books.pending_coins  # the debit in flight, archived
    assert report.record.trimmed == report.record.recorded > 0


async def test_a_changed_posting_is_found(books: Books, record_pool: RecordPool) -> None:
    await _tamper(
        record_pool,
        "UPDATE postings SET amount = amount + 1 WHERE ctid = (SELECT ctid FROM postings"
        f" WHERE user_id = '{books.creator}' AND account = 'diamonds' LIMIT 1)",
    )
    problems = (await _reconcile(books, record_pool)).problems
    assert any("has postings summing to 1" in p for p in problems), problems
    assert any(p.startswith(f"record: {books.creator} diamonds is") for p in problems)
    assert "all postings together sum to 1, not 0" in problems


async def test_a_deleted_transfer_is_found(books: Books, record_pool: RecordPool) -> None:
    sender = books.senders[2]
    where = f"type = 'top_up' AND to_user = '{sender}'"
    await _tamper(
        record_pool,
        "DELETE FROM postings WHERE (log_slot, log_ms, log_seq) IN"
        f" (SELECT log_slot, log_ms, log_seq FROM transfers WHERE {where})",
        f"DELETE FROM transfers WHERE {where}",
    )
    problems = (await _reconcile(books, record_pool, replay_ok=False)).problems
    assert any("trimmed" in p and "below Redis' first entry" in p for p in problems), problems
    assert any(p.startswith(f"record: {sender} coins is") for p in problems)


async def test_an_acknowledged_entry_missing_from_the_record_is_not_lag(
    books: Books, record_pool: RecordPool
) -> None:
    await books.record.archiver().drain()  # the late gifts too; still in Redis (a young node)
    assert (await _reconcile(books, record_pool)).record.lag == 0
    where = "type = 'gift_debit' AND client_id = 'late0'"
    await _tamper(
        record_pool,
        "DELETE FROM postings WHERE (log_slot, log_ms, log_seq) IN"
        f" (SELECT log_slot, log_ms, log_seq FROM transfers WHERE {where})",
        f"DELETE FROM transfers WHERE {where}",
    )
    report = await _reconcile(books, record_pool)
    assert report.record.lag == 1
    assert any("1 entries the archiver acknowledged are not in the record" in p
               for p in report.problems), report.problems  # fmt: skip


async def test_coins_left_in_transit_are_found(books: Books, record_pool: RecordPool) -> None:
    # A credit that moved one coin less out of transit and one less to the platform: every
    # transfer still balances, but transit holds a coin no leg is in flight for.
    credit = (
        "(SELECT log_slot, log_ms, log_seq FROM transfers WHERE type = 'gift_credit'"
        " ORDER BY log_ms LIMIT 1)"
    )
    await _tamper(
        record_pool,
        "UPDATE postings SET amount = amount + 1 WHERE account = 'transit'"
        f" AND (log_slot, log_ms, log_seq) = {credit}",
        "UPDATE postings SET amount = amount - 1 WHERE account = 'platform'"
        f" AND (log_slot, log_ms, log_seq) = {credit}",
    )
    report = await _reconcile(books, record_pool)
    problems = report.problems
    assert report.transit == books.pending_coins + 1
    assert any(p.startswith("record: transit is") for p in problems), problems
    assert any(p.startswith("record: platform is") for p in problems)
    assert not any("summing to" in p for p in problems)


def _giftwire_reconcile(
    cluster: RedisCluster, keys: Keys, database_url: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GIFTWIRE_REDIS_URL": cluster.startup_urls[0],
        "GIFTWIRE_REDIS_CLUSTER": "true",
        "GIFTWIRE_KEY_PREFIX": keys.prefix,
        "GIFTWIRE_DATABASE_URL": database_url,
        "GIFTWIRE_JWT_SECRET": "x" * 32,
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "reconcile", "--json"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_giftwire_reconcile_checks_the_record_and_exits_1_on_a_mismatch(
    books: Books,
    record_pool: RecordPool,
    redis_cluster: RedisCluster,
    keys: Keys,
    database_url: str,
) -> None:
    done = await asyncio.to_thread(_giftwire_reconcile, redis_cluster, keys, database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["ok"] and sum(doc["record"]["lag_per_slot"].values()) == 4
    assert doc["record"]["transit"] == books.pending_coins == doc["totals"]["coins_pending"]
    await _tamper(
        record_pool,
        "UPDATE postings SET amount = amount + 1 WHERE ctid = (SELECT ctid FROM postings"
        f" WHERE user_id = '{books.creator}' AND account = 'diamonds' LIMIT 1)",
    )
    bad = await asyncio.to_thread(_giftwire_reconcile, redis_cluster, keys, database_url)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert any("summing to 1" in p for p in orjson.loads(bad.stdout)["problems"])


async def test_guests_parts_waiting_for_their_slots_are_in_transit(
    redis_cluster: RedisCluster, keys: Keys, record_pool: RecordPool
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    crashed = await open_ledger(redis_cluster, keys.prefix)

    async def died(credit: GuestCredit) -> GuestResult:
        raise UnavailableError("died between the credit and the guest-credit")

    crashed.guest_credits.credit = died  # type: ignore[method-assign]
    try:
        stream, creator = await live_stream(crashed)
        guests = guests_in_three_thirds()
        await on_stage(crashed, stream, creator, *guests)
        sender = await funded(crashed, 100)
        with pytest.raises(UnavailableError):
            await gift(crashed, sender, stream, creator, gift_id="cap", to=ALL_GUESTS)
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            await record.archiver().drain()
        cluster = await reconcile_cluster(ledger, await recorded_entries(record_pool, ledger.keys))
        assert cluster.ok and cluster.totals["coins_to_guests_pending"] == 99, cluster
        report = await reconcile_cluster_record(ledger, record_pool, cluster)
        assert report.ok and report.transit == 99, report.problems
    finally:
        await crashed.aclose()
        await ledger.aclose()


async def test_a_guests_clawback_forwarded_and_not_applied_is_in_transit(
    redis_cluster: RedisCluster, keys: Keys, record_pool: RecordPool
) -> None:
    """A chargeback of a gift to guests: the creator's hop forwarded each guest's part and
    the process died before the guests' hops. The record's transit owes exactly those
    coins; once the relay applied them, nothing, and both stores reconcile."""
    ledger = await open_ledger(redis_cluster, keys.prefix, HELD)
    try:
        stream, creator = await live_stream(ledger)
        guests = guests_in_three_thirds()
        await on_stage(ledger, stream, creator, *guests)
        buyer = uid("fan")
        await ledger.top_up(payment_id="p" + buyer, user_id=buyer, coins=10_000)
        await gift(ledger, buyer, stream, creator, gift_id="interstellar", to=ALL_GUESTS)

        async def lost(clawbacks: list[object]) -> list[bool]:
            return [False for _ in clawbacks]

        ledger.apply_clawbacks = lost  # type: ignore[assignment, method-assign]
        await ledger.refund(payment_id="p" + buyer, user_id=buyer, refund_id="r1", coins=10_000)
        del ledger.apply_clawbacks
        raw = await ledger.command(ledger.keys.refund(buyer, "p" + buyer, "r1"), "HGET", "receipt")
        [claim] = receipt_clawbacks(orjson.loads(raw))
        parent = await apply_clawback(ledger.runner, ledger.keys, ledger.limits, claim)
        assert len(parent.forwarded) == 3
        async with cluster_record(redis_cluster, record_pool, keys) as record:
            await record.archiver().drain()
            cluster = await reconcile_cluster(
                ledger, await recorded_entries(record_pool, ledger.keys)
            )
            assert cluster.ok and cluster.totals["coins_clawed_back_pending"] == 10_000, cluster
            report = await reconcile_cluster_record(ledger, record_pool, cluster)
            assert report.ok and report.transit == -10_000, report.problems
            relay = Relay(ledger, grace_ms=0, full_sweep_s=0)
            for _ in range(3):
                await relay.round()
            await asyncio.sleep(0.05)
            await record.archiver().drain()
            cluster = await reconcile_cluster(
                ledger, await recorded_entries(record_pool, ledger.keys)
            )
            assert cluster.ok and not cluster.pending, (cluster.problems, cluster.pending)
            report = await reconcile_cluster_record(ledger, record_pool, cluster)
            assert report.ok and report.transit == 0, report.problems
    finally:
        await ledger.aclose()
