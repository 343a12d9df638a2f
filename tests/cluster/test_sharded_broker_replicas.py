"""ShardedPubSubBroker with ``GIFTWIRE_CLUSTER_SUBSCRIBE=replica`` on a real loopback Redis
Cluster: rooms subscribed on a replica of their shard (checked on the nodes themselves,
with ``CLIENT LIST``), and followed when the replica dies, its primary dies, or it leaves
the shard."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from server.broker.cluster_rooms import ClusterRooms
from server.broker.redis_sharded import ShardedPubSubBroker
from server.broker.shard_link import LINK_NAME_PREFIX
from server.broker.shard_nodes import SubscribeRole
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.cluster_keys import slot_of
from server.ledger.keys import Keys
from server.realtime.hub import Hub
from tests.cluster.test_sharded_broker import creators_on_every_primary, make_rooms, polled
from tests.support.cluster import RedisCluster
from tests.support.cluster_feed import GiftLoad, open_stream, publish_gift
from tests.support.listening import listening
from tests.unit.fakes import FakeSink, viewer


def replica_broker(
    rooms: ClusterRooms, process_id: str | None = None, timeout_s: float = 2
) -> ShardedPubSubBroker:
    return ShardedPubSubBroker(
        rooms,
        presence_ttl_s=5,
        timeout_s=timeout_s,
        role=SubscribeRole.REPLICA,
        process_id=process_id,
        replica_hold_s=1.0,
    )


@pytest.fixture
async def rooms(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterRooms]:
    rooms = await make_rooms(redis_cluster, keys)
    yield rooms
    await rooms.runner.aclose()


def replica_of_slot(cluster: RedisCluster, port: int, slot: int) -> bool:
    """``port`` is a replica (not the primary) of the primary that serves ``slot``."""
    primary = cluster.primary_for_slot(slot)
    return any(n.port == port and n.primary_id == primary.node_id for n in cluster.topology())


def home_port(broker: ShardedPubSubBroker, rooms: ClusterRooms, stream: str, creator: str) -> int:
    link = broker._home.get(rooms.keys.room_channel(creator, stream).encode())
    return -1 if link is None else link.node[1]


async def on_replicas(
    cluster: RedisCluster,
    broker: ShardedPubSubBroker,
    rooms: ClusterRooms,
    streams: list[tuple[str, str]],
) -> None:
    """Until every room is subscribed on a replica of its slot (the map lists a replica
    once the cluster gossiped its first replicated write: a room may start on the primary
    and be moved by the audit)."""

    def placed() -> bool:
        for stream, creator in streams:
            slot = slot_of(rooms.keys.room_channel(creator, stream))
            if not replica_of_slot(cluster, home_port(broker, rooms, stream, creator), slot):
                return False
        return broker.connected

    await polled(placed)


async def test_events_arrive_in_order_on_a_replica_of_each_shard(
    redis_cluster: RedisCluster, keys: Keys, rooms: ClusterRooms
) -> None:
    creators = creators_on_every_primary(redis_cluster, keys, per_node=1)
    streams = [(f"rep{i}", creator) for i, creator in enumerate(creators)]
    for stream, creator in streams:
        await open_stream(rooms, stream, creator)
    first, second = replica_broker(rooms, "procA"), replica_broker(rooms, "procB")
    async with listening(first) as listener, listening(second) as other:
        for stream, _ in streams:
            await first.subscribe(stream)
            await second.subscribe(stream)
        await on_replicas(redis_cluster, first, rooms, streams)
        await on_replicas(redis_cluster, second, rooms, streams)
        # On the nodes: one shard channel on each shard's replica, none on any primary.
        primaries = {p.port for p in redis_cluster.primaries()}

        def held_on_replicas() -> bool:
            held = redis_cluster.shard_channels(f"{LINK_NAME_PREFIX}{first.process_id}")
            return sorted(held.values()) == [1, 1, 1] and not primaries & set(held)

        await polled(held_on_replicas)
        for _ in range(5):
            for stream, creator in streams:
                await publish_gift(rooms, stream, creator)
        stream, creator = streams[0]
        k = rooms.keys
        reply = await rooms.runner.run(
            "end_stream",
            [k.stream(creator, stream), k.room_channel(creator, stream)],
            [stream, creator, "0"],
            order_key=stream,
        )
        assert reply[0] == b"ok"
        for got in (listener, other):
            await got.wait(lambda g=got: all(len(g.seqs(s)) >= 5 for s, _ in streams))  # type: ignore[misc]
            await got.wait(lambda g=got: any(e["type"] == "stream" for _, e in g.events))  # type: ignore[misc]
            assert all(got.seqs(s) == [1, 2, 3, 4, 5] for s, _ in streams)
            # The classic PUBLISH of the state change comes after the room's gifts.
            kinds = [e["type"] for s, e in got.events if s == stream]
            assert kinds == ["gift"] * 5 + ["stream"], kinds


async def fan_out_under_load(
    cluster: RedisCluster,
    rooms: ClusterRooms,
    broker: ShardedPubSubBroker,
    stream: str,
    creator: str,
    fault: Callable[[], None],
    then: Callable[[], bool],
) -> list[FakeSink]:
    """Three viewers of one room on a hub fed by ``broker``; gifts published all along:
    20, then ``fault()`` (in a thread), then until ``then()`` holds, then 20 more; returns
    the sinks once each holds the last seq."""
    hub = Hub(broker, load_catalog(), Limits(), batch_ms=20, hot_events_per_s=10_000,
              stats_interval_s=0.5)  # fmt: skip
    await hub.start()
    sinks: list[FakeSink] = []
    for i in range(3):
        connection, sink = viewer(f"v{i}")
        sinks.append(sink)
        await hub.join(connection, stream, lambda snapshot: {"type": "welcome"})
    await on_replicas(cluster, broker, rooms, [(stream, creator)])
    load = GiftLoad(rooms, stream, creator)
    try:
        await load.at_least(20)
        await asyncio.to_thread(fault)
        await polled(then)
        await load.at_least(len(load.published) + 20)
    finally:
        await load.stop()
    last = load.published[-1]
    await polled(lambda: all(sink.seqs()[-1:] == [last] for sink in sinks))
    await hub.stop()
    return sinks


async def assert_every_seq_once(
    broker: ShardedPubSubBroker, stream: str, sinks: list[FakeSink]
) -> None:
    feed = [orjson.loads(raw)["seq"] for raw in await broker.feed(stream, 0, 10_000)]
    assert feed == list(range(1, len(feed) + 1))
    for sink in sinks:
        assert sink.seqs() == feed


async def test_a_replica_killed_under_load_moves_its_rooms_and_back_once_it_returns(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    """kill -9 of the room's replica: its shard has no other, so the room goes to the
    primary; the replica started again, the room goes back to it (once it is no longer
    held back). Each move's gap is filled from the feed."""
    rooms = await make_rooms(own_cluster, keys)
    broker = replica_broker(rooms, timeout_s=1)
    await open_stream(rooms, "r_kill", "r_kill_creator")
    slot = slot_of(rooms.keys.room_channel("r_kill_creator", "r_kill"))
    primary = own_cluster.primary_for_slot(slot).port
    killed: list[int] = []

    def here() -> int:
        return home_port(broker, rooms, "r_kill", "r_kill_creator")

    def kill_and_restart_the_replica() -> None:
        killed.append(here())
        own_cluster.kill(killed[0])
        asyncio.run(polled(lambda: here() == primary))  # read from this thread: a dict get
        own_cluster.restart(killed[0])

    try:
        sinks = await fan_out_under_load(
            own_cluster, rooms, broker, "r_kill", "r_kill_creator", kill_and_restart_the_replica,
            then=lambda: here() == killed[0],
        )  # fmt: skip
        await assert_every_seq_once(broker, "r_kill", sinks)
        assert broker.repairs >= 2 and broker.connected
    finally:
        await broker.stop()
        await rooms.runner.aclose()


