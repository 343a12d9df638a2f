"""credit_gifts.lua on its own: a batch, each transfer once, refusals that write nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import AMOUNT_MAX
from server.ledger.cluster_credits import CreditBatcher, Transfer
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.runner import ScriptRunner
from server.ledger.scripts import ScriptName
from tests.cluster.legs import GENEROUS, live_stream, open_ledger, uid
from tests.support.cluster import RedisCluster


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


def transfer(
    creator: str, stream: str, *, coins: int = 5, debit_ms: int | None = None, sender: str = ""
) -> Transfer:
    sender = sender or uid("sender")
    client_id = uid("g")
    return Transfer(
        transfer_id=f"{sender}|{client_id}|{int(time.time() * 1000)}-0",
        client_id=client_id,
        sender_id=sender,
        sender_name=sender,
        creator_id=creator,
        stream_id=stream,
        gift_id="finger_heart",
        count=coins // 5,
        coins=coins,
        price=5,
        catalog_version=1,
        share_bps=5000,
        debit_ms=int(time.time() * 1000) if debit_ms is None else debit_ms,
    )


async def _state(ledger: ClusterLedger, creator: str, stream: str) -> tuple[object, ...]:
    k = ledger.keys
    return (
        await ledger.command(k.account(creator), "HGETALL"),
        await ledger.command(k.stream(creator, stream), "HGETALL"),
        await ledger.command(k.feed(creator, stream), "XLEN"),
        await ledger.command(k.ledger_shard(slot_of(k.account(creator))), "XLEN"),
    )


async def test_a_batch_applies_each_transfer_once_in_order(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    batch = [transfer(creator, stream) for _ in range(5)]
    results = await ledger.credits.call(creator, stream, [*batch, batch[1]])
    assert [r.status for r in results] == ["ok"] * 6  # the repeat answers as its first
    assert [r.seq for r in results] == [1, 2, 3, 4, 5, 2]
    assert [r.diamonds for r in results[:5]] == [2, 3, 2, 3, 2]  # halves carried
    again = await ledger.credits.call(creator, stream, batch[::-1])
    assert [r.status for r in again] == ["replay"] * 5
    assert [r.seq for r in again] == [5, 4, 3, 2, 1]
    assert (await ledger.balance(creator)).diamonds == 12


async def test_an_expired_transfer_is_left_to_an_operator(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    too_old = int(time.time() * 1000) - ledger.limits.receipt_ttl_s * 1000
    before = await _state(ledger, creator, stream)
    [result] = await ledger.credits.call(
        creator, stream, [transfer(creator, stream, debit_ms=too_old)]
    )
    assert (result.status, result.code) == ("refused", "transfer_expired")
    assert await _state(ledger, creator, stream) == before


async def test_a_credit_past_the_largest_balance_is_refused_alone(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    await ledger.command(ledger.keys.account(creator), "HSET", "diamonds", AMOUNT_MAX - 2)
    small, big = transfer(creator, stream, coins=5), transfer(creator, stream, coins=5 * 5)
    results = await ledger.credits.call(creator, stream, [big, small])
    assert [(r.status, r.code) for r in results] == [("refused", "balance_limit"), ("ok", "")]
    assert (await ledger.balance(creator)).diamonds == AMOUNT_MAX


async def test_malformed_calls_and_transfers_write_nothing(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    before = await _state(ledger, creator, stream)
    with pytest.raises(LedgerRefusal) as unknown:
        await ledger.credits.call(creator, "nostream", [transfer(creator, "nostream")])
    assert unknown.value.code is ErrorCode.UNKNOWN_STREAM
    forged = transfer(creator, stream)
    wrong_coins = Transfer(**{**_fields(forged), "coins": 6})
    self_gift = transfer(creator, stream, sender=creator)
    results = await ledger.credits.call(creator, stream, [wrong_coins, self_gift])
    assert [r.code for r in results] == ["invalid_request"] * 2
    assert await _state(ledger, creator, stream) == before


async def test_a_failure_partway_writes_nothing(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    first, second = transfer(creator, stream), transfer(creator, stream)
    # The second transfer's combo counter is corrupt: the script raises in its first pass.
    combo = ledger.keys.combo(creator, stream, second.sender_id, second.gift_id)
    await ledger.command(combo, "SET", "1e3")
    before = await _state(ledger, creator, stream)
    with pytest.raises(InvariantError):
        await ledger.credits.call(creator, stream, [first, second])
    assert await _state(ledger, creator, stream) == before
    marker = ledger.keys.credit_receipt(creator, first.transfer_id)
    assert await ledger.command(marker, "EXISTS") == 0


def _fields(t: Transfer) -> dict[str, object]:
    return {name: getattr(t, name) for name in Transfer.__slots__}


async def test_both_legs_run_on_a_single_redis_too(redis_server: RedisProcess, keys: Keys) -> None:
    """The scripts need one slot per call, not a cluster: on one Redis they run as they are."""
    redis = Redis.from_url(redis_server.url)
    runner = ScriptRunner(redis, timeout_s=5.0)
    await runner.prepare()
    k = ClusterKeys(keys.prefix)
    try:
        creator, sender, stream = uid("c"), uid("s"), uid("st")
        await redis.hset(k.account(sender), "coins", 100)
        prices = {**load_catalog().prices(), "@version": 1}
        await redis.hset(k.catalog_shard(slot_of(k.account(sender))), mapping=prices)
        await runner.run(
            ScriptName.START_STREAM,
            [k.stream(creator, stream), k.room_channel(creator, stream), k.feed(creator, stream),
             k.leaderboard(creator, stream), k.creator_streams(creator)],
            [stream, creator, "t", 100, creator, "e1"],
        )  # fmt: skip
        body, _ = unpack(await runner.run(ScriptName.DEBIT_GIFT, k.debit_keys(sender, "g1"), [
            "g1", sender, creator, stream, "cap", 1, sender, 5000, 100, 100, 0, 3600,
            AMOUNT_MAX, 10**11, 0, 1000, "live", 0, 7, 86400, 1024, "", ""]))  # fmt: skip
        debit = orjson.loads(body)
        assert debit["balance"] == 1
        batcher = CreditBatcher(runner, k, GENEROUS)
        [result] = await batcher.call(creator, stream, [Transfer.from_receipt(debit, sender)])
        assert (result.status, result.seq, result.diamonds, result.platform_coins) == (
            "ok",
            1,
            49,
            50,
        )
        assert int(await redis.hget(k.account(creator), "diamonds") or 0) == 49
    finally:
        await redis.aclose()
