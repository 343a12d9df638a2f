"""Catching up: each connection's one task that sends it gifts from the feed.

Three things make a connection catch up: the welcome's resume (``?since=``), a client's
``resume``, and the repair of a viewer whose outbox dropped live gifts. All three are the
same task, at most one per connection at a time: a newer resume replaces the running one
(cancelled at an ``await``, so it never leaves half a page queued), and a repair waits for
the one in flight, which reads on to the room's end anyway.

The task pages the feed into the outbox only while the outbox has room, and otherwise waits
for it to drain (``Outbox.wait_room``): resumed frames count toward the connection's budget,
and a connection that never drains is closed with 4008 by its outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.protocol import events
from server.protocol.close_codes import CloseCode
from server.protocol.events import Message
from server.realtime.connection import Connection
from server.realtime.ports import Broker
from server.realtime.room import Room

Decode = Callable[[Room, bytes], Message]
"""A feed entry as the room's clients see it (epoch label, display fields)."""


class CatchUps:
    def __init__(self, broker: Broker, limits: Limits, decode: Decode) -> None:
        self._broker = broker
        self._limits = limits
        self._decode = decode
        self._tasks: dict[Connection, asyncio.Task[None]] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    def running(self, connection: Connection) -> asyncio.Task[None] | None:
        return self._tasks.get(connection)

    def cancel(self, connection: Connection) -> None:
        task = self._tasks.pop(connection, None)
        if task is not None:
            task.cancel()

    async def replace(self, connection: Connection, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the connection's catch-up, cancelling the one in flight; return
        when it is done, or when a newer one replaced it."""
        self.cancel(connection)
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[connection] = task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()
                raise
            # Replaced by a newer catch-up (an epoch restart): that one carries on.
        finally:
            if self._tasks.get(connection) is task:
                del self._tasks[connection]

    def repair(self, connection: Connection, room: Room) -> None:
        """Start a catch-up from the connection's last sequence, unless one runs."""
        if connection in self._tasks:
            return  # the catch-up in flight reads on to the room's end
        task = asyncio.get_running_loop().create_task(self._repair(connection, room))
        self._tasks[connection] = task

    async def _repair(self, connection: Connection, room: Room) -> None:
        try:
            await self.catch_up(connection, room)
        finally:
            if self._tasks.get(connection) is asyncio.current_task():
                del self._tasks[connection]

    async def catch_up(self, connection: Connection, room: Room) -> None:
        """Page the feed after ``connection.last_seq`` into the outbox, as its budget
        allows, then release what was held (and go on if that fell behind again)."""
        outbox = connection.outbox
        while True:
            try:
                if not await self._page_feed(connection, room):
                    return  # the connection is closing
            except UnavailableError:
                outbox.close(CloseCode.GOING_AWAY, "ledger unavailable; reconnect and resume")
                return
            connection.finish_catching_up(connection.last_seq)
            if not connection.catching_up:
                return
            # It fell behind again while what was held went out: go on from there.

    async def _page_feed(self, connection: Connection, room: Room) -> bool:
        """Queue up to ``resume_events_max`` gifts after ``connection.last_seq``, a page at a
        time while the outbox has room; False if the connection closed meanwhile."""
        batch_max = self._limits.batch_events_max
        outbox = connection.outbox
        sent = 0
        while sent < self._limits.resume_events_max:
            if not outbox.has_room() and not await outbox.wait_room():
                return False
            rows = await self._broker.feed(room.stream_id, connection.last_seq, batch_max)
            if not rows:
                return True
            page = [self._decode(room, raw) for raw in rows]
            first = page[0]["seq"]
            if first > connection.last_seq + 1:
                connection.send(events.gap(connection.last_seq + 1, first - 1))
            connection.send_events(page)
            sent += len(page)
            if len(rows) < batch_max:
                return True
        if room.last_seq > connection.last_seq:
            connection.send(events.gap(connection.last_seq + 1, room.last_seq))
            connection.last_seq = room.last_seq
        return True
