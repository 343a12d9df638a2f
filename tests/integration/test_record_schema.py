"""The record's schema: migrations applied once, double entry and append-only enforced by
PostgreSQL itself, and transfers recorded exactly once by their log entry id."""

from __future__ import annotations

import asyncio
import dataclasses

import psycopg
import pytest

from server.record.connection import RecordPool, open_record
from server.record.migrate import MigrationError, load_migrations, migrate
from server.record.postings import RecordError, to_transfer
from server.record.store import record_transfers

GIFT = {
    "type": "gift", "client_id": "c1", "from": "alice", "to": "bob", "stream": "s1",
    "gift": "rose", "count": "3", "coins": "3", "diamonds": "1", "platform": "2", "seq": "7",
}  # fmt: skip
TOP_UP = {"type": "top_up", "payment": "p1", "to": "alice", "coins": "10", "credited": "10",
          "repaid": "0"}  # fmt: skip


async def test_migrations_are_applied_once(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        first = await migrate(conn)
        again = await migrate(conn)
        rows = await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()
    assert first == [m.version for m in load_migrations()]
    assert again == []
    assert [r[0] for r in rows] == first


async def test_concurrent_starts_apply_each_migration_once(database_url: str) -> None:
    pools = await asyncio.gather(*(open_record(database_url) for _ in range(4)))
    try:
        async with pools[0].connection() as conn:
            rows = await (await conn.execute("SELECT count(*) FROM schema_migrations")).fetchone()
    finally:
        for pool in pools:
            await pool.close()
    assert rows == (len(load_migrations()),)


async def test_an_edited_migration_stops_the_start(record_pool: RecordPool) -> None:
    edited = [dataclasses.replace(m, checksum="0" * 64) for m in load_migrations()]
    async with record_pool.connection() as conn:
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await migrate(conn, edited)


async def test_a_database_newer_than_the_code_stops_the_start(record_pool: RecordPool) -> None:
    async with record_pool.connection() as conn:
        with pytest.raises(MigrationError, match="migrations this code does not"):
            await migrate(conn, load_migrations()[:-1] or [])


async def _count(pool: RecordPool, table: str) -> int:
    async with pool.connection() as conn:
        query = "SELECT count(*) FROM transfers" if table == "transfers" else (
            "SELECT count(*) FROM postings")  # fmt: skip
        row = await (await conn.execute(query)).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_transfer_is_recorded_once_and_a_replay_is_skipped(
    record_pool: RecordPool,
) -> None:
    batch = [to_transfer("1000-0", TOP_UP), to_transfer("1000-1", GIFT)]
    async with record_pool.connection() as conn:
        assert await record_transfers(conn, batch) == 2
        assert await record_transfers(conn, batch) == 0
        assert await record_transfers(conn, [*batch, to_transfer("1001-0", GIFT)]) == 1
        balances = await (
            await conn.execute(
                "SELECT user_id, account, balance FROM account_balances ORDER BY 1, 2"
            )
        ).fetchall()
        at = await (await conn.execute("SELECT at FROM transfers WHERE log_seq = 1")).fetchone()
    assert await _count(record_pool, "transfers") == 3
    assert await _count(record_pool, "postings") == 2 + 3 + 3
    assert balances == [
        ("alice", "coins", 10 - 3 - 3),
        ("bob", "diamonds", 2),
        (None, "platform", 4),
        (None, "provider", -10),
    ]
    assert at is not None and at[0].timestamp() == 1.0


async def test_a_different_entry_under_a_recorded_id_is_refused(record_pool: RecordPool) -> None:
    async with record_pool.connection() as conn:
        await record_transfers(conn, [to_transfer("1000-1", GIFT)])
        with pytest.raises(RecordError, match="different entry under this id"):
            await record_transfers(
                conn, [to_transfer("1000-2", GIFT), to_transfer("1000-1", {**GIFT, "count": "4"})]
            )
    assert await _count(record_pool, "transfers") == 1  # the whole batch rolled back


async def test_postings_that_do_not_sum_to_zero_are_refused(record_pool: RecordPool) -> None:
    async with record_pool.connection() as conn:
        await record_transfers(conn, [to_transfer("1000-1", GIFT)])
        with pytest.raises(psycopg.errors.RaiseException, match="sum to 5, not 0"):
            await conn.execute("INSERT INTO postings VALUES (1000, 1, 9, 'bob', 'diamonds', 5)")
    assert await _count(record_pool, "postings") == 3


async def test_postings_copied_in_are_checked_like_inserted_ones(record_pool: RecordPool) -> None:
    """The archiver writes postings with COPY: the statement-level checks fire for it too."""
    async with record_pool.connection() as conn:
        await record_transfers(conn, [to_transfer("1000-1", GIFT)])
        copy_in = "COPY postings (log_ms, log_seq, line, user_id, account, amount) FROM STDIN"
        for row, error in [
            ((1000, 1, 9, "bob", "diamonds", 5), "sum to 5, not 0"),
            ((7, 7, 0, "bob", "diamonds", 5), "postings_transfer_exists"),
        ]:
            with pytest.raises(psycopg.errors.Error, match=error):
                async with conn.cursor().copy(copy_in) as copy:  # type: ignore[arg-type]
                    await copy.write_row(row)
    assert await _count(record_pool, "postings") == 3


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount = amount + 1",
        "DELETE FROM postings",
        "UPDATE transfers SET type = 'x'",
        "DELETE FROM transfers",
        "TRUNCATE postings, transfers",
    ],
)
async def test_the_record_is_append_only(record_pool: RecordPool, statement: str) -> None:
    async with record_pool.connection() as conn:
        await record_transfers(conn, [to_transfer("1000-1", GIFT)])
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await conn.execute(statement)  # type: ignore[arg-type]
    assert await _count(record_pool, "postings") == 3


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ("(1000, 1, 9, NULL, 'coins', 5)", "postings_check"),
        ("(1000, 1, 9, 'bob', 'platform', 5)", "postings_check"),
        ("(1000, 1, 9, 'bob', 'gems', 5)", "postings_account_check"),
        ("(1000, 1, 9, 'bob', 'coins', 0)", "postings_amount_check"),
        ("(1, 1, 9, 'bob', 'coins', 5)", "postings_transfer_exists"),
    ],
)
async def test_postings_name_real_accounts_and_transfers(
    record_pool: RecordPool, values: str, constraint: str
) -> None:
    async with record_pool.connection() as conn:
        await record_transfers(conn, [to_transfer("1000-1", GIFT)])
        with pytest.raises(psycopg.errors.IntegrityError, match=constraint):
            await conn.execute(f"INSERT INTO postings VALUES {values}")
