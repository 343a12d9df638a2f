"""Helpers shared by the integration tests."""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.ledger.reconcile import reconcile

STREAM = "live1"
CREATOR = "creator1"


async def snapshot(redis: Redis, keys: Keys) -> dict[bytes, object]:
    """Every key of this test's prefix with its type and full value.

    Comparing two snapshots proves that a refused or failed script wrote nothing.
    """
    out: dict[bytes, object] = {}
    async for key in redis.scan_iter(match=f"{keys.prefix}*"):
        kind = cast(bytes, await redis.type(key))
        value: object
        if kind == b"hash":
            value = await redis.hgetall(key)
        elif kind == b"string":
            value = await redis.get(key)
        elif kind == b"zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            value = await redis.xrange(key)
        elif kind == b"list":
            value = await redis.lrange(key, 0, -1)
        elif kind == b"set":
            value = sorted(await redis.smembers(key))
        else:
            raise AssertionError(f"snapshot cannot read {key!r} of type {kind!r}")
        out[key] = (kind, value)
    return out


async def assert_books_reconcile(ledger: Ledger) -> None:
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems


async def make_ledger(redis: Redis, keys: Keys, limits: Limits | None = None) -> Ledger:
    """A ledger with its scripts loaded and the default catalog published."""
    ledger = Ledger(redis, keys=keys, limits=limits or Limits(payout_hold_days=0))
    await ledger.prepare(load_catalog())
    return ledger


async def gift(
    ledger: Ledger,
    client_id: str,
    *,
    sender: str = "alice",
    gift_id: str = "rose",
    count: int = 1,
    stream: str = STREAM,
    creator: str = CREATOR,
) -> GiftReceipt:
    """Send a gift with the display name derived from the sender."""
    return await ledger.send_gift(
        client_id=client_id,
        sender_id=sender,
        sender_name=sender.title(),
        stream_id=stream,
        creator_id=creator,
        gift_id=gift_id,
        count=count,
    )
