"""Reconcile a cluster's record in PostgreSQL against its ledger in Redis, account by account.

``server/ledger/cluster_reconcile.py`` replays every slot's log (the record's part of it
first, for what the archiver trimmed) against the accounts in Redis. This adds what only
the two stores together can check, per slot's log and per account:

* per log (``reconcile.check_one_log``): the record holds exactly as many of its transfers below
  Redis' first entry as Redis trimmed, every entry in both is the same entry in both, and
  what is only in Redis is the *lag*, reported per slot;
* every user's coins, diamonds and debt in the record (``account_balances``) equal Redis'
  less the postings of the lag; the platform's equals the platform shards' sum less the
  lag's;
* ``transit`` equals the legs in flight: coins debited and not yet credited, plus guests'
  parts of credits their slots have not applied, less coins a clawback claim gave back to
  a buyer and the creator's slot has not taken yet (the cluster reconcile's pending
  transfers, guest-credits and clawbacks), less the lag's transit postings;
* every recorded transfer's postings sum to zero (each one that does not is a line of its
  own), and so do all postings together.

Held diamonds (the payout hold) are not in the record, which posts diamonds whole: the
cluster reconcile checks the hold against the day buckets in Redis. Each mismatch is a line
of its own. It reads both stores and writes neither; run it on a quiet ledger, after the
cluster reconcile (whose pending totals it takes). An entry still in Redis that the
archiver's group has acknowledged must be in the record (it acknowledges after the
commit): one that is not is a problem, not lag.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors

from server.ledger.cluster_keys import SLOTS
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import ClusterReport
from server.ledger.runner import StreamRows
from server.record.archiver import GROUP
from server.record.cluster_logs import cluster_log
from server.record.connection import RecordPool
from server.record.postings import Account, RecordError, parse_entry_id, to_transfer
from server.record.reconcile import AccountKey, RecordTotals, check_one_log

UNBALANCED_LINES_MAX = 50
"""Unbalanced transfers listed one per line; more are counted in one line."""

_PAGE = 10_000


@dataclass(slots=True)
class ClusterRecordReport:
    record: RecordTotals = field(default_factory=RecordTotals)
    lag_per_slot: dict[int, int] = field(default_factory=dict)
    """Entries of each slot's log not in the record yet (slots with none left out)."""
    transit: int = 0
    """The record's transit balance."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "record": {name: getattr(self.record, name) for name in RecordTotals.__slots__},
            "lag_per_slot": {str(slot): n for slot, n in sorted(self.lag_per_slot.items())},
            "transit": self.transit,
            "problems": self.problems,
        }


EntryPosition = tuple[int, int]
Tail = tuple[StreamRows, dict[str, Any], EntryPosition]


async def _tails(ledger: ClusterLedger) -> dict[int, Tail]:
    """Every slot's log that has entries: its entries, ``XINFO STREAM`` and the last entry
    the archiver acknowledged."""
    found: dict[int, Tail] = {}
    keys = ledger.keys
    lengths = await ledger.shards.lengths(keys.ledger_shards())
    for slot in range(SLOTS):
        key = keys.ledger_shard(slot)
        if key not in lengths:
            continue
        rows: StreamRows = []
        start = "-"
        while True:
            page = await ledger.command(key, "XRANGE", start, "+", "COUNT", _PAGE)
            rows.extend(page)
            if len(page) < _PAGE:
                break
            start = "(" + rows[-1][0].decode()
        found[slot] = (rows, await _info(ledger, slot), await _acknowledged(ledger, slot, rows))
    return found


async def _info(ledger: ClusterLedger, slot: int) -> dict[str, Any]:
    """``XINFO STREAM`` of the slot's log ({} if there is none): how many it trimmed."""
    client = ledger.runner.client(ledger.runner.primary_of(slot))
    try:
        info: dict[str, Any] = await client.xinfo_stream(ledger.keys.ledger_shard(slot))
    except redis_errors.ResponseError:
        return {}
    return info


async def _redis_accounts(ledger: ClusterLedger, users: set[str]) -> Counter[AccountKey]:
    """Every user's coins, diamonds and minus debt, and the platform shards' sum: one
    ``HGET`` per account and field, pipelined per primary."""
    held: Counter[AccountKey] = Counter()
    keys = {ledger.keys.account(user): user for user in users}
    for name, sign in (("coins", 1), ("diamonds", 1), ("debt", -1)):
        values = await ledger.shards.field_of_each(list(keys), name)
        for key, user in keys.items():
            held[(user, name)] = sign * int(values.get(key) or 0)
    platform = await ledger.shards.sum_field(ledger.keys.platform_shards(), "coins")
    held[(None, Account.PLATFORM.value)] = platform
    return held


