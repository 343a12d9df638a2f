"""The ledger logs of a Redis Cluster, for the archiver and the record's reconcile.

Every hash slot has its own log, ``{~N}:log`` (``server/ledger/cluster_keys.py``), written
by the scripts of the accounts in that slot. The archiver archives the logs that have
entries: ``log_discovery`` finds them with one ``XLEN`` per slot, pipelined per primary
(``cluster_shards.Shards``): 16384 cheap commands, whatever the number of keys, where a
``SCAN`` for the pattern would walk every key of every primary.
"""

from __future__ import annotations

from redis.asyncio import Redis

from server.ledger.cluster_keys import SLOTS, ClusterKeys, slot_of
from server.ledger.cluster_shards import Shards
from server.ledger.cluster_topology import SlotMap
from server.record.archiver import Discover, LedgerLog
from server.record.connection import RecordPool
from server.record.lease import Locate

Entry = tuple[str, dict[str, str]]


def cluster_log(keys: ClusterKeys, slot: int) -> LedgerLog:
    return LedgerLog(keys.ledger_shard(slot), slot)


def log_discovery(shards: Shards, keys: ClusterKeys) -> Discover:
    """A ``Discover`` for the archiver: every slot's log that holds entries now."""

    async def discover() -> list[LedgerLog]:
        lengths = await shards.lengths(keys.ledger_shards())
        return sorted((LedgerLog(key, slot_of(key)) for key in lengths), key=lambda x: x.slot)

    return discover


def slot_primary(slots: SlotMap, slot: int) -> Locate:
    """A ``Locate`` for the archiver's lease: the client of ``slot``'s primary, from the
    slot map read again (after a failover the replica that took over serves the slot)."""

    async def locate() -> Redis:
        await slots.refresh()
        return slots.client(slots.owners[slot])

    return locate


def every_cluster_log(keys: ClusterKeys) -> list[LedgerLog]:
    return [cluster_log(keys, slot) for slot in range(SLOTS)]


async def recorded_entries(pool: RecordPool, keys: ClusterKeys) -> dict[str, list[Entry]]:
    """Every transfer the record holds from a cluster log, per log key, in log order: the
    history the cluster reconcile adds to what Redis still holds (it holds both in memory,
    like the logs themselves)."""
    found: dict[str, list[Entry]] = {}
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT log_slot, log_ms, log_seq, fields FROM transfers WHERE log_slot >= 0"
            " ORDER BY log_slot, log_ms, log_seq"
        )
        for slot, ms, seq, fields in await cursor.fetchall():
            entry = {k: str(v) for k, v in fields.items()}
            found.setdefault(keys.ledger_shard(int(slot)), []).append((f"{ms}-{seq}", entry))
    return found
