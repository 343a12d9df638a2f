"""A connection in-process: its sequence position, holding while catching up, falling behind."""

from __future__ import annotations

from typing import Any

from server.domain.limits import HELD_DELIVERIES_MAX
from server.realtime.connection import Connection, Delivery
from tests.unit.fakes import settle, viewer


def _delivery(*seqs: int) -> Delivery:
    events: list[dict[str, Any]] = [
        {"type": "gift", "seq": s, "transfer_id": f"t{s}"} for s in seqs
    ]
    return Delivery(events, seqs[0], seqs[-1])


async def test_live_deliveries_at_or_below_last_seq_are_skipped() -> None:
    connection, sink = viewer()
    connection.finish_catching_up(3)
    for d in (_delivery(2, 3), _delivery(3, 4, 5), _delivery(5), _delivery(6)):
        connection.deliver(d)
    await settle()
    assert sink.seqs() == [4, 5, 6]
    assert connection.last_seq == 6


async def test_catching_up_holds_live_events_and_releases_them_in_order_once() -> None:
    connection, sink = viewer()
    connection.deliver(_delivery(1, 2))
    connection.send_frame(Delivery([{"type": "stats"}], 0, 0).frame(connection.fmt))
    connection.deliver(_delivery(3))
    await settle()
    assert sink.messages() == []  # nothing before the welcome
    connection.send({"type": "welcome"})
    connection.send_events([{"type": "gift", "seq": 1}, {"type": "gift", "seq": 2}])
    connection.finish_catching_up(2)
    await settle()
    assert sink.kinds() == ["welcome", "gifts", "stats", "gift"]
    assert sink.seqs() == [1, 2, 3]


async def test_only_the_newest_deliveries_are_held() -> None:
    connection, _ = viewer()
    for seq in range(1, HELD_DELIVERIES_MAX + 11):
        connection.deliver(_delivery(seq))
    assert connection._held is not None
    assert len(connection._held) == HELD_DELIVERIES_MAX
    oldest = connection._held[0]
    assert isinstance(oldest, Delivery) and oldest.first_seq == 11


async def test_a_dropped_gift_makes_the_connection_fall_behind_and_say_so() -> None:
    connection, sink = viewer(frames_max=4)
    behind: list[Connection] = []
    connection.on_behind = behind.append
    connection.finish_catching_up(0)
    sink.backed_up = True
    for seq in range(1, 10):
        connection.deliver(_delivery(seq))
    assert behind == [connection]  # once: it holds everything after that
    assert connection.catching_up
    assert connection.last_seq == 4  # 1-4 queued, 5 dropped
    sink.backed_up = False
    await settle()
    lag = [m for m in sink.messages() if m["type"] == "lag"]
    assert lag == [{"type": "lag", "dropped": 1, "last_seq": 4}]