async def _acknowledged(ledger: ClusterLedger, slot: int, rows: StreamRows) -> EntryPosition:
    """The last entry of ``rows`` the archiver's group acknowledged (delivered, and older
    than any pending): each one up to it is committed in the record. (0, 0) if none."""
    client = ledger.runner.client(ledger.runner.primary_of(slot))
    key = ledger.keys.ledger_shard(slot)
    try:
        groups = await client.xinfo_groups(key)
    except redis_errors.ResponseError:
        return (0, 0)
    ours = next((g for g in groups if g["name"] == GROUP.encode()), None)
    if ours is None:
        return (0, 0)
    delivered = parse_entry_id(ours["last-delivered-id"].decode())
    if int(ours["pending"]):
        pending = await client.xpending(key, GROUP)
        if pending["pending"]:
            # From the oldest pending entry on, an entry may not be committed yet.
            first = parse_entry_id(pending["min"].decode())
            older = (parse_entry_id(entry_id.decode()) for entry_id, _ in rows)
            delivered = max((p for p in older if p < first), default=(0, 0))
    return delivered


async def reconcile_cluster_record(
    ledger: ClusterLedger, pool: RecordPool, cluster: ClusterReport
) -> ClusterRecordReport:
    """The record against the cluster: see the module's docstring. ``cluster`` is the
    cluster reconcile's report of the same quiet ledger (its pending legs)."""
    report = ClusterRecordReport()
    problems, totals = report.problems, report.record
    tails = await _tails(ledger)
    unarchived: Counter[AccountKey] = Counter()
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # Logs the record holds that Redis has trimmed to nothing are checked too.
        cursor = await conn.execute("SELECT DISTINCT log_slot FROM transfers WHERE log_slot >= 0")
        slots = sorted(set(tails) | {int(slot) for (slot,) in await cursor.fetchall()})
        for slot in slots:
            # A log trimmed to nothing has no entries, but still counts what it trimmed.
            if slot in tails:
                rows, info, acked = tails[slot]
            else:
                rows, info, acked = [], await _info(ledger, slot), (0, 0)
            before = totals.lag
            lag = await check_one_log(
                conn, cluster_log(ledger.keys, slot), rows, info, totals, problems
            )
            if totals.lag > before:
                report.lag_per_slot[slot] = totals.lag - before
            lost = [eid for eid, _ in lag if parse_entry_id(eid) <= acked]
            if lost:
                problems.append(
                    f"slot {slot}: {len(lost)} entries the archiver acknowledged are not in the"
                    f" record (first {lost[0]})"
                )
            for entry_id, fields in lag:
                try:
                    for posting in to_transfer(entry_id, fields, slot).postings:
                        unarchived[(posting.user_id, posting.account.value)] += posting.amount
                except RecordError as e:
                    problems.append(f"slot {slot} {entry_id}: the archiver cannot record it: {e}")
        recorded, totals.postings = await _balances(conn)
        await _unbalanced(conn, problems)
    if (total := sum(recorded.values())) != 0:
        problems.append(f"all postings together sum to {total}, not 0")

    users = {u for u, _ in recorded if u is not None} | {u for u, _ in unarchived if u}
    held = await _redis_accounts(ledger, users)
    for account in sorted(set(held), key=str):
        want = held[account] - unarchived.get(account, 0)
        if recorded.get(account, 0) != want:
            who = f"{account[0]} {account[1]}" if account[0] else account[1]
            problems.append(
                f"record: {who} is {recorded.get(account, 0)}, Redis says {held[account]}"
                f" of which {unarchived.get(account, 0)} not archived yet"
            )
    transit_key: AccountKey = (None, Account.TRANSIT.value)
    # Debits not credited, and guests' parts of credits not applied in their slots, are in
    # transit; the coins of claimed clawbacks not applied are owed to it.
    in_flight = (
        cluster.totals.get("coins_pending", 0)
        + cluster.totals.get("coins_to_guests_pending", 0)
        - cluster.totals.get("coins_clawed_back_pending", 0)
    )
    report.transit = recorded.get(transit_key, 0)
    if report.transit != in_flight - unarchived.get(transit_key, 0):
        problems.append(
            f"record: transit is {report.transit}, the legs in flight are {in_flight} coins"
            f" of which {unarchived.get(transit_key, 0)} not archived yet"
        )
    return report


async def _balances(conn: Any) -> tuple[Counter[AccountKey], int]:
    rows = await (
        await conn.execute("SELECT user_id, account, balance, postings FROM account_balances")
    ).fetchall()
    balances: Counter[AccountKey] = Counter({(u, a): int(b) for u, a, b, _ in rows})
    return balances, sum(int(n) for *_, n in rows)


async def _unbalanced(conn: Any, problems: list[str]) -> None:
    """One line per recorded transfer whose postings do not sum to zero."""
    cursor = await conn.execute(
        "SELECT log_slot, log_ms, log_seq, sum(amount) FROM postings"
        " GROUP BY log_slot, log_ms, log_seq HAVING sum(amount) <> 0"
        " ORDER BY log_slot, log_ms, log_seq LIMIT %s",
        [UNBALANCED_LINES_MAX + 1],
    )
    rows = await cursor.fetchall()
    for slot, ms, seq, total in rows[:UNBALANCED_LINES_MAX]:
        problems.append(f"record: transfer {slot}/{ms}-{seq} has postings summing to {total}")
    if len(rows) > UNBALANCED_LINES_MAX:
        problems.append(f"record: more than {UNBALANCED_LINES_MAX} transfers are unbalanced")
