"""The hub: this process's rooms, fed by one Redis pub/sub connection.

Every gift is published by send_gift.lua inside the transfer, so an event exists if and only
if its transfer committed. The hub decodes each event once, adds the catalog's display
fields, and hands it to the room, which encodes it once per wire format in use.

Nothing is lost across a pub/sub outage: each room knows the last sequence it delivered; a
jump in sequence, a reconnect, or a stats tick that sees a higher sequence in Redis makes
the room read the missing events from the stream's feed (``docs/fan-out.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import orjson
from redis import exceptions as redis_errors
from redis.asyncio.client import PubSub

from server.domain.catalog import Catalog
from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.ledger.ledger import Ledger
from server.protocol.events import Message, enrich_gift
from server.realtime.connection import Connection
from server.realtime.room import Room

log = logging.getLogger("giftwire.realtime")

_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError, TimeoutError)
_TOP_MAX = 10
PUBSUB_DRAIN_MAX = 1000
"""Most buffered pub/sub messages dispatched in one go before yielding to the loop."""


class Hub:
    def __init__(
        self,
        ledger: Ledger,
        catalog: Catalog,
        limits: Limits,
        *,
        batch_ms: int,
        hot_events_per_s: int,
        stats_interval_s: float,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.keys = ledger.keys
        self.catalog = catalog
        self.limits = limits
        self.batch_ms = batch_ms
        self.hot_events_per_s = hot_events_per_s
        self.stats_interval_s = stats_interval_s
        self.process_id = uuid.uuid4().hex[:12]
        self.rooms: dict[str, Room] = {}
        self._channels: dict[bytes, Room] = {}
        self._pubsub: PubSub | None = None
        self._subscribed: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._has_rooms = asyncio.Event()
        self.pubsub_connected = False
        self.on_drop = on_drop

    # Lifecycle.

    async def start(self) -> None:
        self._spawn(self._read_forever())
        self._spawn(self._stats_forever())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for room in self.rooms.values():
            room.close()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Rooms.

    async def join(self, connection: Connection, stream_id: str) -> Room:
        """Add a connection to its room, subscribing this process to the room if needed.

        The connection starts out catching up: the caller sends the welcome, then calls
        ``connection.finish_catching_up(last_seq)`` (or ``resume``).
        """
        room = self.rooms.get(stream_id)
        if room is None:
            room = Room(
                stream_id,
                batch_ms=self.batch_ms,
                batch_events_max=self.limits.batch_events_max,
                hot_events_per_s=self.hot_events_per_s,
                on_gap=self._fetch_missing,
                frames_per_s_max=self.limits.room_frames_per_s_max,
            )
            self.rooms[stream_id] = room
            channel = self.keys.room_channel(stream_id).encode()
            self._channels[channel] = room
            try:
                await self._subscribe(channel)
                stream = await self.ledger.stream(stream_id)
            except BaseException:
                self._drop_room(room)
                room.ready.set()
                raise
            room.last_seq = stream.last_sequence if stream else 0
            room.ready.set()
        else:
            await room.ready.wait()
            if room.stream_id not in self.rooms:
                raise UnavailableError("room could not be opened")
        connection.start_catching_up()
        room.connections.add(connection)
        return room

    def leave(self, connection: Connection, room: Room) -> None:
        room.connections.discard(connection)
        if not room.connections and self.rooms.get(room.stream_id) is room:
            self._drop_room(room)
            self._spawn(self._unsubscribe(room))

    def _drop_room(self, room: Room) -> None:
        room.close()
        self.rooms.pop(room.stream_id, None)
        channel = self.keys.room_channel(room.stream_id).encode()
        self._channels.pop(channel, None)
        if not self.rooms:
            self._has_rooms.clear()

    async def _subscribe(self, channel: bytes) -> None:
        self._has_rooms.set()
        pubsub = await self._ensure_pubsub()
        future = asyncio.get_running_loop().create_future()
        self._subscribed[channel] = future
        try:
            await pubsub.subscribe(channel)
            async with asyncio.timeout(self.limits.redis_timeout_s):
                await future
        except _REDIS_DOWN as e:
            raise UnavailableError(f"cannot subscribe: {e}") from e
        finally:
            self._subscribed.pop(channel, None)

    async def _unsubscribe(self, room: Room) -> None:
        channel = self.keys.room_channel(room.stream_id).encode()
        with contextlib.suppress(*_REDIS_DOWN):
            await self.ledger.redis.hdel(self.keys.viewers(room.stream_id), self.process_id)
            if self._pubsub is not None and channel not in self._channels:
                await self._pubsub.unsubscribe(channel)

    async def _ensure_pubsub(self) -> PubSub:
        if self._pubsub is None:
            self._pubsub = self.ledger.redis.pubsub()
        return self._pubsub

    # Pub/sub reading.

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
                pubsub = await self._ensure_pubsub()
                if not pubsub.subscribed:
                    await asyncio.sleep(0.01)
                    continue
                message = await pubsub.get_message(timeout=1.0)
                self.pubsub_connected = True
                backoff_s = 0.05
                if message is not None:
                    self._dispatch(message)
                    await self._dispatch_buffered(pubsub)
            except _REDIS_DOWN as e:
                self.pubsub_connected = False
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
        if not self._channels:
            return
        pubsub = await self._ensure_pubsub()
        await pubsub.subscribe(*self._channels)
        log.warning("pub/sub connection back; reading missed events from the feeds")
        for room in list(self.rooms.values()):
            # Anything published while we were away is in the feed.
            if not room.fetching:
                room.fetching = True
                self._fetch_missing(room)

    async def _resubscribe_channel(self, channel: bytes) -> None:
        with contextlib.suppress(*_REDIS_DOWN):
            pubsub = await self._ensure_pubsub()
            await pubsub.subscribe(channel)

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
            if len(reply) == 3 and reply[0] == b"message":
                self._dispatch_event(reply[1], reply[2])
            else:
                message = await pubsub.handle_message(reply)  # type: ignore[no-untyped-call]
                if message is not None:
                    self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = cast(bytes, message.get("channel"))
        if kind == "subscribe":
            future = self._subscribed.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind == "unsubscribe" and channel in self._channels:
            # A room was reopened while its old subscription was being dropped: subscribe
            # again (anything missed meanwhile is read from the feed by the gap logic).
            self._spawn(self._resubscribe_channel(channel))
            return
        if kind == "message":
            self._dispatch_event(channel, message["data"])

    def _dispatch_event(self, channel: bytes, data: bytes) -> None:
        room = self._channels.get(channel)
        if room is None:
            return
        event: Message = orjson.loads(data)
        if event.get("type") == "gift":
            room.gift(enrich_gift(event, self.catalog))
        else:
            room.flush()  # keep order: gifts before the state change that followed them
            room.broadcast(event, droppable=False)

    def _fetch_missing(self, room: Room) -> None:
        self._spawn(self._fetch(room))

    async def _fetch(self, room: Room) -> None:
        events: list[Message] = []
        try:
            for raw in await self.ledger.feed(
                room.stream_id, room.last_seq, self.limits.resume_events_max
            ):
                events.append(enrich_gift(orjson.loads(raw), self.catalog))
        except UnavailableError:
            log.warning("cannot read the feed of %s yet; will retry", room.stream_id)
            await asyncio.sleep(0.5)
            if self.rooms.get(room.stream_id) is room:
                self._fetch_missing(room)
            return
        room.fetched(events)

    # Resume.

    async def resume(self, connection: Connection, room: Room, since: int) -> int:
        """Send the connection every gift after ``since`` from the feed, then go live.

        Returns the last sequence sent. A ``gap`` message tells the client when the feed no
        longer holds the oldest events it asked for, or holds more than one resume sends.
        """
        connection.start_catching_up()
        connection.last_seq = since
        batch_max = self.limits.batch_events_max
        sent = 0
        try:
            while sent < self.limits.resume_events_max:
                rows = await self.ledger.feed(room.stream_id, connection.last_seq, batch_max)
                if not rows:
                    break
                events = [enrich_gift(orjson.loads(raw), self.catalog) for raw in rows]
                first = events[0]["seq"]
                if first > connection.last_seq + 1:
                    connection.send(
                        {"type": "gap", "from_seq": connection.last_seq + 1, "to_seq": first - 1}
                    )
                connection.send_events(events, batch_max)
                sent += len(events)
                if len(rows) < batch_max:
                    break
            else:
                stream = await self.ledger.stream(room.stream_id)
                if stream and stream.last_sequence > connection.last_seq:
                    connection.send(
                        {
                            "type": "gap",
                            "from_seq": connection.last_seq + 1,
                            "to_seq": stream.last_sequence,
                        }
                    )
                    connection.last_seq = stream.last_sequence
        finally:
            connection.finish_catching_up(connection.last_seq)
        return connection.last_seq

    # Stats.

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            for room in list(self.rooms.values()):
                try:
                    await self._stats(room)
                except (UnavailableError, *_REDIS_DOWN):
                    break
                except redis_errors.ResponseError as e:
                    # Out of memory, read-only replica, loading: Redis is up but refuses the
                    # viewer-count write. Try again next tick; never let the loop die.
                    log.warning("stats of %s refused by Redis: %s", room.stream_id, e)
                    break

    async def _stats(self, room: Room) -> None:
        k = self.keys
        now_ms = int(time.time() * 1000)
        expires_ms = now_ms + int(self.stats_interval_s * 3000)
        pipe = self.ledger.redis.pipeline(transaction=False)
        pipe.hmget(k.stream(room.stream_id), ["seq", "coins", "diamonds", "gifts", "state"])  # type: ignore[unused-awaitable]
        pipe.hset(k.viewers(room.stream_id), self.process_id, f"{len(room)}:{expires_ms}")  # type: ignore[unused-awaitable]
        pipe.hgetall(k.viewers(room.stream_id))  # type: ignore[unused-awaitable]
        pipe.zrevrange(k.leaderboard(room.stream_id), 0, _TOP_MAX - 1, withscores=True)  # type: ignore[unused-awaitable]
        totals, _, viewers_raw, top_raw = await pipe.execute()
        viewers = 0
        stale: list[bytes] = []
        for field, value in cast(dict[bytes, bytes], viewers_raw).items():
            count, _, expires = value.partition(b":")
            if int(expires or 0) < now_ms:
                stale.append(field)
            else:
                viewers += int(count)
        if stale:
            await self.ledger.redis.hdel(k.viewers(room.stream_id), *stale)
        seq, coins, diamonds, gifts, _state = (int(v) if v and v.isdigit() else 0 for v in totals)
        stats: Message = {
            "type": "stats",
            "viewers": viewers,
            "coins": coins,
            "diamonds": diamonds,
            "gifts": gifts,
            "last_seq": seq,
        }
        if stats != room.last_stats:
            room.last_stats = stats
            room.broadcast(stats)
        top = [{"user_id": m.decode(), "coins": int(s)} for m, s in top_raw]
        if top != room.last_top:
            room.last_top = top
            room.broadcast({"type": "leaderboard", "top": top})
        if seq > room.last_seq and not room.fetching:
            room.fetching = True
            self._fetch_missing(room)

    async def viewers(self, stream_id: str) -> int:
        """Viewers of a stream across every process (as of their last stats tick)."""
        raw = cast(
            dict[bytes, bytes], await self.ledger.redis.hgetall(self.keys.viewers(stream_id))
        )
        now_ms = int(time.time() * 1000)
        total = 0
        for value in raw.values():
            count, _, expires = value.partition(b":")
            if int(expires or 0) >= now_ms:
                total += int(count)
        room = self.rooms.get(stream_id)
        return max(total, len(room) if room else 0)
