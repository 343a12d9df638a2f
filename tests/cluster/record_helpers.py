"""Helpers of the cluster record tests: a cluster client, a slot map and an archiver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient

from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_shards import Shards
from server.ledger.cluster_topology import SlotMap
from server.ledger.keys import Keys
from server.record.archiver import Archiver, ArchiverConfig
from server.record.cluster_logs import log_discovery
from server.record.connection import RecordPool
from tests.support.cluster import RedisCluster

CONFIG = ArchiverConfig(batch_max=50, block_ms=20, discover_interval_s=0.0)


@dataclass
class ClusterRecord:
    client: ClusterClient
    slots: SlotMap
    pool: RecordPool
    keys: Keys

    def archiver(self, consumer: str = "a") -> Archiver:
        ck = ClusterKeys(self.keys.prefix)
        lease_key = ck.archiver_lease()
        return Archiver(
            self.client, self.pool, self.keys, config=CONFIG, consumer=consumer, logs=[],
            lease_key=lease_key,
            lease_redis=self.slots.client(self.slots.owners[slot_of(lease_key)]),
            discover=log_discovery(Shards(self.slots, timeout_s=5.0), ck),
        )  # fmt: skip


@asynccontextmanager
async def cluster_record(
    cluster: RedisCluster, pool: RecordPool, keys: Keys
) -> AsyncIterator[ClusterRecord]:
    client = ClusterClient(startup_nodes=[ClusterNode("127.0.0.1", port) for port in cluster.ports])
    slots = SlotMap(cluster.startup_urls[:1], timeout_s=5.0, pool_max=8)
    await slots.refresh()
    try:
        yield ClusterRecord(client, slots, pool, keys)
    finally:
        await slots.aclose()
        await client.aclose()
