"""Sums over every shard of the loopback cluster: one pipeline per primary, missing = 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import SLOTS, ClusterKeys
from server.ledger.cluster_shards import Shards
from server.ledger.cluster_topology import SlotMap
from server.ledger.keys import Keys
from tests.support.cluster import RedisCluster


@pytest.fixture
async def shards(redis_cluster: RedisCluster) -> AsyncIterator[Shards]:
    slots = SlotMap(redis_cluster.startup_urls[:1], timeout_s=5.0, pool_max=8)
    await slots.refresh()
    yield Shards(slots, timeout_s=5.0)
    await slots.aclose()


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = ClusterClient(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster.ports]
    )
    yield client
    await client.aclose()


async def test_platform_shards_are_summed_across_every_primary(
    shards: Shards, client: ClusterClient, redis_cluster: RedisCluster, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    assert await shards.sum_field(cluster_keys.platform_shards(), "coins") == 0
    # Shards spread over the slot range, hence over every primary.
    written = {slot: slot + 1 for slot in range(0, SLOTS, 997)}
    for slot, coins in written.items():
        await client.hset(cluster_keys.platform_shard(slot), "coins", str(coins))
    ports = {redis_cluster.primary_for_slot(slot).port for slot in written}
    assert len(ports) == 3
    total = await shards.sum_field(cluster_keys.platform_shards(), "coins")
    assert total == sum(written.values())


async def test_outbox_lengths_name_the_shards_with_pending_entries(
    shards: Shards, client: ClusterClient, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    for slot, entries in ((3, 2), (9000, 1), (16000, 3)):
        for n in range(entries):
            await client.xadd(cluster_keys.outbox_shard(slot), {"transfer": f"t{n}"})
    lengths = await shards.lengths(cluster_keys.outbox_shards())
    assert lengths == {
        cluster_keys.outbox_shard(3): 2,
        cluster_keys.outbox_shard(9000): 1,
        cluster_keys.outbox_shard(16000): 3,
    }


async def test_a_shard_that_is_not_an_integer_is_an_invariant_error(
    shards: Shards, client: ClusterClient, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    await client.hset(cluster_keys.platform_shard(5), "coins", "12x")
    with pytest.raises(InvariantError, match="not an integer"):
        await shards.sum_field(cluster_keys.platform_shards(), "coins")


async def test_a_stale_slot_map_fails_the_read_once_then_it_is_refreshed(
    shards: Shards, client: ClusterClient, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    await client.hset(cluster_keys.platform_shard(42), "coins", "7")
    slots = shards._slots
    right = slots.owners[42]
    slots.owners[42] = next(a for a in slots.primaries() if a != right)
    with pytest.raises(UnavailableError, match="MovedError"):
        await shards.sum_field([cluster_keys.platform_shard(42)], "coins")
    assert slots.stale and slots.owners[42] == right  # from the MOVED reply itself
    assert await shards.sum_field([cluster_keys.platform_shard(42)], "coins") == 7


async def test_a_hash_copied_into_every_slot_replaces_the_old_copy(
    shards: Shards, redis_cluster: RedisCluster, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    copies = cluster_keys.catalog_shards()
    await shards.copy_to_every_shard(copies, {"rose": 1, "lion": 500, "@version": 1})
    assert await shards.sum_field(copies, "@version") == SLOTS
    await shards.copy_to_every_shard(copies, {"rose": 2, "@version": 2}, removed=["lion"])
    assert await shards.sum_field(copies, "@version") == 2 * SLOTS
    assert await shards.sum_field(copies, "rose") == 2 * SLOTS
    assert await shards.sum_field(copies, "lion") == 0
    # Each copy is on the primary of its own slot.
    for slot in (0, 8191, SLOTS - 1):
        primary = redis_cluster.primary_for_slot(slot)
        node = Redis(port=primary.port)
        try:
            copy = await node.hgetall(cluster_keys.catalog_shard(slot))
        finally:
            await node.aclose()
        assert copy == {b"rose": b"2", b"@version": b"2"}


async def test_a_shard_of_the_wrong_type_is_an_invariant_error(
    shards: Shards, client: ClusterClient, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    await client.set(cluster_keys.platform_shard(77), "not a hash")
    with pytest.raises(InvariantError, match="wrong kind of value"):
        await shards.sum_field(cluster_keys.platform_shards(), "coins")


async def test_entries_of_many_outboxes_are_deleted_in_one_pipeline_per_primary(
    shards: Shards, client: ClusterClient, keys: Keys
) -> None:
    cluster_keys = ClusterKeys(keys.prefix)
    outboxes = [cluster_keys.outbox_shard(slot) for slot in (1, 5000, 9000, 16000)]
    ids: dict[str, list[str]] = {}
    for outbox in outboxes:
        ids[outbox] = [await client.xadd(outbox, {"n": n}) for n in range(3)]
    # Two entries of each outbox settled; the third stays.
    await shards.delete_entries({key: [i.decode() for i in got[:2]] for key, got in ids.items()})
    assert await shards.lengths(outboxes) == {key: 1 for key in outboxes}
    for key, got in ids.items():
        assert [entry for entry, _ in await client.xrange(key)] == got[2:]
