"""Which node of a shard a server process subscribes a room on (``GIFTWIRE_CLUSTER_SUBSCRIBE``).

Pure: no Redis, no asyncio. ``ShardedPubSubBroker`` asks ``candidates`` where to subscribe
a room and ``serves`` whether the node a room is subscribed on is still a right one.

* ``primary`` (the default): the primary that owns the room's slot, as before.
* ``replica``: one replica of that primary, chosen per process by rendezvous hashing
  (highest ``blake2b(process id, node)`` wins), so the processes spread evenly over a
  shard's replicas, and a replica that leaves moves only the processes that were on it.
  The primary is the fallback while the shard lists no replica that is up.

Alternatives that lost: ``hash(process id) % len(replicas)`` spreads as well, but a replica
joining or leaving moves most processes to another replica (each move costs a feed read
per room); a random pick per room spreads rooms, not processes, and opens a connection to
every replica from every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.ledger.cluster_topology import Address


class SubscribeRole(StrEnum):
    """Where rooms are subscribed (``GIFTWIRE_CLUSTER_SUBSCRIBE``)."""

    PRIMARY = "primary"
    """On the primary that owns the room's slot."""
    REPLICA = "replica"
    """On one replica of that primary (the primary while it has none up)."""


def rank(process_id: str, nodes: Sequence[Address]) -> list[Address]:
    """``nodes`` in this process's order of preference (rendezvous hashing)."""

    def weight(node: Address) -> bytes:
        text = f"{process_id}/{node[0]}:{node[1]}".encode()
        return hashlib.blake2b(text, digest_size=8).digest()

    return sorted(nodes, key=weight, reverse=True)


def available(replicas: Sequence[Address], held: Collection[Address]) -> list[Address]:
    """The replicas not held back (their link was lost a moment ago)."""
    return [node for node in replicas if node not in held]


def candidates(
    role: SubscribeRole,
    process_id: str,
    primary: Address,
    replicas: Sequence[Address],
    held: Collection[Address] = (),
) -> list[Address]:
    """Where to try to subscribe a room of this shard, in order; the primary always last."""
    if role is SubscribeRole.PRIMARY:
        return [primary]
    return [*rank(process_id, available(replicas, held)), primary]


def serves(
    role: SubscribeRole,
    node: Address,
    primary: Address,
    replicas: Sequence[Address],
    held: Collection[Address] = (),
) -> bool:
    """Whether a room subscribed on ``node`` is in the right place: a node of the room's
    shard in the chosen role (any replica of it, not only this process's first choice, so
    that a replica joining moves nobody), or the primary while no replica is available."""
    if role is SubscribeRole.PRIMARY:
        return node == primary
    if node == primary:
        return not available(replicas, held)
    return node in replicas
