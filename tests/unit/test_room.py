"""A room in-process: ordering, coalescing, gaps and duplicates, rollbacks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from server.realtime import room as room_module
from server.realtime.room import Room
from tests.unit.fakes import FakeSink, settle, viewer


def _gift(seq: int, tid: str | None = None) -> dict[str, Any]:
    return {"type": "gift", "seq": seq, "transfer_id": tid or f"t{seq}"}


class _Calls:
    def __init__(self) -> None:
        self.gaps: list[int] = []
        self.rollbacks: list[int] = []


def _room(hot_events_per_s: int = 1_000_000, batch_events_max: int = 50) -> tuple[Room, _Calls]:
    calls = _Calls()
    room = Room(
        "s1",
        batch_ms=20,
        batch_events_max=batch_events_max,
        hot_events_per_s=hot_events_per_s,
        on_gap=lambda r: calls.gaps.append(r.last_seq),
        on_rollback=lambda r: calls.rollbacks.append(r.last_seq),
    )
    return room, calls


def _join(room: Room, n: int = 2) -> list[FakeSink]:
    sinks = []
    for i in range(n):
        connection, sink = viewer(f"v{i}")
        connection.finish_catching_up(room.last_seq)
        room.connections.add(connection)
        sinks.append(sink)
    return sinks


async def test_a_quiet_room_sends_each_gift_at_once_in_order_to_everyone() -> None:
    room, _ = _room()
    sinks = _join(room)
    for seq in range(1, 6):
        room.gift(_gift(seq))
        await asyncio.sleep(0)  # one loop turn: no tick to wait for
        assert all(sink.seqs()[-1:] == [seq] for sink in sinks)
    for sink in sinks:
        assert sink.kinds() == ["gift"] * 5
        assert sink.seqs() == [1, 2, 3, 4, 5]


async def test_gifts_handed_over_in_one_loop_turn_share_a_frame() -> None:
    # What the broker does when the room fell behind: it dispatches everything one socket
    # read brought in the same turn. One frame each would cost the crowd a frame per gift
    # again, so the room would only ever count as many gifts as it managed to send and
    # never turn hot (the 1/100 capacity check: 10,000 viewers, 2 of 10 gifts/s sent).
    room, _ = _room()
    sinks = _join(room)
    for seq in range(1, 6):
        room.gift(_gift(seq))
    await settle()
    for sink in sinks:
        assert sink.kinds() == ["gifts"]
        assert sink.seqs() == [1, 2, 3, 4, 5]


class _SlowCrowd:
    """Stands for a crowd whose frame to everyone takes ``write_s`` of the process's time
    (10,000 viewers at 16 µs a frame on a third of a core: 0.5 s), on a fake clock."""

    def __init__(self, clock: list[float], write_s: float, arrivals: list[float]) -> None:
        self.clock, self.write_s, self.arrivals = clock, write_s, arrivals
        self.frames: list[list[int]] = []
        self.lags_s: list[float] = []

    def deliver(self, delivery: Any) -> None:
        seqs = [e["seq"] for e in delivery.events]
        self.frames.append(seqs)
        self.lags_s.append(self.clock[0] - self.arrivals[seqs[0] - 1])
        self.clock[0] += self.write_s


def _room_on_a_clock(
    monkeypatch: pytest.MonkeyPatch,
    *,
    batch_ms: int,
    hot: int,
    write_s: float,
    arrivals: list[float] | None = None,
) -> tuple[Room, _SlowCrowd]:
    """A room on a fake clock (the crowd's, from 0) with one slow crowd in it."""
    crowd = _SlowCrowd([0.0], write_s, arrivals or [0.0] * 10)
    clock = crowd.clock
    monkeypatch.setattr(room_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    room = Room(
        "s1", batch_ms=batch_ms, batch_events_max=50, hot_events_per_s=hot, on_gap=lambda r: None
    )
    room.connections.add(crowd)  # type: ignore[arg-type]
    return room, crowd


async def test_a_crowd_too_slow_for_a_frame_per_gift_turns_hot_instead_of_falling_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10 gifts/s into a room that is hot above 4/s, and a frame to all its viewers takes
    # 0.3 s: sent one frame per gift it delivers 3.3 a second, so it counts 3.3, stays
    # quiet, and the gifts wait longer and longer (18 s after 10 s in the capacity check).
    arrivals = [n / 10 for n in range(100)]
    room, crowd = _room_on_a_clock(monkeypatch, batch_ms=20, hot=4, write_s=0.3, arrivals=arrivals)
    clock = crowd.clock
    handed = 0
    while handed < len(arrivals) or room.last_seq < len(arrivals) or room._pending:
        if handed < len(arrivals) and arrivals[handed] > clock[0] and not room._pending:
            clock[0] = arrivals[handed]  # idle until the next gift
        # Everything that arrived while the room was writing comes in one socket read,
        # and the broker hands it over in one turn.
        while handed < len(arrivals) and arrivals[handed] <= clock[0]:
            handed += 1
            room.gift(_gift(handed))
        await asyncio.sleep(0.03 if room._pending else 0)  # one tick of a hot room
    assert [s for frame in crowd.frames for s in frame] == list(range(1, 101))
    assert max(crowd.lags_s) < 1.0  # without coalescing: 20 s by the last gift
    assert len(crowd.frames) < 50


async def test_a_hot_room_ticks_from_its_previous_frame_not_from_the_end_of_writing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tick of 250 ms, and the room's frame takes 150 ms to write to everyone: the next
    # frame is due 100 ms after that, not 250 (4 frames a second, not 2.5). Written slower
    # than its tick (a starved core), it goes out on the next loop turn.
    room, crowd = _room_on_a_clock(monkeypatch, batch_ms=250, hot=1, write_s=0.15)
    clock = crowd.clock
    loop = asyncio.get_running_loop()
    room.gift(_gift(1))
    room.gift(_gift(2))
    await settle()  # the quiet frame, written from 0 to 0.15 s
    assert room.hot and crowd.frames == [[1, 2]]
    room.gift(_gift(3))
    handle = room._flush_handle
    assert isinstance(handle, asyncio.TimerHandle)
    assert 0.05 < handle.when() - loop.time() <= 0.1
    room.flush()  # at 0.15 s (early, by hand): written until 0.3 s
    clock[0] += 0.2  # and the process was busy elsewhere until 0.5 s
    room.gift(_gift(4))
    assert room._flush_handle is not None
    assert not isinstance(room._flush_handle, asyncio.TimerHandle)  # due: the next turn
    await settle()
    assert crowd.frames == [[1, 2], [3], [4]]


async def test_a_hot_room_coalesces_into_batches_of_at_most_the_cap() -> None:
    room, _ = _room(hot_events_per_s=3, batch_events_max=4)
    (sink,) = _join(room, 1)
    for seq in range(1, 21):
        room.gift(_gift(seq))
    await asyncio.sleep(0.1)  # one tick
    assert sink.seqs() == list(range(1, 21))
    batches = [m for m in sink.messages() if m["type"] == "gifts"]
    assert batches and all(len(b["events"]) <= 4 for b in batches)
    assert len(sink.messages()) < 20


async def test_a_jump_holds_events_and_the_feed_fills_the_gap_without_duplicates() -> None:
    room, calls = _room()
    (sink,) = _join(room, 1)
    room.gift(_gift(1))
    room.gift(_gift(4))  # 2 and 3 were lost
    room.gift(_gift(5))
    assert calls.gaps == [1] and room.fetching
    room.repair()  # already reading: no second read
    assert calls.gaps == [1]
    room.fetched([_gift(2), _gift(3), _gift(4)])
    room.gift(_gift(5))  # a late live copy
    room.gift(_gift(6))
    await settle()
    assert sink.seqs() == [1, 2, 3, 4, 5, 6]
    assert not room.fetching


async def test_a_trimmed_feed_makes_the_sequence_jump_visibly() -> None:
    room, _ = _room()
    (sink,) = _join(room, 1)
    room.gift(_gift(1))
    room.gift(_gift(10))
    room.fetched([_gift(8), _gift(9)])  # 2-7 are gone from the feed
    await settle()
    assert sink.seqs() == [1, 8, 9, 10]


async def test_the_same_sequence_for_another_transfer_is_a_rollback_not_a_duplicate() -> None:
    room, calls = _room()
    (sink,) = _join(room, 1)
    for seq in range(1, 6):
        room.gift(_gift(seq))
    room.gift(_gift(3))  # the same gift again: dropped
    assert calls.rollbacks == []
    room.gift(_gift(4, tid="new-4"))  # the store numbers a new gift 4
    assert calls.rollbacks == [5] and room.fetching
    room.restart("e2", "e1", 3)
    assert room.last_seq == 3 and room.epoch == "e2" and room.prev_epoch == "e1"
    for connection in room.connections:
        connection.last_seq = 3  # the hub rewinds each connection (test_hub)
    room.fetched([_gift(4, tid="new-4"), _gift(5, tid="new-5")])
    await settle()
    assert sink.seqs() == [1, 2, 3, 4, 5, 4, 5]
    assert room.recent[4] == "new-4"


async def test_the_feed_copy_wins_over_a_held_one() -> None:
    room, _ = _room()
    (sink,) = _join(room, 1)
    room.gift(_gift(1))
    room.gift(_gift(3, tid="stale"))  # held: 2 is missing
    room.fetched([_gift(2), _gift(3, tid="true")])
    await settle()
    tids = [m["transfer_id"] for m in sink.gifts()]
    assert tids == ["t1", "t2", "true"]


async def test_a_broadcast_keeps_its_place_among_the_gifts() -> None:
    room, _ = _room(hot_events_per_s=1, batch_events_max=50)
    (sink,) = _join(room, 1)
    for seq in range(1, 4):
        room.gift(_gift(seq))
    room.flush()
    room.broadcast({"type": "stream", "state": "ended"}, droppable=False)
    await settle()
    assert sink.kinds()[-1] == "stream"
    assert sink.seqs() == [1, 2, 3]


async def test_an_announcement_follows_its_gift_and_keeps_a_hot_room_coalesced() -> None:
    room, _ = _room(hot_events_per_s=3, batch_events_max=50)
    (sink,) = _join(room, 1)
    for seq in range(1, 6):
        room.gift(_gift(seq))
    room.announce({"type": "level_up", "seq": 5}, droppable=True)
    for seq in range(6, 9):
        room.gift(_gift(seq))
    await asyncio.sleep(0.1)
    await settle()
    kinds = sink.kinds()
    # The level_up waited for the tick that carried its gift: no early flush of the batch.
    assert kinds.index("level_up") > 0 and kinds[kinds.index("level_up") - 1] in ("gifts", "gift")
    assert kinds.count("gifts") + kinds.count("gift") <= 4
    assert sorted(sink.seqs()) == list(range(1, 9))


async def test_a_quiet_room_announces_at_once() -> None:
    room, _ = _room()
    (sink,) = _join(room, 1)
    room.gift(_gift(1))
    room.announce({"type": "goal_reached", "seq": 1}, droppable=False)
    await settle()
    assert sink.kinds() == ["gift", "goal_reached"]
