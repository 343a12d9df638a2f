"""The hub: this process's rooms, fed by a broker, and every connection's catching up.

The hub knows nothing of Redis or sockets. The broker (``ports.Broker``) hands it each room
event as published; the hub decodes it once, adds the catalog's display fields, and gives
it to the room, which encodes it once per wire format in use. Events are delivered at
least once by combining the broker's live events with its feed: a jump in sequence, a
broker reconnect, or a stats tick that sees a higher sequence than the room's makes the
room read the missing events from the feed (``docs/fan-out.md``).

Catching up is the hub's job alone: the welcome's resume (``join(..., since=N)``), a
client's ``resume`` and the repair of a connection whose outbox dropped gifts all run as
the connection's one catch-up task (``catch_up.py``), which pages the feed only while the
connection's outbox has room and waits for it to drain otherwise.

Epochs: a sequence compares only within its stream's epoch. When the store's history goes
back (the room sees a sequence again with another transfer id, a stats tick finds fewer
gifts than the room delivered, or a client resumes from beyond the store's sequence), the
hub finds the last sequence both histories share, starts a new epoch with the broker's
compare-and-set, tells the connections that saw the lost part (``history_changed``), and
sends them the current history from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from server.domain.catalog import Catalog
from server.domain.errors import UnavailableError
from server.domain.limits import TOP_MAX, Limits
from server.domain.tasks import stop_tasks
from server.protocol import events
from server.protocol.events import Message, enrich_gift
from server.realtime.catch_up import CatchUps
from server.realtime.connection import Connection
from server.realtime.epochs import Epochs
from server.realtime.ports import Broker, RoomSnapshot
from server.realtime.room import Room

log = logging.getLogger("giftwire.realtime")

Greeting = Callable[[RoomSnapshot], Message]
"""Builds a connection's welcome from the room's snapshot (the web layer adds the rest)."""


class Hub:
    def __init__(
        self,
        broker: Broker,
        catalog: Catalog,
        limits: Limits,
        *,
        batch_ms: int,
        hot_events_per_s: int,
        stats_interval_s: float,
    ) -> None:
        self.broker = broker
        self.catalog = catalog
        self.limits = limits
        self.batch_ms = batch_ms
        self.hot_events_per_s = hot_events_per_s
        self.stats_interval_s = stats_interval_s
        self.rooms: dict[str, Room] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.catch_ups = CatchUps(broker, limits, self._decode)
        self._on_behind = self._behind  # one bound method for every connection, not one each
        self.epochs = Epochs(broker, self.rooms, self.catch_ups, self._track)
        self.on_room_event: Callable[[str, Message], None] | None = None
        """Told of every room event other than a gift or an epoch, after the room's viewers
        were sent it (the battle watch follows battles starting and ending so)."""

    # Lifecycle.

    async def start(self) -> None:
        await self.broker.start(self)
        self._spawn(self._stats_forever())

    async def stop(self) -> None:
        await stop_tasks(*self._tasks, *self.catch_ups.tasks())
        for room in self.rooms.values():
            room.close()
        await self.broker.stop()

    @property
    def connected(self) -> bool:
        """Events can reach this process's rooms (or it has none)."""
        return self.broker.connected or not self.rooms

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._track(asyncio.get_running_loop().create_task(coro))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def announce(self, message: Message) -> None:
        """A control message for every connection of every room (a new catalog): encoded
        once per format; not droppable, so it keeps its place among the gifts."""
        for room in list(self.rooms.values()):
            room.broadcast(message, droppable=False)

    # Rooms.

    async def join(
        self,
        connection: Connection,
        stream_id: str,
        greeting: Greeting,
        *,
        since: int | None = None,
        epoch: str | None = None,
    ) -> Room:
        """Add a connection to its room and queue its welcome, then (``since``) the gifts
        after ``since`` from the feed. Returns once all of that is queued; live events
        follow it, each once, in order.

        Raises ``UnavailableError`` (the broker cannot be reached; nothing was joined).
        """
        room = await self._open(stream_id)
        connection.stream_id = stream_id
        connection.on_behind = self._on_behind
        connection.start_catching_up()
        room.connections.add(connection)
        try:
            snapshot = await self.broker.snapshot(stream_id)
            if snapshot is None:
                raise UnavailableError("the stream is gone")
            snapshot = dataclasses.replace(snapshot, viewers=max(snapshot.viewers, len(room)))
            connection.send(greeting(snapshot))
            if since is None:
                seq = snapshot.position.seq
                if snapshot.position.epoch != room.epoch:
                    seq = min(seq, room.last_seq)  # the epoch changed meanwhile
                connection.finish_catching_up(seq)
            else:
                await self.resume(connection, since, epoch)
        except BaseException:
            self.leave(connection)
            raise
        return room

    async def _open(self, stream_id: str) -> Room:
        room = self.rooms.get(stream_id)
        if room is not None:
            await room.ready.wait()
            if self.rooms.get(stream_id) is not room:
                raise UnavailableError("room could not be opened")
            return room
        room = Room(
            stream_id,
            batch_ms=self.batch_ms,
            batch_events_max=self.limits.batch_events_max,
            hot_events_per_s=self.hot_events_per_s,
            on_gap=self._fetch_missing,
            on_rollback=self.epochs.rolled_back,
            frames_per_s_max=self.limits.room_frames_per_s_max,
        )
        self.rooms[stream_id] = room
        try:
            await self.broker.subscribe(stream_id)
            snapshot = await self.broker.snapshot(stream_id)
        except BaseException:
            self._drop_room(room)
            room.ready.set()
            raise
        if snapshot is not None:
            room.last_seq = snapshot.position.seq
            room.epoch, room.prev_epoch = snapshot.position.epoch, snapshot.prev_epoch
            room.state = snapshot.state
        room.ready.set()
        return room

    def leave(self, connection: Connection) -> None:
        self.catch_ups.cancel(connection)
        room = self.rooms.get(connection.stream_id)
        if room is None:
            return
        room.connections.discard(connection)
        if not room.connections:
            self._drop_room(room)
            self._spawn(self._unsubscribe(room))

    def _drop_room(self, room: Room) -> None:
        room.close()
        if self.rooms.get(room.stream_id) is room:
            del self.rooms[room.stream_id]

    async def _unsubscribe(self, room: Room) -> None:
        with contextlib.suppress(UnavailableError):
            if room.stream_id not in self.rooms:  # not reopened meanwhile
                await self.broker.unsubscribe(room.stream_id)

    # Events from the broker (BrokerListener).

    def room_event(self, stream_id: str, data: bytes) -> None:
        room = self.rooms.get(stream_id)
        if room is None:
            return
        event: Message = orjson.loads(data)
        kind = event.get("type")
        if kind == "gift":
            if self._in_epoch(room, event):
                room.gift(enrich_gift(event, self.catalog))
            else:
                room.hold(enrich_gift(event, self.catalog))
                self._spawn(self.epochs.resync(room))
        elif kind == "epoch":
            room.hold()
            self._spawn(self.epochs.resync(room))
        elif kind in ("level_up", "goal_reached"):
            room.announce(event, droppable=kind == "level_up")
        elif kind == "stream" and event.get("state") == room.state:
            pass  # a stats tick found this change first (its event was late, or lost)
        else:
            self._room_changed(room, event)

    def _room_changed(self, room: Room, event: Message) -> None:
        """A change of the stream (its state, a battle...): to every viewer, in order."""
        if event.get("type") == "stream":
            room.state = str(event.get("state", ""))
        room.flush()  # keep order: gifts before the state change that followed them
        room.broadcast(event, droppable=False)
        if self.on_room_event is not None:
            self.on_room_event(room.stream_id, event)

    def room_events_lost(self, stream_id: str | None) -> None:
        rooms = self.rooms.values() if stream_id is None else [self.rooms.get(stream_id)]
        for room in list(rooms):
            if room is not None:
                room.repair()  # anything published meanwhile is in the feed

    def _in_epoch(self, room: Room, event: Message) -> bool:
        """An event of the room's history: label it with the room's epoch (one published
        before the epoch changed belongs to the new history too)."""
        epoch = event.get("epoch") or ""
        if epoch == room.epoch:
            return True
        if epoch in ("", room.prev_epoch):
            event["epoch"] = room.epoch
            return True
        return False

    def _decode(self, room: Room, raw: bytes) -> Message:
        event: Message = orjson.loads(raw)
        self._in_epoch(room, event)  # a feed entry of an older epoch is history up to here
        return enrich_gift(event, self.catalog)

    def _fetch_missing(self, room: Room) -> None:
        self._spawn(self._fetch(room))

    async def _fetch(self, room: Room) -> None:
        try:
            # From last_seq itself: its transfer id tells whether the history still holds.
            rows = await self.broker.feed(
                room.stream_id, max(room.last_seq - 1, 0), self.limits.resume_events_max
            )
        except UnavailableError:
            log.warning("cannot read the feed of %s yet; will retry", room.stream_id)
            await asyncio.sleep(0.5)
            if self.rooms.get(room.stream_id) is room and room.fetching:
                self._fetch_missing(room)
            return
        fetched = [self._decode(room, raw) for raw in rows]
        known = room.recent.get(room.last_seq)
        if (
            fetched
            and fetched[0]["seq"] == room.last_seq
            and known not in (None, fetched[0].get("transfer_id"))
        ):
            self.epochs.rolled_back(room)
            return
        if self.rooms.get(room.stream_id) is room and room.fetching:
            room.fetched(fetched)

    # Catching up: resume and repair.

    async def resume(self, connection: Connection, since: int, epoch: str | None = None) -> None:
        """Send the connection every gift after ``since`` (of ``epoch``; None: the current
        one) from the feed, then go live. Replaces a catch-up in flight: at most one runs
        per connection. A ``gap`` tells the client when the feed no longer holds the events
        it asked for, or holds more than one resume sends; ``history_changed`` when
        ``since`` belongs to a history that is no longer true."""
        room = self.rooms.get(connection.stream_id)
        if room is None:
            return
        connection.start_catching_up()
        await self.catch_ups.replace(connection, self._resume(connection, room, since, epoch))

    async def _resume(
        self, connection: Connection, room: Room, since: int, epoch: str | None
    ) -> None:
        connection.last_seq = since
        valid: int | None = None
        """The last sequence of the history ``since`` counts in that is still true (None:
        all of it)."""
        if epoch is not None and epoch != room.epoch:
            snapshot = await self.broker.snapshot(room.stream_id)
            valid = snapshot.prev_epoch_seq if snapshot and epoch == snapshot.prev_epoch else 0
        elif since > room.last_seq:
            # The client may have seen more of this epoch than the store holds now.
            delivered = room.last_seq
            snapshot = await self.broker.snapshot(room.stream_id)
            store = snapshot.position if snapshot else None
            if snapshot and store and store.epoch == room.epoch and since > store.seq:
                if delivered > store.seq:
                    # This room saw it too: a rollback. The restart tells this connection
                    # and replaces this task with its own catch-up.
                    await asyncio.shield(self.epochs.rollback_once(room, store.seq))
                elif epoch is None and snapshot.prev_epoch:
                    valid = snapshot.prev_epoch_seq  # the bare form, from before the change
                else:
                    # Only the client says so: it is told alone (a client's word cannot
                    # change the epoch for everyone), and trusts none of what it holds.
                    valid = 0
        if valid is not None and since > valid:
            connection.send(events.history_changed(room.epoch, valid + 1))
            connection.last_seq = valid
        await self.catch_ups.catch_up(connection, room)

    def _behind(self, connection: Connection) -> None:
        """A connection dropped a gift: re-send from its last sequence once it has room."""
        room = self.rooms.get(connection.stream_id)
        if room is not None:
            self.catch_ups.repair(connection, room)

    # Stats.

    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            for room in list(self.rooms.values()):
                try:
                    await self._stats(room)
                except UnavailableError:
                    break

    async def refresh(self, stream_id: str) -> None:
        """One stats tick of a room now (the loop does it every ``stats_interval_s``)."""
        room = self.rooms.get(stream_id)
        if room is not None:
            await self._stats(room)

    async def _stats(self, room: Room) -> None:
        # What the room had delivered before asking: the store holds at least that much,
        # unless it lost data (the room may deliver more while the snapshot is read).
        delivered, epoch, state = room.last_seq, room.epoch, room.state
        snapshot = await self.broker.snapshot(room.stream_id, viewers_here=len(room))
        if snapshot is None:
            return
        if snapshot.state != state and room.state == state:
            # The stream started or ended and its event never came (lost with a broker
            # connection, or by a replica's cluster bus): say it now, as the event would.
            change = events.stream_state(room.stream_id, snapshot.state, snapshot.position.seq)
            self._room_changed(room, change)
        seq = snapshot.position.seq
        stats = events.stats(
            viewers=snapshot.viewers,
            coins=snapshot.coins,
            diamonds=snapshot.diamonds,
            gifts=snapshot.gifts,
            last_seq=seq,
        )
        if stats != room.last_stats:
            room.last_stats = stats
            room.broadcast(stats)
        top = snapshot.top[:TOP_MAX]
        if top != room.last_top:
            room.last_top = top
            room.broadcast(events.leaderboard(top))
        if room.epoch != epoch:
            return  # the epoch changed meanwhile: this snapshot is of no use
        if snapshot.position.epoch != room.epoch:
            self._spawn(self.epochs.resync(room))
        elif seq < delivered and not room.fetching:
            _ = self.epochs.rollback_once(room, seq)
        elif seq > room.last_seq:
            room.repair()

    async def viewers(self, stream_id: str) -> int:
        """Viewers of a stream across every process (as of their last stats tick)."""
        total = await self.broker.viewers(stream_id)
        room = self.rooms.get(stream_id)
        return max(total, len(room) if room else 0)
