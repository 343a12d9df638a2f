"""RedisPubSubBroker against a real Redis: the port's promises (``realtime/ports.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from server.broker.redis_pubsub import RedisPubSubBroker
from server.domain.catalog import load_catalog
from server.domain.levels import TopGifter
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import CREATOR, STREAM, gift
from tests.support.listening import Listener, listening


@pytest.fixture
async def broker(ledger: Ledger) -> AsyncIterator[tuple[RedisPubSubBroker, Listener]]:
    broker = RedisPubSubBroker(ledger, presence_ttl_s=5, timeout_s=2)
    async with listening(broker) as listener:
        yield broker, listener


async def _live(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch="ep1")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=1_000)


async def test_events_after_subscribe_arrive_in_order_and_stop_after_unsubscribe(
    ledger: Ledger, broker: tuple[RedisPubSubBroker, Listener]
) -> None:
    b, listener = broker
    await _live(ledger)
    await b.subscribe(STREAM)
    for i in range(20):
        await gift(ledger, f"g{i}")
    await listener.wait(lambda: len(listener.seqs()) == 20)
    assert listener.seqs() == list(range(1, 21)) and b.connected
    await b.unsubscribe(STREAM)
    await gift(ledger, "after")
    await asyncio.sleep(0.3)
    assert len(listener.seqs()) == 20


async def test_a_snapshot_is_typed_and_counts_every_process(
    ledger: Ledger, broker: tuple[RedisPubSubBroker, Listener]
) -> None:
    b, _ = broker
    await _live(ledger)
    await gift(ledger, "g1", count=3)
    other = RedisPubSubBroker(ledger, presence_ttl_s=5, timeout_s=2)
    await other.snapshot(STREAM, viewers_here=4)
    snapshot = await b.snapshot(STREAM, viewers_here=2)
    assert snapshot is not None
    assert (snapshot.position.seq, snapshot.position.epoch) == (1, "ep1")
    assert (snapshot.creator_id, snapshot.state, snapshot.gifts) == (CREATOR, "live", 3)
    assert snapshot.viewers == 6 and await b.viewers(STREAM) == 6
    assert snapshot.top == [TopGifter("alice", "Alice", 3, 1)]
    assert await b.snapshot("nope") is None


async def test_a_dead_process_stops_counting_once_its_presence_expires(
    ledger: Ledger, redis: Redis, keys: Keys, broker: tuple[RedisPubSubBroker, Listener]
) -> None:
    b, _ = broker
    await _live(ledger)
    await redis.hset(keys.viewers(STREAM), "dead", "7:1")  # expired long ago
    await redis.hset(keys.viewers(STREAM), "garbage", "x")
    snapshot = await b.snapshot(STREAM, viewers_here=1)
    assert snapshot is not None and snapshot.viewers == 1
    assert set(await redis.hkeys(keys.viewers(STREAM))) == {b.process_id.encode()}


async def test_a_subscription_dropped_while_wanted_is_renewed_and_reported(
    ledger: Ledger, broker: tuple[RedisPubSubBroker, Listener]
) -> None:
    b, listener = broker
    await _live(ledger)
    await b.subscribe(STREAM)
    # The room reopened while its old UNSUBSCRIBE was on the wire: Redis confirms it for a
    # room the broker still wants.
    assert b._pubsub is not None
    await b._send_unsubscribe(b._pubsub, b._channel(STREAM))
    await listener.wait(lambda: STREAM in listener.lost)
    await gift(ledger, "g1")
    await listener.wait(lambda: listener.seqs() == [1])


async def test_after_an_outage_it_subscribes_again_and_reports_the_loss(
    own_redis: RedisProcess, keys: Keys
) -> None:
    redis = Redis.from_url(own_redis.url)
    ledger = Ledger(redis, keys=keys)
    await ledger.prepare(load_catalog())
    b = RedisPubSubBroker(ledger, presence_ttl_s=5, timeout_s=2)
    listener = Listener()
    await b.start(listener)
    try:
        await _live(ledger)
        await b.subscribe(STREAM)
        own_redis.stop()
        await asyncio.sleep(0.5)
        own_redis.start()
        await listener.wait(lambda: None in listener.lost, timeout_s=20)
        assert b.connected
        for attempt in range(20):
            try:
                await gift(ledger, "g1")
                break
            except Exception:
                await asyncio.sleep(0.1 * attempt)
        await listener.wait(lambda: listener.seqs() == [1])
    finally:
        await b.stop()
        await redis.aclose()


async def test_a_refused_presence_write_still_gives_a_snapshot(
    starved_redis: RedisProcess, keys: Keys
) -> None:
    redis = Redis.from_url(starved_redis.url)
    ledger = Ledger(redis, keys=keys)
    await ledger.prepare(load_catalog())
    try:
        await _live(ledger)
        b = RedisPubSubBroker(ledger, presence_ttl_s=5, timeout_s=2)
        filler = b"x" * 65536
        with pytest.raises(ResponseError):  # out of memory: writes are refused from here
            for i in range(1000):
                await redis.set(f"{keys.prefix}fill:{i}", filler)
        snapshot = await b.snapshot(STREAM, viewers_here=3)
        assert snapshot is not None and snapshot.position.epoch == "ep1"
    finally:
        await redis.aclose()
