"""A fake broker and fake frame sinks for in-process tests of ``server/realtime``.

They keep the ports' contracts (``server/realtime/ports.py``) and nothing more: the broker
delivers a room's events in order to a subscribed listener and holds a feed per stream;
a test can make it lose events, roll a stream back, or fail. A sink records the frames
written to it and can be made to back up.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.domain.accounts import Identity, Role
from server.domain.errors import UnavailableError
from server.domain.levels import TopGifter, level_for
from server.protocol.codec import WireFormat
from server.realtime.connection import Connection
from server.realtime.outbox import Outbox
from server.realtime.ports import BrokerListener, RoomSnapshot, StreamPosition


def frames_of(data: bytes) -> list[dict[str, Any]]:
    """Decode the unmasked server frames (JSON text) in ``data``."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(data):
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[i : i + 2])
            i += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[i : i + 8])
            i += 8
        out.append(orjson.loads(data[i : i + length]))
        i += length
    return out


def gifts_in(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gift events in ``messages``, in order (``gift`` and ``gifts`` frames)."""
    gifts: list[dict[str, Any]] = []
    for message in messages:
        if message["type"] == "gift":
            gifts.append(message)
        elif message["type"] == "gifts":
            gifts.extend(message["events"])
    return gifts


class FakeSink:
    """``ports.FrameSink`` that records what is written; ``backed_up`` stops writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0
        self.open = True
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def backed_up(self) -> bool:
        return not self._writable.is_set()

    @backed_up.setter
    def backed_up(self, value: bool) -> None:
        if value:
            self._writable.clear()
        else:
            self._writable.set()

    def writable(self) -> bool:
        return self.open and self._writable.is_set()

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.data += data

    def try_write(self, data: bytes) -> bool:
        if not self.writable():
            return False
        self.write(data)
        return True

    async def wait_writable(self) -> bool:
        await self._writable.wait()
        return self.open

    def messages(self) -> list[dict[str, Any]]:
        return frames_of(bytes(self.data))

    def gifts(self) -> list[dict[str, Any]]:
        return gifts_in(self.messages())

    def seqs(self) -> list[int]:
        return [gift["seq"] for gift in self.gifts()]

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages()]


async def never_send(frame: object) -> None:
    raise AssertionError("a sink connection never uses the ASGI send")


def viewer(
    name: str = "v",
    *,
    sink: FakeSink | None = None,
    frames_max: int = 64,
    bytes_max: int = 1 << 20,
    lagging_s_max: float = 5.0,
) -> tuple[Connection, FakeSink]:
    sink = sink or FakeSink()
    outbox = Outbox(
        never_send,
        frames_max=frames_max,
        bytes_max=bytes_max,
        lagging_s_max=lagging_s_max,
        sink=sink,
    )
    identity = Identity(name, Role.VIEWER, name)
    return Connection(f"c-{name}", identity, WireFormat.JSON, outbox), sink


@dataclass
class FakeStream:
    seq: int = 0
    epoch: str = "e1"
    prev_epoch: str = ""
    prev_epoch_seq: int = 0
    feed: list[bytes] = field(default_factory=list)
    tids: int = 0
    state: str = "live"