@pytest.mark.slow
async def test_the_replica_promoted_when_its_primary_dies_keeps_its_rooms(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    """kill -9 of the primary while its replica carries the room: the replica is promoted
    and its subscriptions stay, so the room keeps its link (no move, no feed read by the
    broker); what the dead primary published and never relayed is repaired by the hub."""
    rooms = await make_rooms(own_cluster, keys)
    broker = replica_broker(rooms, timeout_s=1)
    await open_stream(rooms, "r_fail", "r_fail_creator")
    slot = slot_of(rooms.keys.room_channel("r_fail_creator", "r_fail"))
    links: list[object] = []
    repairs: list[int] = []

    def kill_the_primary() -> None:
        links.append(broker._home[rooms.keys.room_channel("r_fail_creator", "r_fail").encode()])
        repairs.append(broker.repairs)  # a first move from the primary, before any replica
        dead = own_cluster.primary_for_slot(slot).port
        own_cluster.kill(dead)
        own_cluster.wait_promoted(dead)

    try:
        sinks = await fan_out_under_load(
            own_cluster, rooms, broker, "r_fail", "r_fail_creator", kill_the_primary,
            then=lambda: True,
        )  # fmt: skip
        await assert_every_seq_once(broker, "r_fail", sinks)
        channel = rooms.keys.room_channel("r_fail_creator", "r_fail").encode()
        assert broker._home[channel] is links[0]
        assert broker._home[channel].node[1] == own_cluster.primary_for_slot(slot).port
        assert broker.repairs == repairs[0] and broker.connected
    finally:
        await broker.stop()
        await rooms.runner.aclose()


@pytest.mark.parametrize("fault", ["moved", pytest.param("frozen", marks=pytest.mark.slow)])
async def test_a_replica_that_leaves_the_shard_or_goes_silent_loses_its_rooms(
    own_cluster: RedisCluster, keys: Keys, fault: str
) -> None:
    """The room's replica made a replica of another shard (Redis 7.0 keeps its shard
    subscriptions, silently: no ``sunsubscribe``, no more messages) or frozen (SIGSTOP:
    the link stays open and quiet until the cluster marks the node failed): the audit
    finds the room's link outside its shard's replicas and moves the room."""
    rooms = await make_rooms(own_cluster, keys)
    broker = replica_broker(rooms, timeout_s=1)
    await open_stream(rooms, "r_gone", "r_gone_creator")
    slot = slot_of(rooms.keys.room_channel("r_gone_creator", "r_gone"))
    frozen: list[subprocess.Popen[bytes]] = []

    def replica_leaves() -> None:
        port = home_port(broker, rooms, "r_gone", "r_gone_creator")
        if fault == "moved":
            other = next(p for p in own_cluster.primaries() if not any(
                low <= slot <= high for low, high in p.slots))  # fmt: skip
            own_cluster._query(port, "CLUSTER", "REPLICATE", other.node_id)
        else:
            process = own_cluster.node(port).process
            assert process is not None
            process.send_signal(signal.SIGSTOP)
            frozen.append(process)

    try:
        primary = own_cluster.primary_for_slot(slot).port
        sinks = await fan_out_under_load(
            own_cluster, rooms, broker, "r_gone", "r_gone_creator", replica_leaves,
            then=lambda: home_port(broker, rooms, "r_gone", "r_gone_creator") == primary,
        )  # fmt: skip
        await assert_every_seq_once(broker, "r_gone", sinks)
        assert broker.repairs >= 1 and broker.connected
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
        await broker.stop()
        await rooms.runner.aclose()
