"""The reads a room needs on a Redis Cluster beyond ``ClusterReads``: several commands of
one slot in one round trip (the stream and its leaderboard, presence), ``bump_epoch``.

A stream's keys carry its creator's tag (``cluster_keys``: ``{u:CREATOR}:s:STREAM:...``),
so the stream id's owner comes first: ``ClusterReads.owner``, cached for the life of the
process (an owner never changes once claimed), shared with the ledger of the same process.

Routing (``on_slot``): a command goes to the primary of its key's slot in the slot map. A
``MOVED`` reply names the new owner: the map is corrected and the command sent there, at
most ``REDIRECTS_MAX`` times. Every command here is a read, or a write that is safe to
repeat (presence), so a redirect never doubles anything. A lost connection, a timeout,
``CLUSTERDOWN`` or ``TRYAGAIN`` raise ``UnavailableError`` and mark the map stale, so the
next call reads it again (a failover: the promoted replica is found then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.domain.accounts import Balance
from server.domain.errors import UnavailableError
from server.domain.goals import Goal
from server.domain.levels import TopGifter
from server.domain.limits import TOP_MAX
from server.domain.streams import Stream
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_reads import ClusterReads
from server.ledger.cluster_runner import REDIRECTS_MAX, ClusterScriptRunner
from server.ledger.goals import goals_from_hash, top_gifters
from server.ledger.ledger import EpochChange, stream_from_hash
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
_NOT_SERVED = (redis_errors.ClusterDownError, redis_errors.TryAgainError)
T = TypeVar("T")


class ClusterRooms:
    """The broker's reads over a cluster, on top of ``reads`` (the process's ledger)."""

    def __init__(self, reads: ClusterReads, *, timeout_s: float) -> None:
        self.reads = reads
        self.runner: ClusterScriptRunner = reads.runner
        self.slots = reads.runner.slots
        self.keys: ClusterKeys = reads.keys
        self._timeout_s = timeout_s

    async def on_slot(self, key: str, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``command`` on the client of the primary that owns ``key``'s slot."""
        slot = slot_of(key)
        for _ in range(REDIRECTS_MAX):
            await self.slots.refresh_if_due()
            node = self.slots.owners[slot]
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await command(self.slots.client(node))
            except redis_errors.MovedError as e:
                self.slots.owners[e.slot_id] = (e.host or node[0], int(e.port))
                self.slots.stale = True
            except _NOT_SERVED as e:
                self.slots.stale = True
                raise UnavailableError(f"slot {slot} not served: {e}") from e
            except _DOWN as e:
                self.slots.stale = True
                self.slots.failing.add(node)
                raise UnavailableError(f"{node[0]}:{node[1]}: {type(e).__name__}: {e}") from e
            except redis_errors.ResponseError as e:
                # Up but refusing (out of memory, loading): try again later, as an outage.
                raise UnavailableError(str(e) or type(e).__name__) from e
        raise UnavailableError(f"slot {slot}: moved more than {REDIRECTS_MAX} times")

    # The stream id's owner, and with it the slot of the stream's keys.

    async def creator_of(self, stream_id: str) -> str | None:
        return await self.reads.owner(stream_id)

    async def _creator(self, stream_id: str) -> str:
        creator = await self.creator_of(stream_id)
        if creator is None:
            raise UnavailableError(f"stream {stream_id} has no owner")
        return creator

    async def room_channel(self, stream_id: str) -> str:
        """The room's shard channel (raises ``UnavailableError`` for an unclaimed id)."""
        return self.keys.room_channel(await self._creator(stream_id), stream_id)

    # Reads of the stream's slot (its creator's).

    async def stream(self, stream_id: str) -> Stream | None:
        return await self.reads.stream(stream_id)

    async def stream_and_top(
        self, stream_id: str
    ) -> tuple[Stream | None, list[TopGifter], list[Goal]]:
        """The stream hash, its leaderboard (with names and levels) and its goals from the
        primary of the creator's slot, which holds all of them: one round trip, and a second
        for the names and lifetime coins of the top ``TOP_MAX`` when there is a top."""
        creator = await self.creator_of(stream_id)
        if creator is None:
            return None, [], []
        k = self.keys
        stream_key = k.stream(creator, stream_id)
        keys = [
            stream_key,
            k.leaderboard(creator, stream_id),
            k.goals(creator, stream_id),
            k.names(creator, stream_id),
            k.fans(creator),
        ]

        async def read(r: Redis) -> list[object]:
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(keys[0])  # type: ignore[unused-awaitable]
            pipe.zrevrange(keys[1], 0, TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
            pipe.hgetall(keys[2])  # type: ignore[unused-awaitable]
            replies = cast(list[object], await pipe.execute())
            members = [m.decode() for m, _ in cast(list[tuple[bytes, float]], replies[1])]
            if not members:
                return [*replies, [], []]
            pipe = r.pipeline(transaction=False)
            pipe.hmget(keys[3], members)  # type: ignore[unused-awaitable]
            pipe.zmscore(keys[4], members)  # type: ignore[unused-awaitable]
            return [*replies, *cast(list[object], await pipe.execute())]

        raw, top_raw, goals_raw, names, lifetime = await self.on_slot(stream_key, read)
        stream = stream_from_hash(stream_id, cast(dict[bytes, bytes], raw))
        rows = [(m.decode(), int(s)) for m, s in cast(list[tuple[bytes, float]], top_raw)]
        top = top_gifters(rows, cast(list[bytes | None], names), cast(list[object], lifetime))
        return stream, top, goals_from_hash(cast(dict[bytes, bytes], goals_raw))

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Gift events (JSON as published) with sequence > after_seq, oldest first."""
        return await self.reads.feed(stream_id, after_seq, limit)

    async def bump_epoch(
        self, *, stream_id: str, expected: str, epoch: str, valid_seq: int
    ) -> EpochChange:
        """``bump_epoch.lua`` on the stream's slot (compare and set; see ``Ledger``)."""
        creator = await self._creator(stream_id)
        k = self.keys
        reply = await self.runner.run(
            ScriptName.BUMP_EPOCH,
            [k.stream(creator, stream_id), k.room_channel(creator, stream_id)],
            [stream_id, expected, epoch, valid_seq],
            order_key=stream_id,
        )
        body, replayed = unpack(reply)
        doc = orjson.loads(body)
        return EpochChange(doc["epoch"], doc["prev_epoch"], doc["prev_epoch_seq"], not replayed)

    async def balance(self, user_id: str) -> Balance:
        return await self.reads.balance(user_id)
