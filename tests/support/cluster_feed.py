"""Streams and gift events on a Redis Cluster, for the fan-out tests, until the credit leg
(``credit_gifts.lua``) is on main.

``open_stream`` claims the stream id (``{s:STREAM}:owner``) and runs the real
``start_stream.lua`` with the cluster key names, all in the creator's slot. ``publish_gift``
does what the credit leg does to the room, in one script in the creator's slot: bump the
stream's ``seq`` and totals, append the event (the fields of ``events.GIFT_EVENT_FIELDS``)
to the feed with id ``SEQ-0``, and ``SPUBLISH`` it on the room's shard channel. It moves no
money: the fan-out tests are about the events only. Each call ends with ``WAIT 1`` (at most
200 ms: a promoted replica has no replica of its own), so an event it returns before a
failover has reached the replica.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import orjson
from redis.asyncio import Redis

from server.broker.cluster_rooms import ClusterRooms
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName

_GIFT = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local event = cjson.decode(ARGV[1])
event.seq = seq
event.epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
event.transfer_id = ARGV[2] .. '-' .. seq
redis.call('HINCRBY', KEYS[1], 'coins', event.coins)
redis.call('HINCRBY', KEYS[1], 'diamonds', event.diamonds)
redis.call('HINCRBY', KEYS[1], 'gifts', event.count)
local encoded = cjson.encode(event)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, seq .. '-0', 'e', encoded)
redis.call('SPUBLISH', KEYS[3], encoded)
return seq
"""


async def open_stream(
    rooms: ClusterRooms, stream_id: str, creator_id: str, *, epoch: str = "ep1"
) -> None:
    k = rooms.keys
    owner = k.stream_owner(stream_id)
    await rooms.on_slot(owner, lambda r: r.set(owner, creator_id))
    creator_streams = f"{k.prefix}{{u:{creator_id}}}:streams"
    reply = await rooms.runner.run(
        ScriptName.START_STREAM,
        [
            k.stream(creator_id, stream_id),
            k.room_channel(creator_id, stream_id),
            k.feed(creator_id, stream_id),
            k.leaderboard(creator_id, stream_id),
            creator_streams,
        ],
        [stream_id, creator_id, "a room", 100, creator_id.title(), epoch],
        order_key=stream_id,
    )
    unpack(reply)


async def publish_gift(
    rooms: ClusterRooms, stream_id: str, creator_id: str, sender_id: str = "alice"
) -> int:
    """One gift event into the room, as the credit leg publishes it; returns its seq."""
    k: ClusterKeys = rooms.keys
    stream_key = k.stream(creator_id, stream_id)
    event = {
        "type": "gift", "seq": 0, "epoch": "", "transfer_id": "", "stream_id": stream_id,
        "sender_id": sender_id, "sender_name": sender_id.title(), "gift_id": "rose",
        "count": 1, "combo": 1, "coins": 1, "diamonds": 0, "ts": int(time.time() * 1000),
    }  # fmt: skip
    keys = [stream_key, k.feed(creator_id, stream_id), k.room_channel(creator_id, stream_id)]

    async def run(r: Redis) -> int:
        pipe = r.pipeline(transaction=False)
        pipe.eval(_GIFT, 3, *keys, orjson.dumps(event), f"t-{sender_id}")  # type: ignore[unused-awaitable]
        pipe.execute_command("WAIT", 1, 200)  # type: ignore[no-untyped-call, unused-awaitable]
        seq, _replicas = await pipe.execute()
        return cast(int, seq)

    return await rooms.on_slot(stream_key, run)


class GiftLoad:
    """Gifts published into one room, one every 5 ms, until ``stop``; a publish that fails
    (a node is gone) is unknown and tried again. ``published``: the seqs committed."""

    def __init__(self, rooms: ClusterRooms, stream_id: str, creator_id: str) -> None:
        self.rooms, self.stream_id, self.creator_id = rooms, stream_id, creator_id
        self.published: list[int] = []
        self._stop, self._progress = asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                seq = await publish_gift(self.rooms, self.stream_id, self.creator_id)
                self.published.append(seq)
                self._progress.set()
            except Exception:  # a node is gone: unknown, try again
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    async def at_least(self, count: int) -> None:
        while len(self.published) < count:
            self._progress.clear()
            await self._progress.wait()

    async def stop(self) -> None:
        self._stop.set()
        await self._task
