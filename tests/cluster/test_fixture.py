"""The loopback cluster fixture itself: it forms, serves every slot, and fails over."""

from __future__ import annotations

from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from server.ledger.keys import Keys
from tests.support.cluster import SLOTS, RedisCluster


def _client(cluster: RedisCluster) -> ClusterClient:
    return ClusterClient(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports],
        decode_responses=False,
    )


async def test_the_cluster_forms_with_three_primaries_each_with_a_replica(
    redis_cluster: RedisCluster, keys: Keys
) -> None:
    topology = redis_cluster.topology()
    primaries = [n for n in topology if n.is_primary]
    replicas = [n for n in topology if not n.is_primary]
    assert len(primaries) == 3 and len(replicas) == 3
    assert sorted(str(r.primary_id) for r in replicas) == sorted(p.node_id for p in primaries)
    assert sum(high - low + 1 for p in primaries for low, high in p.slots) == SLOTS
    # Keys of three different users land on different primaries, and each can be written.
    client = _client(redis_cluster)
    try:
        ports = set()
        for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
            key = keys.account(user)
            await client.hset(key, "coins", "1")
            ports.add(redis_cluster.primary_for_slot(key_slot(key.encode())).port)
            assert await client.hget(key, "coins") == b"1"
        assert len(ports) > 1
    finally:
        await client.aclose()


async def test_killing_a_primary_promotes_its_replica_and_the_data_survives(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    key = keys.account("alice")
    slot = key_slot(key.encode())
    primary = own_cluster.primary_for_slot(slot)
    replica = next(n for n in own_cluster.topology() if n.primary_id == primary.node_id)
    client = _client(own_cluster)
    try:
        await client.hset(key, "coins", "42")
        # WAIT: the replica has the write before the primary dies (async replication
        # would otherwise be allowed to lose it, which is not what this test is about).
        assert (
            await client.execute_command(
                "WAIT", 1, 5000, target_nodes=client.get_node_from_key(key)
            )
            == 1
        )
    finally:
        await client.aclose()

    own_cluster.kill(primary.port)
    promoted = own_cluster.wait_promoted(primary.port)
    assert promoted.port == replica.port and promoted.is_primary

    client = _client(own_cluster)
    try:
        assert await client.hget(key, "coins") == b"42"
    finally:
        await client.aclose()

    own_cluster.restart(primary.port)
    back = next(n for n in own_cluster.topology() if n.port == primary.port)
    assert not back.is_primary and back.primary_id == promoted.node_id
