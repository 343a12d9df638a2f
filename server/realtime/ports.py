"""The two ports of the fan-out core: the broker behind it and the frame sinks in front.

Realtime never imports Redis or a WebSocket library. It is fed room events by a ``Broker``
(``server/broker/redis_pubsub.py`` over Redis pub/sub; a sharded-pub/sub broker for Redis
Cluster is another class with the same methods) and writes frames to one ``FrameSink`` per
connection (``server/web/uvicorn_ws.py``). Tests drive it with a fake of each
(``tests/unit/fakes.py``).

Each port states the same three things: the order it keeps, its delivery guarantee, and
what happens after a reconnect or a loss of data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from server.domain.goals import Goal
from server.domain.levels import TopGifter


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a history stands: the last gift ``seq`` of a stream within its ``epoch``.

    A ``seq`` compares only within one epoch. The epoch changes when the history itself
    changed (Redis was restored from an older copy, or failed over to a replica that had
    not seen the last writes): a client holding a position of an older epoch is told so
    (``history_changed``) instead of being resumed from a number that now means another
    gift.
    """

    seq: int
    epoch: str


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """A stream's state as the broker holds it, read in one step.

    ``viewers`` counts every process's viewers as of their last report; ``top`` is the
    leaderboard, most coins first (with names and gifter levels); ``goals`` the stream's goals
    with their progress, in creation order. ``prev_epoch``/``prev_epoch_seq``: the epoch before the
    current one and the last sequence of it that is still part of today's history (a
    position of that epoch at or below it is still good); empty and 0 when there is none.
    """

    stream_id: str
    creator_id: str
    title: str
    state: str
    creator_name: str
    position: StreamPosition
    coins: int
    diamonds: int
    gifts: int
    viewers: int = 0
    top: list[TopGifter] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    prev_epoch: str = ""
    prev_epoch_seq: int = 0


class BrokerListener(Protocol):
    """What the broker calls back (the hub). Called from the event loop, never awaited."""

    def room_event(self, stream_id: str, data: bytes) -> None:
        """One event of a room, as published (JSON): a gift, a stream change, an epoch."""
        ...

    def room_events_lost(self, stream_id: str | None) -> None:
        """Events of ``stream_id`` (``None``: of every room) may have been missed: the
        subscription was re-established after an outage, or dropped and renewed. The
        listener reads the missing ones from the feed."""
        ...


class Broker(Protocol):
    """Room events from the ledger to this process, and the reads the rooms need.

    Order: events of one room arrive in the order they were published, which is their
    ``seq`` order (the ledger publishes inside the script that assigns the sequence).
    Nothing is promised across rooms.

    Delivery: at most once, best effort. Between ``subscribe`` returning and
    ``unsubscribe``, every event published is delivered unless the broker's connection is
    lost; a loss is always followed, once the broker can read again, by
    ``room_events_lost``. So the listener gets every event *at least once* by combining the
    live events with ``feed`` reads, and must drop duplicates by ``seq`` itself.

    After a reconnect the broker subscribes again to every room it was subscribed to, by
    itself, before it calls ``room_events_lost(None)``. After a loss of data in the store
    (a restore, a failover) the sequence of a stream may go back: the broker reports what
    the store holds and the listener detects the rollback (``docs/fan-out.md``, epochs).

    Every read may raise ``UnavailableError`` (the store cannot be reached in time).
    """

    @property
    def connected(self) -> bool:
        """True while events can be received (for readiness)."""
        ...

    async def start(self, listener: BrokerListener) -> None: ...

    async def stop(self) -> None: ...

    async def subscribe(self, stream_id: str) -> None:
        """Return once events of the room published from now on will be delivered."""
        ...

    async def unsubscribe(self, stream_id: str) -> None:
        """Stop the room's events (a later ``subscribe`` starts them again)."""
        ...

    async def snapshot(
        self, stream_id: str, *, viewers_here: int | None = None
    ) -> RoomSnapshot | None:
        """The stream's state, or None if there is no such stream. With ``viewers_here``,
        first report this process's viewer count of the room (kept for a few stats
        intervals), in the same round trip."""
        ...

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Up to ``limit`` gift events with ``seq > after_seq``, oldest first, as
        published (the feed is trimmed: the oldest may be gone)."""
        ...

    async def bump_epoch(self, stream_id: str, expected: str, valid_seq: int) -> StreamPosition:
        """Start a new epoch if the stream is still in ``expected`` (compare and set),
        keeping ``valid_seq`` as the last sequence of ``expected`` that is still history.
        Returns the stream's epoch and that sequence, whoever set them."""
        ...

    async def viewers(self, stream_id: str) -> int:
        """Viewers of the room across every process, as of their last report."""
        ...


class FrameSink(Protocol):
    """Writes complete WebSocket frames to one connection without awaiting.

    Order: frames are written in the order of the calls. Delivery: ``write`` hands the
    bytes to the transport, which sends them unless the connection is lost; there is no
    acknowledgement and no retry. ``write`` takes one or more whole, unfragmented frames
    (``OutFrame.wire``); it never blocks, so it may take the transport's buffer past its
    high-water mark by that one write. ``writable`` is True only while the connection is
    open and its buffer is below the high-water mark (not backed up). ``wait_writable``
    returns True once the buffer drained below the low-water mark, False when the
    connection can never be written again (after a close or a lost peer there is no
    reconnect: the client opens a new connection and resumes).

    The sink does not close the connection: the outbox's owner does, with the outbox's
    ``close_code``, when ``Outbox.on_close`` is called.
    """

    def writable(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def try_write(self, data: bytes) -> bool:
        """``write`` if ``writable``, in one call; False (nothing written) otherwise."""
        ...

    async def wait_writable(self) -> bool: ...
