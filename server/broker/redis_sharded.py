"""Room events from Redis Cluster sharded pub/sub (``SSUBSCRIBE``): ``ports.Broker``.

A room's shard channel (``cluster_keys``: ``{u:CREATOR}:s:STREAM:room``) lives in the slot
of its creator; the credit leg ``SPUBLISH``es each gift there, and Redis delivers a shard
message only to the subscribers *of the nodes of the shard that owns the slot*: its
primary, and each of its replicas (the primary sends it to them over the cluster bus). So
this broker keeps one pub/sub connection per node that serves one of its rooms (a
``ShardLink``: at most one per node of the cluster, never one per room) and subscribes each
room on one node of its slot's shard, chosen by ``shard_nodes`` from the role set by
``GIFTWIRE_CLUSTER_SUBSCRIBE``: the primary (the default), or one replica per process
(``replica``: the replicas relay the events to the server processes in the primary's
place; the primary while the shard lists no replica that is up).

What Redis 7.0.15 does on a replica (measured on the loopback cluster, ``tests/cluster/
test_sharded_broker_replicas.py``): ``SSUBSCRIBE`` is accepted by a replica of the
channel's shard without ``READONLY`` (and with it); a node of another shard answers
``MOVED slot primary``. A ``SPUBLISH`` on the primary and a classic ``PUBLISH`` (from any
node) both reach a subscriber on the replica, and what one script published on the
primary (``SPUBLISH``, ``PUBLISH``, ``SPUBLISH``) arrives in that order. When the replica
is promoted its subscriptions stay and keep delivering. A replica made a replica of
another shard (``CLUSTER REPLICATE``) keeps its subscriptions *silently*: no
``sunsubscribe``, and no more shard messages; only the slot map shows it (below).

The stream's state changes (``start_stream``, ``end_stream``, ``bump_epoch``) are still sent
with classic ``PUBLISH`` on the same channel name, which a cluster copies to every node:
each room is also ``SUBSCRIBE``d on its link, so one connection carries both, in the order
the room's node produced them.

Following the cluster:

* **A slot moves** (a migration, a manual failover): the old owner pushes ``sunsubscribe``
  for the room's channel. The room becomes *homeless*: the slot map is read again, the room
  subscribed on the new owner, and ``room_events_lost(room)`` tells the hub to read what was
  published meanwhile from the feed.
* **A node dies** (kill -9, a lost connection): its link's read fails; every room of that
  link becomes homeless, and the same repair runs, retried with a backoff until the
  cluster has promoted a replica and the slot map names it.
* **A node goes silent** (a partition) **or changes shard**: nothing fails on a quiet
  link, so the slot map is read again every ``AUDIT_INTERVAL_S`` while rooms are open, and
  a room whose link is not (any) node of its slot's shard in the chosen role is moved.
* **On replicas** (``replica``): a replica's lost link holds that replica back for
  ``REPLICA_HOLD_S`` (the slot map lists a dead replica until the cluster marks it failed,
  ``cluster-node-timeout``), and its rooms go to another replica or the primary. A room on
  the primary for want of a replica moves to one once the map lists one that is not held
  back; a replica promoted to primary keeps its rooms while the shard has no other
  replica. A replica may also miss shard messages without any error (the cluster bus
  between it and its primary dropped and reconnected): the hub's repairs cover that as
  any gap (a jump in sequence, or a stats tick seeing a higher sequence than the room's).

Order: one room's events come on one connection, in the order its primary published them.
Delivery: at most once; every gap (above) ends with ``room_events_lost`` once the room is
subscribed again, so the hub's feed reads make it at least once. Reads (snapshot, feed,
presence) go to the primary of each key's slot (``ClusterRooms``) in either role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.broker.cluster_rooms import ClusterRooms
from server.broker.rooms_read import epoch_position, presence_entry, room_snapshot, viewers_sum
from server.broker.shard_link import DOWN, ShardLink
from server.broker.shard_nodes import SubscribeRole, candidates, serves
from server.domain.errors import UnavailableError
from server.domain.tasks import stop_tasks
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_runner import REDIRECTS_MAX
from server.ledger.cluster_topology import Address
from server.realtime.ports import BrokerListener, RoomSnapshot, StreamPosition

log = logging.getLogger("giftwire.broker")

AUDIT_INTERVAL_S = 1.0
"""How often the slot map is read again while rooms are open (finds a silent node's rooms)."""
BACKOFF_MAX_S = 1.0
REPLICA_HOLD_S = 30.0
"""How long a replica whose link was lost is not subscribed on (its rooms are elsewhere)."""


class ShardedPubSubBroker:
    """``ports.Broker`` over a Redis Cluster's sharded pub/sub (see the module docstring)."""

    def __init__(
        self,
        rooms: ClusterRooms,
        *,
        presence_ttl_s: float,
        timeout_s: float,
        role: SubscribeRole = SubscribeRole.PRIMARY,
        process_id: str | None = None,
        replica_hold_s: float = REPLICA_HOLD_S,
    ) -> None:
        self.rooms = rooms
        self.slots = rooms.slots
        self.keys = rooms.keys
        self.role = role
        self.process_id = process_id or uuid.uuid4().hex[:12]
        """This process's presence field, and what it chooses its replicas by."""
        self._presence_ttl_ms = int(presence_ttl_s * 1000)
        self._timeout_s = timeout_s
        self._replica_hold_s = replica_hold_s
        self._listener: BrokerListener | None = None
        self._streams: dict[bytes, str] = {}
        """Channel -> stream id of every room wanted."""
        self._home: dict[bytes, ShardLink] = {}
        """Channel -> the link it is subscribed on."""
        self._homeless: set[bytes] = set()
        """Rooms wanted whose subscription was lost: the maintainer subscribes them again."""
        self._links: dict[Address, ShardLink] = {}
        self._held: dict[Address, float] = {}
        """Replicas whose link was lost, and when (``replica_hold_s``)."""
        self._wake = asyncio.Event()
        self._maintainer: asyncio.Task[None] | None = None
        self.repairs = 0
        """Rooms subscribed again after a loss (failover, slot move), for tests and metrics."""

    @property
    def connected(self) -> bool:
        links = {link for link in self._home.values()}
        return not self._homeless and all(link.connected for link in links)

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._maintainer = asyncio.get_running_loop().create_task(self._maintain_forever())

    async def stop(self) -> None:
        await stop_tasks(self._maintainer)
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()

    # Subscriptions.

    async def subscribe(self, stream_id: str) -> None:
        channel = (await self.rooms.room_channel(stream_id)).encode()
        self._streams[channel] = stream_id
        try:
            await self._subscribe_on_shard(channel)
        except (*DOWN, redis_errors.RedisError, UnavailableError) as e:
            if self._streams.get(channel) == stream_id and channel not in self._home:
                del self._streams[channel]
            raise UnavailableError(f"cannot subscribe: {e}") from e

    async def _subscribe_on_shard(self, channel: bytes) -> None:
        """Subscribe on a node of the channel's shard in the chosen role, following MOVED
        replies. A replica that fails or answers MOVED (it left the shard) is passed over
        for the next candidate; the primary is the last, and its failure raises."""
        slot = slot_of(channel.decode())
        for _ in range(REDIRECTS_MAX):
            await self.slots.refresh_if_due()
            primary = self.slots.owners[slot]
            for node in self._candidates(slot):
                link = self._link(node)
                try:
                    await link.subscribe(channel, self._timeout_s)
                except redis_errors.MovedError as e:
                    self.slots.stale = True
                    if node != primary:
                        continue
                    self.slots.owners[e.slot_id] = (e.host or node[0], int(e.port))
                    break
                except (*DOWN, redis_errors.ResponseError) as e:
                    if node == primary:
                        raise
                    self._link_lost(link, e)  # down, loading...: held back for a while
                    continue
                self._home[channel] = link
                self._homeless.discard(channel)
                return
        raise UnavailableError(f"slot {slot} moved more than {REDIRECTS_MAX} times")

    def _candidates(self, slot: int) -> list[Address]:
        replicas = self.slots.replicas[slot] if self.slots.replicas else ()
        return candidates(self.role, self.process_id, self.slots.owners[slot], replicas,
                          self._held_back())  # fmt: skip

    def _serves(self, slot: int, node: Address, held: set[Address]) -> bool:
        replicas = self.slots.replicas[slot] if self.slots.replicas else ()
        return serves(self.role, node, self.slots.owners[slot], replicas, held)

    def _held_back(self) -> set[Address]:
        """The replicas not to subscribe on now (their link was lost less than
        ``replica_hold_s`` ago)."""
        now = time.monotonic()
        for node, since in list(self._held.items()):
            if now - since >= self._replica_hold_s:
                del self._held[node]
        return set(self._held)

    def _link(self, node: Address) -> ShardLink:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = ShardLink(self, node, self._timeout_s)
        return link

    async def unsubscribe(self, stream_id: str) -> None:
        with contextlib.suppress(UnavailableError):
            channel = (await self.rooms.room_channel(stream_id)).encode()
            self._streams.pop(channel, None)
            self._homeless.discard(channel)
            link = self._home.pop(channel, None)
            if link is not None:
                await link.leave(channel)
            key = self.keys.viewers(stream_id)
            await self.rooms.on_slot(key, lambda r: r.hdel(key, self.process_id))

    # Following the cluster.

    def _slot_moved(self, link: ShardLink, channel: bytes) -> None:
        """Redis dropped a room from ``link`` (its slot left that node)."""
        if self._home.get(channel) is link:
            del self._home[channel]
        if channel in self._streams:
            log.warning("room channel %s left %s:%d; following its slot", channel, *link.node)
            self._homeless.add(channel)
            self.slots.stale = True
            self._wake.set()

    def _link_lost(self, link: ShardLink, error: BaseException) -> None:
        """A link's connection broke: every room on it must be subscribed again."""
        if self._links.get(link.node) is link:
            del self._links[link.node]
        if self.role is SubscribeRole.REPLICA:
            self._held[link.node] = time.monotonic()  # only replicas are ever passed over
        lost = [channel for channel, home in self._home.items() if home is link]
        if lost:
            log.warning(
                "pub/sub link to %s:%d lost (%s); moving %d rooms", *link.node, error, len(lost)
            )
        for channel in lost:
            del self._home[channel]
            if channel in self._streams:
                self._homeless.add(channel)
        for future in link.pending.values():
            if not future.done():
                future.set_exception(redis_errors.ConnectionError(str(error)))
        self.slots.stale = True
        self.slots.failing.add(link.node)
        task = asyncio.get_running_loop().create_task(link.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._wake.set()

    async def _maintain_forever(self) -> None:
        backoff_s = 0.05
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(AUDIT_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            if not self._streams:
                continue
            try:
                await self.slots.refresh()
                self._audit()
                await self._rehome()
                backoff_s = 0.05
            except (*DOWN, redis_errors.RedisError, UnavailableError) as e:
                log.debug("cannot follow the cluster yet (%s); retrying", e)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                self._wake.set()

    def _audit(self) -> None:
        """Rooms whose link is no longer a node of their slot's shard in the chosen role (a
        silent node, a replica in another shard, a replica up again) move."""
        held = self._held_back()
        for channel, link in list(self._home.items()):
            if not self._serves(slot_of(channel.decode()), link.node, held):
                del self._home[channel]
                self._homeless.add(channel)
                task = asyncio.get_running_loop().create_task(link.leave(channel))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _rehome(self) -> None:
        """Subscribe every homeless room on its owner, then have its gap read from the feed.
        Raises (to be retried) while a node cannot be reached."""
        for channel in list(self._homeless):
            stream_id = self._streams.get(channel)
            if stream_id is None:
                self._homeless.discard(channel)
                continue
            await self._subscribe_on_shard(channel)
            self.repairs += 1
            if self._listener is not None:
                self._listener.room_events_lost(stream_id)

    def _event(self, channel: bytes, data: bytes) -> None:
        stream_id = self._streams.get(channel)
        if stream_id is not None and self._listener is not None:
            self._listener.room_event(stream_id, data)

    # Reads.

    async def snapshot(
        self, stream_id: str, *, viewers_here: int | None = None
    ) -> RoomSnapshot | None:
        now_ms = int(time.time() * 1000)
        (stream, top, goals), viewers = await asyncio.gather(
            self.rooms.stream_and_top(stream_id),
            self._presence(stream_id, viewers_here, now_ms),
        )
        if stream is None:
            return None
        return room_snapshot(stream, viewers=viewers, top=top, goals=goals)

    async def _presence(self, stream_id: str, viewers_here: int | None, now_ms: int) -> int:
        """Report this process's viewers (if given) and sum every live report, in the
        stream id's slot; expired reports are deleted."""
        key = self.keys.viewers(stream_id)

        async def read(r: Redis) -> tuple[int, list[bytes]]:
            pipe = r.pipeline(transaction=False)
            if viewers_here is not None:
                presence = presence_entry(viewers_here, now_ms, self._presence_ttl_ms)
                pipe.hset(key, self.process_id, presence)  # type: ignore[unused-awaitable]
            pipe.hgetall(key)  # type: ignore[unused-awaitable]
            # A refused presence write (out of memory) must not cost the room its stats.
            replies = await pipe.execute(raise_on_error=False)
            if isinstance(replies[-1], Exception):
                raise replies[-1]
            return viewers_sum(cast(dict[bytes, bytes], replies[-1]), now_ms)

        viewers, stale = await self.rooms.on_slot(key, read)
        if stale:
            with contextlib.suppress(UnavailableError):
                await self.rooms.on_slot(key, lambda r: r.hdel(key, *stale))
        return viewers

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        return await self.rooms.feed(stream_id, after_seq, limit)

    async def bump_epoch(self, stream_id: str, expected: str, valid_seq: int) -> StreamPosition:
        change = await self.rooms.bump_epoch(
            stream_id=stream_id, expected=expected, epoch=uuid.uuid4().hex[:16], valid_seq=valid_seq
        )
        return epoch_position(change, expected)

    async def viewers(self, stream_id: str) -> int:
        key = self.keys.viewers(stream_id)
        raw = await self.rooms.on_slot(key, lambda r: r.hgetall(key))
        return viewers_sum(cast(dict[bytes, bytes], raw), int(time.time() * 1000))[0]
