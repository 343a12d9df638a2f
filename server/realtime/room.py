"""A room: the connections of one stream on this process, and how events reach them.

Events arrive from the broker in sequence order. A quiet room sends each gift as its own
frame at the end of the loop turn it arrived in (gifts of one turn share a frame). When the
room turns hot (more than ``hot_events_per_s`` events in the current or the previous
second) it coalesces: events wait for the tick, counted from the previous frame, and go out
as ``gifts`` frames of at most ``batch_events_max`` events. The tick is ``batch_ms``, or
longer in a big room, so that a tick's frames to the whole room stay within
``frames_per_s_max`` a second. See ``docs/coalescing.md``.

The room alone decides when it is behind (``fetching``): a jump in sequence, or the hub
telling it events may be lost (``repair``), makes it hold what arrives and call ``on_gap``;
the hub reads the feed and hands the result to ``fetched``. A sequence that comes again
with another transfer id means the store's history went back (``on_rollback``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from server.domain.levels import TopGifter
from server.domain.limits import (
    BROADCAST_CHUNK_MAX,
    ROOM_ANNOUNCEMENTS_MAX,
    ROOM_BUFFER_EVENTS_MAX,
    ROOM_RECENT_SEQS_MAX,
)
from server.protocol.codec import OutFrame, WireFormat, encode_frame
from server.protocol.events import Message
from server.realtime.connection import Connection, Delivery


class Room:
    def __init__(
        self,
        stream_id: str,
        *,
        batch_ms: int,
        batch_events_max: int,
        hot_events_per_s: int,
        on_gap: Callable[[Room], None],
        on_rollback: Callable[[Room], None] | None = None,
        frames_per_s_max: int = 40_000,
    ) -> None:
        self.stream_id = stream_id
        self.connections: set[Connection] = set()
        self.last_seq = 0
        self.epoch = ""
        self.prev_epoch = ""
        self.ready = asyncio.Event()
        self.fetching = False
        self._batch_s = batch_ms / 1000
        self._batch_max = batch_events_max
        self._hot_per_s = hot_events_per_s
        self._frames_per_s_max = frames_per_s_max
        self._was_hot = False
        self._on_gap = on_gap
        self._on_rollback = on_rollback
        self._pending: list[Message] = []
        self._announcements: list[tuple[Message, bool]] = []
        """Events caused by a pending gift (level_up, goal_reached), sent after its frame."""
        self._buffer: list[Message] = []
        self.recent: dict[int, str] = {}
        """Transfer id of each of the last ``ROOM_RECENT_SEQS_MAX`` sequences delivered."""
        self._flush_handle: asyncio.Handle | None = None
        self._window_start = time.monotonic()
        self._sent_at = self._window_start - 1.0
        """When the last gift frame went out (``time.monotonic``)."""
        self._window_events = 0
        self.state = ""
        """The stream's state as this room last heard it (``live``, ``ended``; '' before
        the first snapshot): a state change lost with its event is sent from a stats tick."""
        self.last_stats: Message | None = None
        self.last_top: list[TopGifter] | None = None

    def __len__(self) -> int:
        return len(self.connections)

    @property
    def hot(self) -> bool:
        # The previous second counts too: a busy room must not send its first
        # hot_events_per_s events of every second one frame each.
        return self._was_hot or self._window_events > self._hot_threshold()

    def _hot_threshold(self) -> int:
        """Events per second above which the room coalesces: ``hot_events_per_s``, lower
        for a crowd, whose frame per event would exceed ``frames_per_s_max``. (Counting
        only what the room managed to send would never see a crowd's room as hot: one
        frame per event to 5,000 viewers is itself slower than 20 events a second.)"""
        crowd = self._frames_per_s_max // max(len(self.connections), 1)
        return max(1, min(self._hot_per_s, crowd))

    @property
    def tick_s(self) -> float:
        """How long a hot room's events wait: ``batch_ms``, longer for a crowd."""
        return max(self._batch_s, len(self.connections) / self._frames_per_s_max)

    def gift(self, event: Message) -> None:
        """A gift event from the broker or the feed, in sequence order."""
        if self.fetching:
            if len(self._buffer) < ROOM_BUFFER_EVENTS_MAX:
                self._buffer.append(event)
            return
        seq = event["seq"]
        if seq <= self.last_seq:
            known = self.recent.get(seq)
            if known is None or known == event.get("transfer_id"):
                return  # already delivered (a feed read overlapping live events)
            # The same sequence for another transfer: the store went back in time and is
            # numbering new gifts again. Hold it; the hub finds out how far back.
            self._hold_for(self._on_rollback, event)
            return
        if seq > self.last_seq + 1:
            # Events were missed (the broker reconnected, or dropped this subscriber):
            # hold this one and read the missing ones from the feed first.
            self._hold_for(self._on_gap, event)
            return
        self._deliver(event)

    def _hold_for(self, callback: Callable[[Room], None] | None, event: Message) -> None:
        self.fetching = True
        self._buffer.append(event)
        (callback or self._on_gap)(self)

    def _deliver(self, event: Message) -> None:
        seq = self.last_seq = event["seq"]
        recent = self.recent
        recent[seq] = event.get("transfer_id", "")
        if len(recent) > ROOM_RECENT_SEQS_MAX:
            del recent[next(iter(recent))]
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            elapsed = now - self._window_start
            self._was_hot = elapsed < 2.0 and self._window_events > self._hot_threshold()
            self._window_start, self._window_events = now, 0
        self._window_events += 1
        self._pending.append(event)
        if len(self._pending) >= self._batch_max:
            self.flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self.hot:
                # One frame per tick, the tick counted from the previous frame: the time
                # that frame took to reach every viewer is part of the wait, not added to
                # it (a crowd's frame takes a good part of its tick to write).
                wait_s = self._sent_at + self.tick_s - now
                self._flush_handle = (
                    loop.call_later(wait_s, self.flush)
                    if wait_s > 0
                    else loop.call_soon(self.flush)
                )
            else:
                # At the end of this loop turn, not now: the events the broker hands over
                # in one turn (all it read from the socket) share a frame. A room whose
                # frame to every viewer takes longer than the gap between its events
                # (a crowd, a starved core) gets them in bursts that way, and counts
                # them; sent one frame each, it would count only as many as it managed
                # to send, never turn hot, and fall behind without end.
                self._flush_handle = loop.call_soon(self.flush)

    def hold(self, event: Message | None = None) -> None:
        """Hold live events (and ``event``) until the next ``fetched``: the hub is finding
        out whether the history changed."""
        self.fetching = True
        if event is not None and len(self._buffer) < ROOM_BUFFER_EVENTS_MAX:
            self._buffer.append(event)

    def repair(self, *, force: bool = False) -> bool:
        """Events may have been missed: read the feed after ``last_seq`` (unless already
        reading it, or ``force``). True if a read was started."""
        if self.fetching and not force:
            return False
        self.fetching = True
        self._on_gap(self)
        return True

    def fetched(self, events: list[Message]) -> None:
        """The feed was read after ``last_seq``: deliver it, then what arrived meanwhile.

        Events the feed no longer holds (trimmed) are skipped: the sequence jumps and
        clients see the jump.
        """
        self.fetching = False
        held, self._buffer = self._buffer, []
        # The feed's copy wins: after a rollback it is the one the store still holds.
        merged = sorted({e["seq"]: e for e in held + events}.values(), key=lambda e: e["seq"])
        fresh = [e for e in merged if e["seq"] > self.last_seq]
        if fresh and fresh[0]["seq"] > self.last_seq + 1:
            self.last_seq = fresh[0]["seq"] - 1
        for event in fresh:
            self.gift(event)

    def restart(self, epoch: str, prev_epoch: str, valid_seq: int) -> None:
        """A new epoch: only the history up to ``valid_seq`` is still true. Forget the
        rest (the caller reads the feed after ``valid_seq`` next, with ``repair``)."""
        self.flush()
        self.epoch, self.prev_epoch = epoch, prev_epoch
        self.last_seq = min(self.last_seq, valid_seq)
        self.recent = {s: t for s, t in self.recent.items() if s <= self.last_seq}
        self._buffer = []  # the feed read that follows holds whatever of it is true
        self.fetching = False

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        events, self._pending = self._pending, []
        self._sent_at = time.monotonic()
        delivery = Delivery(events, events[0]["seq"], events[-1]["seq"])
        for connection in self.connections:
            connection.deliver(delivery)
        announcements, self._announcements = self._announcements, []
        for message, droppable in announcements:
            self.broadcast(message, droppable=droppable)

    def announce(self, message: Message, *, droppable: bool) -> None:
        """An event a gift caused (``level_up``, ``goal_reached``): sent right after the
        frame that carries that gift. In a hot room it waits for the tick with the gift
        instead of flushing it early (which would undo the coalescing for every viewer).
        At most ``ROOM_ANNOUNCEMENTS_MAX`` wait; a droppable one past that is dropped, the
        gift event carries the level anyway."""
        if not self._pending:
            self.broadcast(message, droppable=droppable)
        elif len(self._announcements) < ROOM_ANNOUNCEMENTS_MAX or not droppable:
            self._announcements.append((message, droppable))

    def broadcast(self, message: Message, *, droppable: bool = True) -> None:
        """A control message (stats, leaderboard, stream state): encoded once per format.

        A droppable one (stats, leaderboard) goes out ``BROADCAST_CHUNK_MAX`` connections
        per loop turn: sending it to 5,000 viewers at once takes the process 50-60 ms,
        and a gift arriving meanwhile would wait for all of it. One that must keep its
        place among the gifts (the stream ended) goes to everyone at once.
        """
        frames: dict[WireFormat, OutFrame] = {}

        def frame_for(fmt: WireFormat) -> OutFrame:
            frame = frames.get(fmt)
            if frame is None:
                frame = frames[fmt] = encode_frame(message, fmt)
            return frame

        if not droppable or len(self.connections) <= BROADCAST_CHUNK_MAX:
            for connection in self.connections:
                connection.send_frame(frame_for(connection.fmt), droppable=droppable)
            return
        self._broadcast_chunk(list(self.connections), 0, frame_for)

    def _broadcast_chunk(
        self, targets: list[Connection], start: int, frame_for: Callable[[WireFormat], OutFrame]
    ) -> None:
        end = start + BROADCAST_CHUNK_MAX
        for connection in targets[start:end]:
            if connection in self.connections:  # it may have left since
                connection.send_frame(frame_for(connection.fmt))
        if end < len(targets):
            asyncio.get_running_loop().call_soon(self._broadcast_chunk, targets, end, frame_for)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
