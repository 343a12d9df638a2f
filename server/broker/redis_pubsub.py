"""Room events from Redis pub/sub, and the reads the rooms need (``ports.Broker``).

One pub/sub connection per process carries every room this process serves. Presence and
the snapshot are read as ``rooms_read.py`` says, shared with the cluster's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, cast

from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub

from server.broker.rooms_read import epoch_position, presence_entry, room_snapshot, viewers_sum
from server.domain.errors import UnavailableError
from server.domain.limits import PUBSUB_DRAIN_MAX, TOP_MAX
from server.domain.tasks import stop_tasks
from server.ledger.goals import goals_from_hash
from server.ledger.ledger import Ledger, stream_from_hash
from server.realtime.ports import BrokerListener, RoomSnapshot, StreamPosition

log = logging.getLogger("giftwire.broker")

_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)


class RedisPubSubBroker:
    """``ports.Broker`` over Redis pub/sub (``SUBSCRIBE``), with the feed behind it.

    Order: Redis delivers one channel's messages in publish order on one connection.
    Delivery: fire and forget; a dropped connection (or Redis dropping this subscriber for
    its output buffer) loses messages, so after every reconnect this broker subscribes again
    to every room and calls ``room_events_lost(None)``; an ``unsubscribe`` confirmation for a
    room that was reopened meanwhile is answered with a new ``SUBSCRIBE`` and
    ``room_events_lost(room)``. Data loss in Redis is not seen here (see ``bump_epoch``).
    """

    def __init__(self, ledger: Ledger, *, presence_ttl_s: float, timeout_s: float) -> None:
        self.ledger = ledger
        self.keys = ledger.keys
        self.process_id = uuid.uuid4().hex[:12]
        self._presence_ttl_ms = int(presence_ttl_s * 1000)
        self._timeout_s = timeout_s
        self._listener: BrokerListener | None = None
        self._pubsub: PubSub | None = None
        self._streams: dict[bytes, str] = {}
        """Channel -> stream id of every room wanted (subscribed or being subscribed)."""
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}
        self._has_rooms = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = False

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        await stop_tasks(self._reader, *self._tasks)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _channel(self, stream_id: str) -> bytes:
        return self.keys.room_channel(stream_id).encode()

    # Subscriptions (a sharded broker overrides these four).

    async def _send_subscribe(self, pubsub: PubSub, *channels: bytes) -> None:
        await pubsub.subscribe(*channels)

    async def _send_unsubscribe(self, pubsub: PubSub, channel: bytes) -> None:
        await pubsub.unsubscribe(channel)

    _MESSAGE = b"message"
    _SUBSCRIBED = "subscribe"
    _UNSUBSCRIBED = "unsubscribe"

    async def subscribe(self, stream_id: str) -> None:
        channel = self._channel(stream_id)
        self._streams[channel] = stream_id
        self._has_rooms.set()
        pubsub = self._ensure_pubsub()
        future = asyncio.get_running_loop().create_future()
        self._subscribed[channel] = future
        try:
            await self._send_subscribe(pubsub, channel)
            async with asyncio.timeout(self._timeout_s):
                await future
        except _REDIS_DOWN as e:
            self._streams.pop(channel, None)
            raise UnavailableError(f"cannot subscribe: {e}") from e
        finally:
            self._subscribed.pop(channel, None)

    async def unsubscribe(self, stream_id: str) -> None:
        channel = self._channel(stream_id)
        self._streams.pop(channel, None)
        if not self._streams:
            self._has_rooms.clear()
        with contextlib.suppress(*_REDIS_DOWN):
            await self.ledger.redis.hdel(self.keys.viewers(stream_id), self.process_id)
            if self._pubsub is not None and channel not in self._streams:
                await self._send_unsubscribe(self._pubsub, channel)

    def _ensure_pubsub(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self.ledger.redis.pubsub()
        return self._pubsub

    # Reading.

    async def _read_forever(self) -> None:
        backoff_s = 0.05
        lost = False
        while True:
            await self._has_rooms.wait()
            try:
                if lost:
                    # Until a resubscribe succeeds: a failed one leaves a pubsub with no
                    # channels, which no read would ever notice.
                    await self._resubscribe()
                    lost = False
                pubsub = self._ensure_pubsub()
                if not pubsub.subscribed:
                    await asyncio.sleep(0.01)
                    continue
                message = await pubsub.get_message(timeout=1.0)
                self._connected = True
                backoff_s = 0.05
                if message is not None:
                    self._dispatch(message)
                    await self._dispatch_buffered(pubsub)
            except _REDIS_DOWN as e:
                self._connected = False
                if not lost:
                    log.warning("pub/sub connection lost (%s); reconnecting", e)
                lost = True
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)

    async def _resubscribe(self) -> None:
        """Subscribe a new pubsub to every room; raises (Redis still down) to be retried."""
        old, self._pubsub = self._pubsub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.aclose()  # type: ignore[no-untyped-call]
        if not self._streams:
            return
        await self._send_subscribe(self._ensure_pubsub(), *self._streams)
        # Connected before the rooms hear of the loss: a room that repairs its gap and asks
        # (readyz, the hub) must not find the broker still down.
        self._connected = True
        log.warning("pub/sub connection back; reading missed events from the feeds")
        if self._listener is not None:
            self._listener.room_events_lost(None)

    async def _resubscribe_channel(self, channel: bytes) -> None:
        with contextlib.suppress(*_REDIS_DOWN):
            await self._send_subscribe(self._ensure_pubsub(), channel)
            stream_id = self._streams.get(channel)
            if stream_id is not None and self._listener is not None:
                self._listener.room_events_lost(stream_id)

    async def _dispatch_buffered(self, pubsub: PubSub) -> None:
        """Dispatch the replies already read from the socket, in order, without a
        ``get_message`` each.

        ``get_message`` costs about 15 µs a message (health check, retry wrapper, timeout,
        metrics hooks): more than the room does with the event. One socket read usually
        holds many messages, and the parser (hiredis, a dependency) already has them:
        plain messages go straight to their room here; anything else (a subscribe
        confirmation, an error) goes through PubSub as before. Without a hiredis parser
        this does nothing and ``get_message`` reads every message.
        """
        parser = getattr(pubsub.connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        gets = getattr(reader, "gets", None)
        if gets is None:
            return
        for _ in range(PUBSUB_DRAIN_MAX):
            reply = gets()
            if isinstance(reply, Exception):
                raise reply
            if not isinstance(reply, list):
                return  # no whole reply buffered (hiredis' "not enough data" marker)
            if len(reply) == 3 and reply[0] == self._MESSAGE:
                self._event(reply[1], reply[2])
            else:
                message = await pubsub.handle_message(reply)  # type: ignore[no-untyped-call]
                if message is not None:
                    self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = cast(bytes, message.get("channel"))
        if kind == self._SUBSCRIBED:
            future = self._subscribed.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind == self._UNSUBSCRIBED and channel in self._streams:
            # A room was reopened while its old subscription was being dropped: subscribe
            # again, and have what was missed meanwhile read from the feed.
            task = asyncio.get_running_loop().create_task(self._resubscribe_channel(channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if kind == self._MESSAGE.decode():
            self._event(channel, message["data"])

    def _event(self, channel: bytes, data: bytes) -> None:
        stream_id = self._streams.get(channel)
        if stream_id is not None and self._listener is not None:
            self._listener.room_event(stream_id, data)

    # Reads.

    async def snapshot(
        self, stream_id: str, *, viewers_here: int | None = None
    ) -> RoomSnapshot | None:
        k = self.keys
        now_ms = int(time.time() * 1000)
        try:
            async with asyncio.timeout(self._timeout_s):
                pipe = self.ledger.redis.pipeline(transaction=False)
                if viewers_here is not None:
                    presence = presence_entry(viewers_here, now_ms, self._presence_ttl_ms)
                    pipe.hset(k.viewers(stream_id), self.process_id, presence)  # type: ignore[unused-awaitable]
                pipe.hgetall(k.stream(stream_id))  # type: ignore[unused-awaitable]
                pipe.hgetall(k.viewers(stream_id))  # type: ignore[unused-awaitable]
                pipe.zrevrange(k.leaderboard(stream_id), 0, TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
                pipe.hgetall(k.goals(stream_id))  # type: ignore[unused-awaitable]
                # A refused presence write (out of memory, a read-only replica) must not
                # cost the room its stats: only the reads have to succeed.
                replies = await pipe.execute(raise_on_error=False)
                for reply in replies[-4:]:
                    if isinstance(reply, Exception):
                        raise reply
                stream_raw, viewers_raw, top_raw, goals_raw = replies[-4:]
                raw = cast(dict[bytes, bytes], stream_raw)
                top = [(member.decode(), int(score)) for member, score in top_raw]
                # Names and levels: a second round trip, since the fans key is the creator's.
                named = (
                    await self.ledger.goals.named(stream_id, raw[b"creator"].decode(), top)
                    if top and b"creator" in raw
                    else []
                )
                viewers, stale = viewers_sum(cast(dict[bytes, bytes], viewers_raw), now_ms)
                if stale:
                    with contextlib.suppress(redis_errors.ResponseError):
                        await self.ledger.redis.hdel(k.viewers(stream_id), *stale)
        except (*_REDIS_DOWN, redis_errors.ResponseError) as e:
            # A ResponseError (out of memory, a read-only replica, loading): Redis is up but
            # refuses; the caller tries again later, as for an outage.
            raise UnavailableError(str(e) or type(e).__name__) from e
        stream = stream_from_hash(stream_id, raw)
        if stream is None:
            return None
        goals = goals_from_hash(cast(dict[bytes, bytes], goals_raw))
        return room_snapshot(stream, viewers=viewers, top=named, goals=goals)

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        return await self.ledger.feed(stream_id, after_seq, limit)

    async def bump_epoch(self, stream_id: str, expected: str, valid_seq: int) -> StreamPosition:
        change = await self.ledger.bump_epoch(
            stream_id=stream_id, expected=expected, epoch=uuid.uuid4().hex[:16], valid_seq=valid_seq
        )
        return epoch_position(change, expected)

    async def viewers(self, stream_id: str) -> int:
        try:
            raw = await self.ledger.redis.hgetall(self.keys.viewers(stream_id))
        except _REDIS_DOWN as e:
            raise UnavailableError(str(e) or type(e).__name__) from e
        return viewers_sum(cast(dict[bytes, bytes], raw), int(time.time() * 1000))[0]
