"""One viewer's (or creator's) place in a room: format, sequence position, outbox."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from server.domain.accounts import Identity
from server.domain.limits import HELD_DELIVERIES_MAX
from server.protocol import events
from server.protocol.codec import OutFrame, WireFormat, encode_frame
from server.protocol.events import Message
from server.realtime.outbox import Outbox


@dataclass(slots=True)
class Delivery:
    """Gift events for a room, encoded at most once per wire format."""

    events: list[Message]
    first_seq: int
    last_seq: int
    frames: dict[WireFormat, OutFrame] = field(default_factory=dict)

    def frame(self, fmt: WireFormat) -> OutFrame:
        frame = self.frames.get(fmt)
        if frame is None:
            frame = self.frames[fmt] = encode_frame(events.gift_frame(self.events), fmt)
        return frame


class Connection:
    """A subscriber of a room.

    ``last_seq`` is the highest gift sequence this connection has been sent: live deliveries
    at or below it are skipped, which makes resuming from the feed gapless and duplicate
    free. While ``catching_up`` (before the welcome is out, during a resume, or after its
    outbox dropped a gift frame), live deliveries and room broadcasts are held back until
    the feed read is done; only the newest ``HELD_DELIVERIES_MAX`` are kept, since the feed
    read covers anything older.

    A dropped gift frame makes the connection fall behind: it calls ``on_behind`` (set by
    the hub, which re-sends the missed gifts from the feed once the outbox has room), so a
    lagging viewer sees every gift in order, late, instead of a hole. The connection never
    starts I/O itself.
    """

    __slots__ = (
        "_held",
        "catching_up",
        "conn_id",
        "fmt",
        "identity",
        "last_seq",
        "on_behind",
        "outbox",
        "stream_id",
    )

    def __init__(self, conn_id: str, identity: Identity, fmt: WireFormat, outbox: Outbox) -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.fmt = fmt
        self.outbox = outbox
        self.stream_id = ""
        self.last_seq = 0
        self.catching_up = True
        self.on_behind: Callable[[Connection], None] | None = None
        outbox.lag_notice = self._lag_notice
        # Created only while catching up: an idle viewer should not pay ~600 B for it.
        self._held: deque[Delivery | tuple[OutFrame, bool]] | None = None

    def _lag_notice(self, dropped: int) -> OutFrame:
        return encode_frame(events.lag(dropped, self.last_seq), self.fmt)

    def send(self, message: Message, *, droppable: bool = False) -> bool:
        """Queue a message of this connection only (never dropped unless ``droppable``)."""
        return self.outbox.push(encode_frame(message, self.fmt), droppable=droppable)

    def _hold(self, item: Delivery | tuple[OutFrame, bool]) -> None:
        if self._held is None:
            self._held = deque(maxlen=HELD_DELIVERIES_MAX)
        self._held.append(item)

    def send_frame(self, frame: OutFrame, *, droppable: bool = True) -> None:
        """A room broadcast (stats, leaderboard, stream state), in order with the gifts."""
        if self.catching_up:
            self._hold((frame, droppable))
            return
        self.outbox.push(frame, droppable=droppable, cork=False)

    def deliver(self, delivery: Delivery) -> None:
        if self.catching_up:
            self._hold(delivery)
            return
        if delivery.last_seq <= self.last_seq:
            return
        if delivery.first_seq <= self.last_seq:
            # Part of this batch was already sent (from the feed): send the rest only.
            rest = [e for e in delivery.events if e["seq"] > self.last_seq]
            pushed = self.outbox.push(encode_frame(events.gift_frame(rest), self.fmt))
        else:
            pushed = self.outbox.push(delivery.frame(self.fmt), cork=False)
        if pushed:
            self.last_seq = delivery.last_seq
        else:
            # The viewer is behind: hold everything until the gifts from last_seq on are
            # re-sent from the feed.
            self.catching_up = True
            if self.on_behind is not None:
                self.on_behind(self)

    def start_catching_up(self) -> None:
        self.catching_up = True

    def finish_catching_up(self, last_seq: int) -> None:
        """The feed was read up to ``last_seq``: send what arrived live meanwhile."""
        self.last_seq = max(self.last_seq, last_seq)
        self.catching_up = False
        held, self._held = self._held, None
        for item in held or ():
            if isinstance(item, Delivery):
                self.deliver(item)
            else:
                self.send_frame(item[0], droppable=item[1])

    def forget_held(self) -> None:
        """Drop the held deliveries and broadcasts (the history they belong to changed)."""
        self._held = None

    def send_events(self, batch: list[Message]) -> None:
        """Send gift events read from the feed (one frame), advancing ``last_seq``."""
        fresh = [e for e in batch if e["seq"] > self.last_seq]
        if fresh:
            self.outbox.push(encode_frame(events.gift_frame(fresh), self.fmt), droppable=False)
            self.last_seq = fresh[-1]["seq"]
