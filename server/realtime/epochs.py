"""Epochs: noticing that the store's history went back, and moving rooms to a new one.

A sequence compares only within its stream's epoch (``ports.StreamPosition``). When Redis
goes back in time (restored from an older copy, failed over to a replica that missed
writes, restarted without its last fsync), the hub notices it three ways (a sequence that
comes again with another transfer id, a stats tick that finds fewer gifts than the room
delivered, a client resuming past the store in a room that saw more too) and calls
``rollback_once``. This module finds the last sequence both histories share, bumps the
epoch with the broker's compare-and-set (once for every process), and restarts the room:
connections that were sent more are told (``history_changed``) and rewound, and the room
reads the true gifts from the feed. A room that hears of an epoch another process started
follows it (``resync``). ``docs/fan-out.md``, "Epochs", says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from server.domain.errors import UnavailableError
from server.domain.limits import ROOM_RECENT_SEQS_MAX
from server.protocol import events
from server.realtime.catch_up import CatchUps
from server.realtime.ports import Broker, StreamPosition
from server.realtime.room import Room

log = logging.getLogger("giftwire.realtime")


class Epochs:
    def __init__(
        self,
        broker: Broker,
        rooms: dict[str, Room],
        catch_ups: CatchUps,
        track: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self._broker = broker
        self._rooms = rooms
        self._catch_ups = catch_ups
        self._track = track
        self._rollbacks: dict[Room, asyncio.Task[None]] = {}

    def rolled_back(self, room: Room) -> None:
        """The room saw its history change under it (a sequence came again)."""
        _ = self.rollback_once(room, None)

    def rollback_once(self, room: Room, store_seq: int | None) -> asyncio.Future[None]:
        """The rollback of this room in flight, or a new one: never two at once (a second
        would bump the epoch the first one just set)."""
        task = self._rollbacks.get(room)
        if task is None:
            room.hold()
            task = asyncio.get_running_loop().create_task(self._rollback(room, store_seq))
            self._rollbacks[room] = task
            self._track(task)
            task.add_done_callback(lambda _: self._rollbacks.pop(room, None))
        return task

    async def _rollback(self, room: Room, store_seq: int | None) -> None:
        """Find the last sequence this room and the store agree on, bump the epoch (once,
        across every process: compare and set), and restart the room from there."""
        old_epoch = room.epoch
        try:
            if store_seq is None:
                snapshot = await self._broker.snapshot(room.stream_id)
                store_seq = snapshot.position.seq if snapshot else 0
            valid = await self._shared_history(room, store_seq)
            log.error(
                "stream %s: the store's history went back (it holds seq %d, this room saw "
                "%d); new epoch from seq %d",
                room.stream_id, store_seq, room.last_seq, valid,
            )  # fmt: skip
            position = await self._broker.bump_epoch(room.stream_id, old_epoch, valid)
        except UnavailableError:
            await asyncio.sleep(0.5)
            if self._rooms.get(room.stream_id) is room:
                room.repair(force=True)
            return
        # (The epoch event may have arrived first and moved the room already.)
        self._restart(room, old_epoch, position)

    async def _shared_history(self, room: Room, store_seq: int) -> int:
        """The highest sequence up to which the room's recent transfers match the feed."""
        recent = room.recent
        if not recent or min(recent) > store_seq + 1:
            return 0  # nothing to compare: trust none of it
        low = min(recent)
        rows = await self._broker.feed(room.stream_id, low - 1, ROOM_RECENT_SEQS_MAX)
        valid = low - 1
        for raw in rows:
            event = orjson.loads(raw)
            seq = event["seq"]
            if seq > store_seq or recent.get(seq) != event.get("transfer_id"):
                break
            valid = seq
        return valid

    async def resync(self, room: Room) -> None:
        """An event of another epoch arrived: another process started one; follow it."""
        try:
            snapshot = await self._broker.snapshot(room.stream_id)
        except UnavailableError:
            await asyncio.sleep(0.5)
            if self._rooms.get(room.stream_id) is room:
                room.repair(force=True)  # what it held comes back, and asks again
            return
        if snapshot is None or snapshot.position.epoch == room.epoch:
            room.repair(force=True)  # releases what was held
            return
        valid = snapshot.prev_epoch_seq if snapshot.prev_epoch == room.epoch else 0
        self._restart(room, room.epoch, StreamPosition(valid, snapshot.position.epoch))

    def _restart(self, room: Room, old_epoch: str, position: StreamPosition) -> None:
        """Move the room to ``position.epoch``, true up to ``position.seq``: connections
        that were sent more are told and rewound, and the room reads the feed from there
        (one read for the room; only connections that were catching up get their own)."""
        if room.epoch != old_epoch:
            return  # already moved on
        room.restart(position.epoch, old_epoch, position.seq)
        valid = room.last_seq
        current = asyncio.current_task()
        for connection in list(room.connections):
            running = self._catch_ups.running(connection)
            if running is current:
                continue  # the resume that found the rollback goes on from its own since
            if connection.last_seq > valid:
                connection.send(events.history_changed(position.epoch, valid + 1))
                connection.last_seq = valid
            if connection.catching_up:
                # What it held, and any page in flight, may be of the lost history.
                connection.forget_held()
                self._catch_ups.cancel(connection)
                self._catch_ups.repair(connection, room)
        room.repair()
