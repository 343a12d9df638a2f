"""Helpers of the durable-record tests: a mixed load of transfers, and reads of the record."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from server.domain.errors import LedgerRefusal, UnavailableError
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.connection import RecordPool
from tests.integration.helpers import CREATOR, STREAM, gift

T = TypeVar("T")
GIFTS = ("rose", "rose", "rose", "heart", "doughnut", "lion")


async def retried(call: Callable[[], Awaitable[T]]) -> T:
    """Call until Redis answers: an unknown outcome is retried with the same id, which the
    scripts apply at most once (what every client of giftwire must do)."""
    while True:
        try:
            return await call()
        except (UnavailableError, RedisConnectionError):
            await asyncio.sleep(0.05)


async def mixed_transfers(
    ledger: Ledger, count: int, *, seed: int = 1, gifters: int = 20, concurrency: int = 200
) -> set[str]:
    """At least ``count`` committed transfers of every type (top-ups, gifts, chargebacks,
    cash-outs); returns their transfer ids. Gifts go out ``concurrency`` at a time, as a
    hot room sends them. Every call is retried with its id until Redis answers.
    """
    rng = random.Random(seed)
    ids: set[str] = set()
    await retried(lambda: ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="r"))
    users = [f"g{seed}-{i}" for i in range(gifters)]
    for user in users:
        top_up = functools.partial(ledger.top_up, payment_id=f"p-{user}", user_id=user)
        ids.add((await retried(functools.partial(top_up, coins=10**9))).transfer_id)
    n = 0
    while len(ids) < count:
        batch = min(concurrency, count - len(ids))
        sends = [
            retried(
                functools.partial(
                    gift,
                    ledger,
                    f"s{seed}-{n + i}",
                    sender=rng.choice(users),
                    gift_id=rng.choice(GIFTS),
                    count=rng.randint(1, 5),
                )
            )
            for i in range(batch)
        ]
        n += batch
        ids.update(r.transfer_id for r in await asyncio.gather(*sends))
        roll = rng.random()
        if roll < 0.05:
            ids |= await _charged_back_buyer(ledger, f"{seed}-{n}")
        elif roll < 0.10:
            cash_out = functools.partial(
                ledger.cash_out, client_id=f"co{seed}-{n}", creator_id=CREATOR, diamonds=1_000
            )
            with contextlib.suppress(LedgerRefusal):  # not enough diamonds yet
                ids.add((await retried(cash_out)).transfer_id)
    return ids


async def _charged_back_buyer(ledger: Ledger, tag: str) -> set[str]:
    """A buyer tops up, spends some, and charges the payment back in two partial refunds
    (coins clawed, then debt); and a refund that arrives before its payment, which the
    payment's top-up then withholds."""
    buyer = f"cb{tag}"
    top_up = functools.partial(ledger.top_up, payment_id=f"p-{buyer}", user_id=buyer, coins=500)
    sent = functools.partial(gift, ledger, f"cbg{tag}", sender=buyer, gift_id="doughnut")
    refunds = [
        functools.partial(ledger.refund, payment_id=f"p-{buyer}", user_id=buyer,
                          refund_id=f"r{i}", coins=coins)
        for i, coins in enumerate((200, 300))
    ]  # fmt: skip
    early = functools.partial(ledger.refund, payment_id=f"pe-{buyer}", user_id=buyer,
                              refund_id="r0", coins=100)  # fmt: skip
    late = functools.partial(ledger.top_up, payment_id=f"pe-{buyer}", user_id=buyer, coins=400)
    ids = {(await retried(top_up)).transfer_id, (await retried(sent)).transfer_id}
    for refund in refunds:
        ids.add((await retried(refund)).transfer_id)
    ids.add((await retried(early)).transfer_id)
    ids.add((await retried(late)).transfer_id)
    return ids


async def recorded_ids(pool: RecordPool) -> list[str]:
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT log_ms, log_seq FROM transfers")).fetchall()
    return [f"{ms}-{seq}" for ms, seq in rows]


async def unbalanced_transfers(pool: RecordPool) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM postings GROUP BY log_ms, log_seq"
                " HAVING sum(amount) <> 0) AS bad"
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


async def recorded_balances(pool: RecordPool) -> dict[tuple[str | None, str], int]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT user_id, account, balance FROM account_balances")
        ).fetchall()
    return {(user, account): int(balance) for user, account, balance in rows}


def _receipt_key(keys: Keys, fields: dict[str, str]) -> str | None:
    """The Redis key of the receipt the entry's call left (its idempotency record)."""
    kind = fields.get("type")
    if kind == "gift":
        return keys.gift_receipt(fields["from"], fields["client_id"])
    if kind == "top_up":
        return keys.payment(fields["payment"])
    if kind == "refund":
        return keys.refund(fields["payment"], fields["refund_id"])
    if kind == "cash_out":
        return keys.cashout(fields["from"], fields["client_id"])
    return None


async def explain_mismatch(
    pool: RecordPool, redis: Redis, keys: Keys, ids: set[str], recorded: list[str]
) -> str:
    """What a failed ``set(recorded) == ids`` needs: each extra (recorded, never returned)
    and missing (returned, never recorded) entry, as PostgreSQL and Redis' log hold it, the
    receipt Redis keeps for its call (which transfer id a retry is answered with), and
    every other recorded transfer of the same call (a second application)."""
    extra, missing = sorted(set(recorded) - ids), sorted(ids - set(recorded))
    lines = [f"{len(extra)} extra, {len(missing)} missing of {len(ids)} returned ids"]
    async with pool.connection() as conn:
        for label, entry_ids in (("extra", extra[:5]), ("missing", missing[:5])):
            for eid in entry_ids:
                ms, seq = (int(x) for x in eid.split("-"))
                row = await (
                    await conn.execute(
                        "SELECT fields, archived_at FROM transfers WHERE log_ms = %s"
                        " AND log_seq = %s",
                        [ms, seq],
                    )
                ).fetchone()
                in_log = await retried(functools.partial(redis.xrange, keys.ledger(), eid, eid))
                lines.append(f"{label} {eid}: record {row!r}; Redis log {in_log!r}")
                fields = row[0] if row else None
                if not fields:
                    continue
                key = _receipt_key(keys, fields)
                if key is not None:
                    held = await retried(functools.partial(redis.hgetall, key))
                    lines.append(f"  receipt {key}: {held!r}")
                same = await (
                    await conn.execute(
                        "SELECT log_ms, log_seq, fields FROM transfers WHERE type = %s"
                        " AND fields->>'from' IS NOT DISTINCT FROM %s"
                        " AND fields->>'client_id' IS NOT DISTINCT FROM %s"
                        " AND fields->>'payment' IS NOT DISTINCT FROM %s"
                        " AND fields->>'refund_id' IS NOT DISTINCT FROM %s",
                        [fields.get("type"), fields.get("from"), fields.get("client_id"),
                         fields.get("payment"), fields.get("refund_id")],
                    )
                ).fetchall()  # fmt: skip
                lines.append(f"  recorded transfers of the same call: {same!r}")
    return "\n".join(lines)


async def repeated_calls(pool: RecordPool) -> list[tuple[object, ...]]:
    """Calls (type and idempotency id) recorded more than once: a transfer applied twice."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT type, fields->>'from', fields->>'client_id', fields->>'payment',"
                " fields->>'refund_id', array_agg(log_ms || '-' || log_seq)"
                " FROM transfers GROUP BY 1, 2, 3, 4, 5 HAVING count(*) > 1"
            )
        ).fetchall()
    return [tuple(r) for r in rows]
