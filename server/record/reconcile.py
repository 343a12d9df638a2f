"""Reconcile across both stores: the record in PostgreSQL and what is left in Redis.

Once the archiver trims ``{ledger}:log``, Redis alone no longer holds the history. This
audit replays the whole of it, the record's part (every transfer below the first entry
still in Redis) followed by Redis' tail, through the same checks as before
(``server.ledger.reconcile``), and adds the checks only two stores need:

* nothing was trimmed that the record lacks: the transfers recorded below Redis' first
  entry are exactly as many as Redis has trimmed (``entries-added`` − ``length``);
* every entry in both stores is the same entry in both;
* the record's balance of every account (``account_balances``) equals Redis' balance less
  the postings of the entries not archived yet (the *lag*, reported);
* every transfer's postings sum to zero, and so do all postings together.

It reads both stores and writes neither. Run it on a quiet ledger: a transfer that
commits while it runs is a mismatch. A running archiver is waited for (up to 10 s) to
catch up first; then Redis' tail is read, then one snapshot of the record (repeatable
read), then Redis' balances.
Redis' tail is held in memory (about 300 B an entry): small while the archiver keeps up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.ledger.keys import Keys
from server.ledger.reconcile import Report, log_entries, reconcile
from server.ledger.runner import StreamRows
from server.record.archiver import GROUP, ArchiverConfig, LedgerLog
from server.record.connection import RecordPool
from server.record.postings import (
    SINGLE_NODE_LOG,
    Account,
    RecordError,
    parse_entry_id,
    to_transfer,
)

_CHUNK = 5_000
AccountKey = tuple[str | None, str]
Connection = AsyncConnection[Any]


@dataclass(slots=True)
class RecordTotals:
    recorded: int = 0
    """Transfers in the record."""
    trimmed: int = 0
    """Entries Redis has trimmed from its log."""
    redis_tail: int = 0
    """Entries still in Redis' log."""
    lag: int = 0
    """Entries in Redis not yet in the record."""
    postings: int = 0


@dataclass(slots=True)
class CrossReport:
    ledger: Report
    record: RecordTotals = field(default_factory=RecordTotals)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.ledger.ok and not self.problems

    def to_json(self) -> dict[str, object]:
        doc = self.ledger.to_json()
        doc["ok"] = self.ok
        doc["record"] = {name: getattr(self.record, name) for name in RecordTotals.__slots__}
        doc["problems"] = [*self.ledger.problems, *self.problems]
        return doc


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


async def _tail(redis: Redis, keys: Keys) -> StreamRows:
    rows: StreamRows = []
    async for chunk in log_entries(redis, keys):
        rows.extend(chunk)
    return rows


async def _recorded_below(
    conn: Connection,
    first: tuple[int, int] | None,
    totals: RecordTotals,
    log_slot: int = SINGLE_NODE_LOG,
) -> AsyncIterator[StreamRows]:
    """The record's transfers below ``first`` (all of them if None), oldest first, shaped
    like log entries; read with a server-side cursor."""
    bound = first or (2**62, 0)
    async with conn.cursor(name="recorded_below") as cursor:
        await cursor.execute(
            "SELECT log_ms, log_seq, fields FROM transfers WHERE log_slot = %s"
            " AND (log_ms, log_seq) < (%s, %s) ORDER BY log_ms, log_seq",
            [log_slot, *bound],
        )
        while rows := await cursor.fetchmany(_CHUNK):
            totals.recorded += len(rows)
            yield [
                (f"{ms}-{seq}".encode(), {k.encode(): str(v).encode() for k, v in f.items()})
                for ms, seq, f in rows
            ]


async def _recorded_from(
    conn: Connection, first: tuple[int, int], log_slot: int = SINGLE_NODE_LOG
) -> dict[str, dict[str, Any]]:
    cursor = await conn.execute(
        "SELECT log_ms, log_seq, fields FROM transfers WHERE log_slot = %s"
        " AND (log_ms, log_seq) >= (%s, %s)",
        [log_slot, *first],
    )
    return {f"{ms}-{seq}": dict(f) for ms, seq, f in await cursor.fetchall()}


async def _redis_balances(redis: Redis, keys: Keys) -> Counter[AccountKey]:
    held: Counter[AccountKey] = Counter()
    async for key in redis.scan_iter(match=keys.account_pattern(), count=1000):
        user = keys.user_id_of_account(key.decode())
        coins, diamonds, debt = (
            int(v or 0) for v in await redis.hmget(key, ["coins", "diamonds", "debt"])
        )
        held[(user, Account.COINS.value)] = coins
        held[(user, Account.DIAMONDS.value)] = diamonds
        held[(user, Account.DEBT.value)] = -debt
    held[(None, Account.PLATFORM.value)] = int(await redis.hget(keys.platform(), "coins") or 0)
    return held