class FakeBroker:
    """``ports.Broker`` in memory. ``publish`` commits a gift (feed + live event)."""

    def __init__(self) -> None:
        self.listener: BrokerListener | None = None
        self.streams: dict[str, FakeStream] = {}
        self.subscribed: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.losing: set[str] = set()
        """Streams whose live events are lost (the feed still gets them)."""
        self.down = False
        self.feed_delay: asyncio.Event | None = None
        self.snapshot_delay: asyncio.Event | None = None
        """Set: a snapshot is read at once but returned only when it is set (stale)."""
        self.bumps = 0
        self.viewers_reported: dict[str, int] = {}

    connected = True

    async def start(self, listener: BrokerListener) -> None:
        self.listener = listener

    async def stop(self) -> None:
        pass

    def stream(self, stream_id: str) -> FakeStream:
        return self.streams.setdefault(stream_id, FakeStream())

    def _check(self) -> None:
        if self.down:
            raise UnavailableError("fake broker down")

    async def subscribe(self, stream_id: str) -> None:
        # Applied in call order, as Redis applies the commands of one connection; the
        # confirmation comes a turn later.
        self._check()
        self.calls.append(("subscribe", stream_id))
        self.subscribed.add(stream_id)
        await asyncio.sleep(0)

    async def unsubscribe(self, stream_id: str) -> None:
        self.calls.append(("unsubscribe", stream_id))
        self.subscribed.discard(stream_id)
        await asyncio.sleep(0)

    def publish(self, stream_id: str, **fields: Any) -> dict[str, Any]:
        s = self.stream(stream_id)
        s.seq += 1
        s.tids += 1
        event = {
            "type": "gift",
            "seq": s.seq,
            "epoch": s.epoch,
            "transfer_id": f"{s.epoch}-{s.tids}",
            "stream_id": stream_id,
            "sender_id": "alice",
            "sender_name": "Alice",
            "gift_id": "rose",
            "count": 1,
            "combo": 1,
            "coins": 1,
            "diamonds": 0,
            "ts": 0,
            "level": 1,
            **fields,
        }
        data = orjson.dumps(event)
        s.feed.append(data)
        self.deliver(stream_id, data)
        return event

    def deliver(self, stream_id: str, data: bytes) -> None:
        if stream_id in self.subscribed and stream_id not in self.losing:
            assert self.listener is not None
            self.listener.room_event(stream_id, data)

    def change_state(self, stream_id: str, state: str) -> bytes:
        """The stream starts or ends (start_stream.lua, end_stream.lua): its state, then the
        event (lost while ``losing``). Returns the event, for a test to deliver late."""
        s = self.stream(stream_id)
        s.state = state
        event: dict[str, Any] = {"type": "stream", "stream_id": stream_id, "state": state}
        if state == "ended":
            event["seq"] = s.seq
        data = orjson.dumps(event)
        self.deliver(stream_id, data)
        return data

    def roll_back(self, stream_id: str, seq: int) -> None:
        """The store lost every gift after ``seq`` (a restore from an older copy)."""
        s = self.stream(stream_id)
        s.feed = [e for e in s.feed if orjson.loads(e)["seq"] <= seq]
        s.seq = seq

    async def snapshot(
        self, stream_id: str, *, viewers_here: int | None = None
    ) -> RoomSnapshot | None:
        self._check()
        await asyncio.sleep(0)
        if viewers_here is not None:
            self.viewers_reported[stream_id] = viewers_here
        s = self.streams.get(stream_id)
        if s is None:
            return None
        snapshot = RoomSnapshot(
            stream_id=stream_id,
            creator_id="bob",
            creator_name="Bob",
            title="t",
            state=s.state,
            position=StreamPosition(s.seq, s.epoch),
            coins=s.seq,
            diamonds=0,
            gifts=s.seq,
            viewers=sum(self.viewers_reported.values()),
            top=[TopGifter("alice", "Alice", s.seq, level_for(s.seq))] if s.seq else [],
            prev_epoch=s.prev_epoch,
            prev_epoch_seq=s.prev_epoch_seq,
        )
        if self.snapshot_delay is not None:
            await self.snapshot_delay.wait()
        return snapshot

    async def feed(self, stream_id: str, after_seq: int, limit: int) -> list[bytes]:
        self._check()
        self.calls.append(("feed", stream_id))
        if self.feed_delay is not None:
            await self.feed_delay.wait()
        await asyncio.sleep(0)
        s = self.stream(stream_id)
        return [e for e in s.feed if orjson.loads(e)["seq"] > after_seq][:limit]

    async def bump_epoch(self, stream_id: str, expected: str, valid_seq: int) -> StreamPosition:
        self._check()
        await asyncio.sleep(0)
        s = self.stream(stream_id)
        if s.epoch == expected:
            self.bumps += 1
            s.prev_epoch, s.prev_epoch_seq = expected, min(valid_seq, s.seq)
            s.epoch = f"e{self.bumps + 1}"
            data = orjson.dumps(
                {
                    "type": "epoch",
                    "stream_id": stream_id,
                    "epoch": s.epoch,
                    "prev_epoch": s.prev_epoch,
                    "prev_epoch_seq": s.prev_epoch_seq,
                }
            )
            self.deliver(stream_id, data)
        return StreamPosition(s.prev_epoch_seq, s.epoch)

    async def viewers(self, stream_id: str) -> int:
        return sum(self.viewers_reported.values())


async def settle(turns: int = 20) -> None:
    """Let the event loop run the tasks and callbacks that are ready."""
    for _ in range(turns):
        await asyncio.sleep(0)
