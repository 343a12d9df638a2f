"""ShardedPubSubBroker on a real loopback Redis Cluster: the port's promises
(``realtime/ports.py``) while slots move and primaries die."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from server.broker.cluster_rooms import ClusterRooms
from server.broker.redis_sharded import ShardedPubSubBroker
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_reads import ClusterReads
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.realtime.hub import Hub
from tests.support.cluster import RedisCluster
from tests.support.cluster_feed import GiftLoad, open_stream, publish_gift
from tests.support.listening import Listener, listening
from tests.unit.fakes import FakeSink, viewer


async def make_rooms(cluster: RedisCluster, keys: Keys) -> ClusterRooms:
    runner = ClusterScriptRunner(cluster.startup_urls, timeout_s=2.0)
    await runner.prepare()
    reads = ClusterReads(runner, ClusterKeys(keys.prefix), Limits())
    return ClusterRooms(reads, timeout_s=2.0)


@pytest.fixture
async def rooms(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterRooms]:
    rooms = await make_rooms(redis_cluster, keys)
    yield rooms
    await rooms.runner.aclose()


@pytest.fixture
async def broker(rooms: ClusterRooms) -> AsyncIterator[tuple[ShardedPubSubBroker, Listener]]:
    broker = ShardedPubSubBroker(rooms, presence_ttl_s=5, timeout_s=2)
    async with listening(broker) as listener:
        yield broker, listener


async def polled(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.05)


def creators_on_every_primary(cluster: RedisCluster, keys: Keys, per_node: int) -> list[str]:
    """Creator ids whose slots cover every primary, ``per_node`` of each."""
    ck, found = ClusterKeys(keys.prefix), {p.port: [] for p in cluster.primaries()}
    for n in itertools.count():
        creator = f"creator{n}"
        port = cluster.primary_for_slot(slot_of(ck.account(creator))).port
        if len(found[port]) < per_node:
            found[port].append(creator)
        if all(len(v) == per_node for v in found.values()):
            return [c for v in found.values() for c in v]
    raise AssertionError


async def test_events_arrive_in_order_on_one_link_per_primary_and_stop_after_unsubscribe(
    redis_cluster: RedisCluster,
    keys: Keys,
    rooms: ClusterRooms,
    broker: tuple[ShardedPubSubBroker, Listener],
) -> None:
    b, listener = broker
    creators = creators_on_every_primary(redis_cluster, keys, per_node=4)
    streams = [f"room{i}" for i in range(len(creators))]
    for stream, creator in zip(streams, creators, strict=True):
        await open_stream(rooms, stream, creator)
        await b.subscribe(stream)
    # 12 rooms, 3 primaries: one pub/sub connection per primary, not one per room.
    assert len(b._links) == 3 and b.connected
    for _ in range(5):
        for stream, creator in zip(streams, creators, strict=True):
            await publish_gift(rooms, stream, creator)
    await listener.wait(lambda: all(len(listener.seqs(s)) == 5 for s in streams))
    assert all(listener.seqs(s) == [1, 2, 3, 4, 5] for s in streams)

    await b.unsubscribe(streams[0])
    await publish_gift(rooms, streams[0], creators[0])
    await publish_gift(rooms, streams[1], creators[1])
    await listener.wait(lambda: len(listener.seqs(streams[1])) == 6)
    assert listener.seqs(streams[0]) == [1, 2, 3, 4, 5] and listener.lost == []


async def test_a_snapshot_reads_the_stream_and_counts_presence(
    rooms: ClusterRooms, broker: tuple[ShardedPubSubBroker, Listener]
) -> None:
    b, _ = broker
    await open_stream(rooms, "snap", "snapper", epoch="e1")
    await publish_gift(rooms, "snap", "snapper")
    snapshot = await b.snapshot("snap", viewers_here=7)
    assert snapshot is not None
    assert (snapshot.position.seq, snapshot.position.epoch) == (1, "e1")
    assert (snapshot.creator_id, snapshot.gifts, snapshot.viewers) == ("snapper", 1, 7)
    assert await b.viewers("snap") == 7
    assert [e["seq"] for e in map(orjson.loads, await b.feed("snap", 0, 10))] == [1]
    assert await b.snapshot("nobody") is None
    position = await b.bump_epoch("snap", "e1", 1)
    assert position.seq == 1 and position.epoch != "e1"


async def test_a_room_follows_its_slot_to_another_primary(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    """A slot migrated (keys and all) while gifts go on: the old owner drops the shard
    subscription (``sunsubscribe``), the broker subscribes on the new owner and reports the
    gap, and the feed holds what was published in between. On a cluster of its own: a
    migration that failed halfway on a loaded machine would leave the shared one's slot
    half-moved for every later test."""
    rooms = await make_rooms(own_cluster, keys)
    b = ShardedPubSubBroker(rooms, presence_ttl_s=5, timeout_s=2)
    try:
        async with listening(b) as listener:
            await _follows_its_slot(own_cluster, rooms, b, listener)
    finally:
        await rooms.runner.aclose()


async def _follows_its_slot(
    redis_cluster: RedisCluster, rooms: ClusterRooms, b: ShardedPubSubBroker, listener: Listener
) -> None:
    await open_stream(rooms, "mover", "moving_creator")
    await b.subscribe("mover")
    slot = slot_of(rooms.keys.room_channel("moving_creator", "mover"))
    source = redis_cluster.primary_for_slot(slot)
    target = next(n for n in redis_cluster.primaries() if n.port != source.port)
    for _ in range(3):
        await publish_gift(rooms, "mover", "moving_creator")
    await listener.wait(lambda: len(listener.seqs("mover")) == 3)

    await asyncio.to_thread(redis_cluster.move_slot, slot, target.port)
    await listener.wait(lambda: "mover" in listener.lost)
    assert b._home[rooms.keys.room_channel("moving_creator", "mover").encode()].node[1] == (
        target.port
    )
    for _ in range(3):
        await publish_gift(rooms, "mover", "moving_creator")
    await listener.wait(lambda: len(listener.seqs("mover")) == 6)
    assert listener.seqs("mover") == [1, 2, 3, 4, 5, 6] and b.connected


async def test_stream_changes_published_classically_reach_the_room(
    rooms: ClusterRooms, broker: tuple[ShardedPubSubBroker, Listener]
) -> None:
    b, listener = broker
    await open_stream(rooms, "classic", "classic_creator")
    await b.subscribe("classic")
    k = rooms.keys
    reply = await rooms.runner.run(
        "end_stream",
        [k.stream("classic_creator", "classic"), k.room_channel("classic_creator", "classic")],
        ["classic", "classic_creator", "0"],
        order_key="classic",
    )
    assert reply[0] == b"ok"
    await listener.wait(lambda: any(e["type"] == "stream" for _, e in listener.events))
    assert [e["state"] for _, e in listener.events] == ["ended"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_viewers_see_every_seq_once_in_order_across_a_primary_lost_under_load(
    own_cluster: RedisCluster, keys: Keys, fault: str
) -> None:
    """The primary that owns the room's slot is lost while gifts are published: killed
    (kill -9: the link breaks at once) or frozen (SIGSTOP, a partition's look from here:
    the link stays open and silent, until the slot-map audit finds the promoted replica).
    The broker moves the room to the replica and the hub repairs the gap from the feed, so
    each viewer holds exactly the feed's sequence."""
    rooms = await make_rooms(own_cluster, keys)
    broker = ShardedPubSubBroker(rooms, presence_ttl_s=5, timeout_s=1)
    hub = Hub(broker, load_catalog(), Limits(), batch_ms=20, hot_events_per_s=10_000,
              stats_interval_s=0.5)  # fmt: skip
    await hub.start()
    await open_stream(rooms, "doomed", "doomed_creator")
    sinks: list[FakeSink] = []
    for i in range(3):
        connection, sink = viewer(f"v{i}")
        sinks.append(sink)
        await hub.join(connection, "doomed", lambda snapshot: {"type": "welcome"})
    frozen: subprocess.Popen[bytes] | None = None
    load = GiftLoad(rooms, "doomed", "doomed_creator")
    try:
        await load.at_least(20)
        slot = slot_of(rooms.keys.room_channel("doomed_creator", "doomed"))
        dead = own_cluster.primary_for_slot(slot).port
        if fault == "kill":
            own_cluster.kill(dead)
        else:
            frozen = own_cluster.node(dead).process
            assert frozen is not None
            frozen.send_signal(signal.SIGSTOP)
        await asyncio.to_thread(own_cluster.wait_promoted, dead)
        await load.at_least(len(load.published) + 20)
    finally:
        await load.stop()
        if frozen is not None:
            frozen.send_signal(signal.SIGCONT)
    last = load.published[-1]
    await polled(lambda: all(sink.seqs()[-1:] == [last] for sink in sinks))
    feed = [orjson.loads(raw)["seq"] for raw in await broker.feed("doomed", 0, 10_000)]
    assert feed == list(range(1, last + 1))
    for sink in sinks:
        assert sink.seqs() == feed
    assert broker.repairs >= 1 and broker.connected
    await hub.stop()
    await rooms.runner.aclose()