async def _record_balances(conn: Connection) -> tuple[Counter[AccountKey], int, int, int]:
    """(balance per account, postings, total of all postings, unbalanced transfers)."""
    rows = await (
        await conn.execute("SELECT user_id, account, balance, postings FROM account_balances")
    ).fetchall()
    bad = await (
        await conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM postings GROUP BY log_slot, log_ms, log_seq"
            " HAVING sum(amount) <> 0) AS unbalanced"
        )
    ).fetchone()
    balances: Counter[AccountKey] = Counter({(u, a): int(b) for u, a, b, _ in rows})
    postings = sum(int(n) for *_, n in rows)
    return balances, postings, sum(balances.values()), int(bad[0]) if bad else 0


async def _archiver_caught_up(redis: Redis, keys: Keys, wait_s: float) -> None:
    """While an archiver holds the lease, wait up to ``wait_s`` for it to record (and trim)
    everything: a reconcile right after a load would otherwise race its last batches."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and await redis.exists(keys.archiver_lease()):
        try:
            groups = await redis.xinfo_groups(keys.ledger())
        except redis_errors.ResponseError:
            return
        ours = [g for g in groups if g["name"] == GROUP.encode()]
        if not ours or int(ours[0]["pending"]) + int(ours[0].get("lag") or 0) == 0:
            await asyncio.sleep(ArchiverConfig().trim_interval_s)  # its last trim
            return
        await asyncio.sleep(0.1)


async def reconcile_across(
    redis: Redis,
    keys: Keys,
    pool: RecordPool,
    progress: Callable[[int], None] | None = None,
    *,
    archiver_wait_s: float = 10.0,
    receipt_ttl_s: int | None = None,
) -> CrossReport:
    await _archiver_caught_up(redis, keys, archiver_wait_s)
    tail = await _tail(redis, keys)
    try:
        info: dict[str, Any] = await redis.xinfo_stream(keys.ledger())
    except redis_errors.ResponseError:
        info = {}  # no log at all: nothing was ever written, or everything was lost
    # One snapshot of the record for every read below, taken after Redis' tail: an entry
    # archived meanwhile is in the tail and, consistently, not yet in this snapshot.
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return await _across(redis, keys, conn, tail, info, progress, receipt_ttl_s)


async def _across(
    redis: Redis,
    keys: Keys,
    conn: Connection,
    tail: StreamRows,
    info: dict[str, Any],
    progress: Callable[[int], None] | None,
    receipt_ttl_s: int | None,
) -> CrossReport:
    first = parse_entry_id(tail[0][0].decode()) if tail else None
    totals = RecordTotals(redis_tail=len(tail))
    problems: list[str] = []

    async def history() -> AsyncIterator[StreamRows]:
        async for rows in _recorded_below(conn, first, totals):
            yield rows
        if tail:
            yield tail

    ledger_report = await reconcile(
        redis, keys, progress, receipt_ttl_s=receipt_ttl_s, entries=history()
    )
    report = CrossReport(ledger_report, totals, problems)

    if "entries-added" in info:
        totals.trimmed = int(info["entries-added"]) - int(info["length"])
        if totals.trimmed != totals.recorded:
            problems.append(
                f"Redis trimmed {totals.trimmed} log entries and the record holds "
                f"{totals.recorded} below Redis' first entry"
            )
    elif not tail:
        totals.trimmed = totals.recorded  # Redis 6 does not count: assume all was recorded

    in_both = await _recorded_from(conn, first) if first else {}
    unarchived: Counter[AccountKey] = Counter()
    for entry_id, fields in tail:
        eid, entry = entry_id.decode(), _decoded(fields)
        if eid in in_both:
            totals.recorded += 1
            if in_both.pop(eid) != entry:
                problems.append(f"{eid}: the record and Redis hold different entries")
            continue
        totals.lag += 1
        try:
            for posting in to_transfer(eid, entry).postings:
                unarchived[(posting.user_id, posting.account.value)] += posting.amount
        except RecordError as e:
            problems.append(f"{eid}: the archiver cannot record it: {e}")
    if in_both:
        problems.append(f"the record holds {len(in_both)} entries Redis never had (first "
                        f"{sorted(in_both)[0]})")  # fmt: skip

    recorded, totals.postings, total, unbalanced = await _record_balances(conn)
    if unbalanced:
        problems.append(f"{unbalanced} recorded transfers have postings that do not sum to 0")
    if total != 0:
        problems.append(f"all postings together sum to {total}, not 0")
    held = await _redis_balances(redis, keys)
    for account in sorted(set(held) | {a for a in recorded if a[0] is not None} |
                          {(None, Account.PLATFORM.value)}, key=str):  # fmt: skip
        want = held.get(account, 0) - unarchived.get(account, 0)
        if recorded.get(account, 0) != want:
            who = f"{account[0]} {account[1]}" if account[0] else account[1]
            problems.append(
                f"record: {who} is {recorded.get(account, 0)}, Redis says {held.get(account, 0)}"
                f" of which {unarchived.get(account, 0)} not archived yet"
            )
    return report


@dataclass(slots=True)
class LogsReport:
    """``reconcile_logs``: the record against every log, per log and in total."""

    logs: int = 0
    record: RecordTotals = field(default_factory=RecordTotals)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "logs": self.logs,
            "record": {name: getattr(self.record, name) for name in RecordTotals.__slots__},
            "problems": self.problems,
        }


async def reconcile_logs(redis: Any, pool: RecordPool, logs: Sequence[LedgerLog]) -> LogsReport:
    """The checks across both stores that need no replay of balances, for any number of
    logs (cluster mode: one per slot; ``redis`` a ``RedisCluster``, each command naming one
    key): per log, the record holds exactly as many transfers below Redis' first entry as
    Redis trimmed, every entry in both is the same in both, and what is only in Redis is
    reported as lag; every recorded transfer's postings, and all together, sum to zero.

    Balances are not compared: in cluster mode they live in shards that the leg scripts
    (``docs/ledger.md``, "The two legs") write, which this does not model yet.
    """
    report = LogsReport(logs=len(logs))
    totals, problems = report.record, report.problems
    tails: list[tuple[LedgerLog, StreamRows, dict[str, Any]]] = []
    for ledger_log in logs:
        rows: StreamRows = await redis.xrange(ledger_log.key, min="-", max="+")
        try:
            info: dict[str, Any] = await redis.xinfo_stream(ledger_log.key)
        except redis_errors.ResponseError:
            info = {}
        tails.append((ledger_log, rows, info))
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for ledger_log, rows, info in tails:
            await check_one_log(conn, ledger_log, rows, info, totals, problems)
        _, totals.postings, total, unbalanced = await _record_balances(conn)
    if unbalanced:
        problems.append(f"{unbalanced} recorded transfers have postings that do not sum to 0")
    if total != 0:
        problems.append(f"all postings together sum to {total}, not 0")
    return report


async def check_one_log(
    conn: Connection,
    ledger_log: LedgerLog,
    rows: StreamRows,
    info: dict[str, Any],
    totals: RecordTotals,
    problems: list[str],
) -> list[tuple[str, dict[str, str]]]:
    """Checks one log against the record; returns its entries not archived yet (the lag)."""
    name = f"log {ledger_log.key}"
    first = parse_entry_id(rows[0][0].decode()) if rows else None
    bound = first or (2**62, 0)
    below = await (
        await conn.execute(
            "SELECT count(*) FROM transfers WHERE log_slot = %s AND (log_ms, log_seq) < (%s, %s)",
            [ledger_log.slot, *bound],
        )
    ).fetchone()
    recorded_below = int(below[0]) if below else 0
    totals.recorded += recorded_below
    totals.redis_tail += len(rows)
    if "entries-added" in info:
        trimmed = int(info["entries-added"]) - int(info["length"])
        totals.trimmed += trimmed
        if trimmed != recorded_below:
            problems.append(
                f"{name}: Redis trimmed {trimmed} entries and the record holds "
                f"{recorded_below} below Redis' first entry"
            )
    in_both = await _recorded_from(conn, first, ledger_log.slot) if first else {}
    lag: list[tuple[str, dict[str, str]]] = []
    for entry_id, fields in rows:
        eid = entry_id.decode()
        if eid not in in_both:
            totals.lag += 1
            lag.append((eid, _decoded(fields)))
            continue
        totals.recorded += 1
        if in_both.pop(eid) != _decoded(fields):
            problems.append(f"{name} {eid}: the record and Redis hold different entries")
    if in_both:
        problems.append(f"{name}: the record holds {len(in_both)} entries Redis never had")
    return lag
