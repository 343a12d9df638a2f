"""The outbox in-process: order, corking, drops and lag accounting, every bound."""

from __future__ import annotations

import asyncio

from server.domain.limits import IN_FLIGHT_GIFTS_MAX
from server.protocol.close_codes import CloseCode
from server.protocol.codec import OutFrame, WireFormat, encode_frame
from server.realtime.outbox import Outbox
from tests.unit.fakes import FakeSink, frames_of, never_send, settle


def _frame(n: int, pad: int = 0) -> OutFrame:
    return encode_frame({"type": "gift", "seq": n, "pad": "x" * pad}, WireFormat.JSON)


def _outbox(sink: FakeSink, **kw: object) -> Outbox:
    args: dict[str, object] = {"frames_max": 8, "bytes_max": 1 << 20, "lagging_s_max": 5.0}
    args.update(kw)
    outbox = Outbox(never_send, sink=sink, **args)  # type: ignore[arg-type]
    outbox.lag_notice = lambda dropped: encode_frame(
        {"type": "lag", "dropped": dropped}, WireFormat.JSON
    )
    return outbox


async def test_frames_of_one_turn_are_written_in_order_in_one_write() -> None:
    sink = FakeSink()
    outbox = _outbox(sink)
    for n in range(1, 6):
        assert outbox.push(_frame(n))
    assert sink.writes == 0  # corked until the end of the loop's turn
    await settle()
    assert sink.writes == 1
    assert [m["seq"] for m in sink.messages()] == [1, 2, 3, 4, 5]


async def test_a_backed_up_sink_queues_then_drops_droppable_frames_and_counts_them() -> None:
    sink = FakeSink()
    sink.backed_up = True
    drops: list[int] = []
    outbox = _outbox(sink, on_drop=drops.append)
    results = [outbox.push(_frame(n)) for n in range(1, 13)]
    assert results == [True] * 8 + [False] * 4
    assert len(outbox) == 8 and outbox.dropped == 4 and sum(drops) == 4
    sink.backed_up = False
    await settle()
    messages = sink.messages()
    assert [m["seq"] for m in messages if m["type"] == "gift"] == list(range(1, 9))
    # Told once it drained, with the number missed; the count starts again at zero.
    assert [m for m in messages if m["type"] == "lag"] == [{"type": "lag", "dropped": 4}]
    assert outbox.dropped == 0


async def test_frames_that_must_not_be_lost_pass_the_bound_but_not_twice_it() -> None:
    sink = FakeSink()
    sink.backed_up = True
    closed: list[bool] = []
    outbox = _outbox(sink, on_close=lambda: closed.append(True))
    hard = 2 * 8 + IN_FLIGHT_GIFTS_MAX
    for n in range(hard):
        assert outbox.push(_frame(n), droppable=False)
    assert not closed
    assert not outbox.push(_frame(hard), droppable=False)
    assert outbox.close_code is CloseCode.SLOW_CONSUMER and closed == [True]
    assert len(outbox) == 0 and outbox.queued_bytes == 0  # nothing held after the close


async def test_the_byte_bound_drops_like_the_frame_bound() -> None:
    sink = FakeSink()
    sink.backed_up = True
    outbox = _outbox(sink, frames_max=1000, bytes_max=10_000)
    pushed = sum(outbox.push(_frame(n, pad=1000)) for n in range(50))
    assert pushed == 10  # 10 frames of ~1 KiB reach 10,000 bytes
    assert outbox.queued_bytes >= 10_000 and outbox.dropped == 40


async def test_a_connection_that_stays_full_is_closed_with_4008() -> None:
    sink = FakeSink()
    sink.backed_up = True
    closed = asyncio.Event()
    outbox = _outbox(sink, lagging_s_max=0.05, on_close=closed.set)
    for n in range(20):
        outbox.push(_frame(n))
    await asyncio.wait_for(closed.wait(), 5)
    assert outbox.close_code is CloseCode.SLOW_CONSUMER


async def test_draining_half_stops_the_clock() -> None:
    sink = FakeSink()
    sink.backed_up = True
    outbox = _outbox(sink, lagging_s_max=0.1)
    for n in range(20):
        outbox.push(_frame(n))
    sink.backed_up = False
    await settle()
    await asyncio.sleep(0.2)
    assert outbox.close_code is None


async def test_wait_room_returns_once_drained_and_false_once_closed() -> None:
    sink = FakeSink()
    sink.backed_up = True
    outbox = _outbox(sink)
    for n in range(8):
        outbox.push(_frame(n), droppable=False)
    assert not outbox.has_room()
    waiter = asyncio.ensure_future(outbox.wait_room())
    await settle()
    assert not waiter.done()
    sink.backed_up = False
    assert await asyncio.wait_for(waiter, 5) is True
    assert outbox.has_room()

    sink.backed_up = True
    for n in range(8):
        outbox.push(_frame(n), droppable=False)
    waiter = asyncio.ensure_future(outbox.wait_room())
    await settle()
    outbox.close(CloseCode.GOING_AWAY, "bye")
    assert await asyncio.wait_for(waiter, 5) is False


async def test_without_a_sink_every_frame_goes_through_send_in_order() -> None:
    sent: list[bytes] = []

    async def send(frame: OutFrame) -> None:
        await asyncio.sleep(0)
        sent.append(frame.wire)

    outbox = Outbox(send, frames_max=8, bytes_max=1 << 20, lagging_s_max=5.0)
    for n in range(5):
        outbox.push(_frame(n))
    await settle(50)
    assert [m["seq"] for m in frames_of(b"".join(sent))] == [0, 1, 2, 3, 4]
