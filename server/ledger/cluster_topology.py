"""Which primary serves which slot: the slot map of a Redis Cluster, and a client per node.

Read with ``CLUSTER SLOTS`` from any node that answers (the startup nodes, then every node
met since). It keeps each slot's primary (``owners``, what every call is routed by) and,
beside it, the replicas of that primary (``replicas``, for the broker's subscriptions on
replicas, ``GIFTWIRE_CLUSTER_SUBSCRIBE=replica``). Redis 7.0 lists a replica there only
while it is not failed and has a replication offset above 0 (as the answering node last
heard by gossip): a replica of a cluster that has had no write yet is not listed.

The map is *stale* once a node failed or redirected a call; whoever routes then calls
``refresh_if_due`` before the next batch, which reads it again at most every
``REFRESH_INTERVAL_S`` while a node stays down. Concurrent refreshes share one read.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.errors import InvariantError, UnavailableError
from server.ledger.cluster_keys import SLOTS
from server.ledger.connection import make_client

Address = tuple[str, int]
REFRESH_INTERVAL_S = 0.1
"""While a node is down every batch for it fails; the slot map is read again at most this
often meanwhile (a MOVED reply carries its own correction and does not wait)."""
CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


class SlotMap:
    def __init__(self, startup_urls: Sequence[str], *, timeout_s: float, pool_max: int) -> None:
        if not startup_urls:
            raise InvariantError("a cluster needs at least one startup node")
        self._startup = [address_of(url) for url in startup_urls]
        self._timeout_s = timeout_s
        self._pool_max = pool_max
        self._clients: dict[Address, Redis] = {}
        self.owners: list[Address] = []
        """The primary of each slot, as last read (empty before the first read)."""
        self.replicas: list[tuple[Address, ...]] = []
        """The replicas of each slot's primary, as last read (one tuple shared by a range;
        a MOVED correction of ``owners`` leaves it as it was until the next read)."""
        self.primary_count = 0
        self.stale = True
        self.failing: set[Address] = set()
        """Nodes whose last command failed: asked last for the map, logged once by callers."""
        self._refreshed_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._fence_slots: dict[Address, int] = {}

    def fence_slot(self, address: Address) -> int:
        """A slot ``address`` serves in the map as last read: where its durability fence
        key goes (``ClusterScriptRunner``, ``wait_replicas``). Found again when the slot
        moved (a MOVED reply corrects ``owners`` at once)."""
        slot = self._fence_slots.get(address)
        if slot is None or self.owners[slot] != address:
            slot = self.owners.index(address)  # ValueError: it serves no slot
            self._fence_slots[address] = slot
        return slot

    def client(self, address: Address) -> Redis:
        client = self._clients.get(address)
        if client is None:
            url = f"redis://{address[0]}:{address[1]}/0"
            client = make_client(url, timeout_s=self._timeout_s, pool_max=self._pool_max)
            self._clients[address] = client
        return client

    def primaries(self) -> list[Address]:
        return sorted(set(self.owners))

    async def refresh(self) -> None:
        """Read the slot map again; concurrent callers share one read."""
        if self._refreshing is None or self._refreshing.done():
            task = asyncio.get_running_loop().create_task(self._read())
            # A caller that timed out leaves the read running (shield); its failure is then
            # nobody's to see, and the next batch reads again.
            task.add_done_callback(retrieve)
            self._refreshing = task
        await asyncio.shield(self._refreshing)

    async def refresh_if_due(self) -> None:
        """Refresh a stale map, at most every ``REFRESH_INTERVAL_S`` (at once if empty)."""
        now = asyncio.get_running_loop().time()
        if self.stale and (not self.owners or now - self._refreshed_at >= REFRESH_INTERVAL_S):
            await self.refresh()

    async def _read(self) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        # Nodes that just failed go last: a black-holed host would otherwise cost each
        # read its whole connect timeout before a live node is asked.
        known = sorted(
            dict.fromkeys([*self._clients, *self._startup]), key=lambda a: a in self.failing
        )
        failures: list[str] = []
        for address in known:
            try:
                client = self.client(address)
                reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except (*CONNECTION_ERRORS, redis_errors.ResponseError) as e:
                failures.append(f"{address[0]}:{address[1]}: {e}")
                continue
            owners, replicas = parse_slots(reply, address[0])
            if any(owner is None for owner in owners):
                failures.append(f"{address[0]}:{address[1]}: not every slot is served")
                continue
            self.owners = [owner for owner in owners if owner is not None]
            self.replicas = replicas
            self.primary_count = len(set(self.owners))
            self.stale = False
            return
        raise UnavailableError("no cluster node gave a slot map: " + "; ".join(failures))

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def parse_slots(
    reply: Sequence[Sequence[Any]], asked_host: str
) -> tuple[list[Address | None], list[tuple[Address, ...]]]:
    """A ``CLUSTER SLOTS`` reply as (the primary of each slot, None where none serves it;
    its replicas). Each node is ``[host, port, id, {metadata}]``; an empty host means the
    host that was asked."""

    def node(entry: Sequence[Any]) -> Address:
        host = entry[0].decode() if isinstance(entry[0], bytes) else entry[0]
        return host or asked_host, int(entry[1])

    owners: list[Address | None] = [None] * SLOTS
    replicas: list[tuple[Address, ...]] = [()] * SLOTS
    for low, high, primary, *others in reply:
        count = high - low + 1
        owners[low : high + 1] = [node(primary)] * count
        replicas[low : high + 1] = [tuple(node(entry) for entry in others)] * count
    return owners, replicas


def retrieve(task: asyncio.Task[None]) -> None:
    """Done callback: mark a background task's exception as seen."""
    if not task.cancelled():
        task.exception()


def address_of(url: str) -> Address:
    """``redis://host:port[/db]`` (or ``host:port``) as an address."""
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise InvariantError(f"not a cluster node address: {url!r}")
    return host, int(port)
