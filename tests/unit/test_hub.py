"""The hub in-process with a fake broker and fake sinks: join, resume, repair, epochs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.protocol.close_codes import CloseCode
from server.protocol.events import Message
from server.realtime.connection import Connection
from server.realtime.hub import Hub
from server.realtime.ports import RoomSnapshot
from tests.unit.fakes import FakeBroker, FakeSink, gifts_in, settle, viewer

STREAM = "s1"


def _welcome(snapshot: RoomSnapshot) -> Message:
    return {"type": "welcome", "last_seq": snapshot.position.seq, "epoch": snapshot.position.epoch}


@pytest.fixture
async def broker() -> FakeBroker:
    broker = FakeBroker()
    broker.stream(STREAM)
    return broker


@pytest.fixture
async def hub(broker: FakeBroker) -> AsyncIterator[Hub]:
    hub = Hub(
        broker,
        load_catalog(),
        Limits(batch_events_max=5, resume_events_max=40),
        batch_ms=10,
        hot_events_per_s=1_000_000,
        stats_interval_s=3600,
    )
    await hub.start()
    yield hub
    await hub.stop()


async def _join(
    hub: Hub, name: str = "v", *, since: int | None = None, epoch: str | None = None, **kw: object
) -> tuple[Connection, FakeSink]:
    connection, sink = viewer(name, **kw)  # type: ignore[arg-type]
    await hub.join(connection, STREAM, _welcome, since=since, epoch=epoch)
    return connection, sink


async def test_join_queues_the_welcome_before_any_live_event(hub: Hub, broker: FakeBroker) -> None:
    broker.publish(STREAM)
    _, sink = await _join(hub)
    broker.publish(STREAM)
    await settle()
    assert sink.kinds() == ["welcome", "gift"]
    assert sink.messages()[0]["last_seq"] == 1 and sink.seqs() == [2]
    # Live events get the catalog's display fields, like history and resumed ones.
    gift = sink.messages()[1]
    assert {"gift_name", "animation", "tier"} <= gift.keys()


async def test_join_since_resumes_without_duplicates_while_live_events_arrive(
    hub: Hub, broker: FakeBroker
) -> None:
    await _join(hub, "first")  # the room is open and subscribed
    for _ in range(12):
        broker.publish(STREAM)
    broker.feed_delay = asyncio.Event()
    joining = asyncio.ensure_future(_join(hub, "late", since=3))
    await settle()
    for _ in range(3):
        broker.publish(STREAM)  # live while the feed read is in flight
    broker.feed_delay.set()
    broker.feed_delay = None
    _, sink = await joining
    broker.publish(STREAM)
    await settle()
    assert sink.kinds()[0] == "welcome"
    assert sink.seqs() == list(range(4, 17))


async def test_a_lost_live_event_is_read_from_the_feed_at_the_next_one(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    broker.publish(STREAM)
    broker.losing.add(STREAM)
    broker.publish(STREAM)
    broker.publish(STREAM)
    broker.losing.clear()
    broker.publish(STREAM)
    await settle()
    assert sink.seqs() == [1, 2, 3, 4]


async def test_events_lost_by_a_reconnect_are_read_from_the_feed(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    broker.losing.add(STREAM)
    for _ in range(3):
        broker.publish(STREAM)
    broker.losing.clear()
    hub.room_events_lost(None)  # the broker reconnected and subscribed again
    await settle()
    assert sink.seqs() == [1, 2, 3]


async def test_a_stats_tick_repairs_a_loss_with_no_later_event(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    broker.losing.add(STREAM)
    broker.publish(STREAM)
    await hub.refresh(STREAM)
    await settle()
    assert sink.seqs() == [1]
    assert "stats" in sink.kinds() and "leaderboard" in sink.kinds()


@pytest.mark.parametrize("unsubscribe_first", [False, True])
async def test_a_room_reopening_while_its_subscription_drops(
    hub: Hub, broker: FakeBroker, unsubscribe_first: bool
) -> None:
    first, _ = await _join(hub, "a")
    broker.publish(STREAM)
    hub.leave(first)  # the last viewer left: the unsubscribe is on its way
    if unsubscribe_first:
        await asyncio.sleep(0)  # it went out before the room opened again
    broker.publish(STREAM)  # nobody here to see it
    _, sink = await _join(hub, "b")  # the room opens again
    broker.publish(STREAM)
    await settle()
    assert STREAM in hub.rooms and STREAM in broker.subscribed
    unsubscribes = broker.calls.count(("unsubscribe", STREAM))
    assert unsubscribes == (1 if unsubscribe_first else 0)
    # The reopened room starts from the stream's sequence and misses nothing after it.
    assert sink.messages()[0]["last_seq"] == 2
    assert sink.seqs() == [3]


async def test_a_lagging_viewer_gets_every_gift_late_in_order(hub: Hub, broker: FakeBroker) -> None:
    connection, sink = await _join(hub, frames_max=4)
    await settle()  # the welcome is written
    sink.backed_up = True
    for _ in range(30):
        broker.publish(STREAM)
    await settle()
    assert connection.catching_up
    sink.backed_up = False
    await settle(100)
    broker.publish(STREAM)
    await settle()
    kinds = sink.kinds()
    assert "lag" in kinds
    assert sink.seqs() == list(range(1, 32))
    assert connection.outbox.close_code is None


async def test_a_resume_flood_is_bounded_and_closed_with_4008(hub: Hub, broker: FakeBroker) -> None:
    for _ in range(200):
        broker.publish(STREAM)
    connection, sink = await _join(hub, frames_max=4, lagging_s_max=0.2)
    sink.backed_up = True  # it never reads again
    outbox = connection.outbox
    peak = 0

    async def flood() -> None:
        nonlocal peak
        for _ in range(100):
            await hub.resume(connection, 0)
            peak = max(peak, len(outbox))

    await asyncio.wait_for(flood(), 10)
    # Every resume waited for room; none queued past the bound.
    assert peak <= 4
    assert outbox.close_code is CloseCode.SLOW_CONSUMER


async def test_one_catch_up_at_a_time(hub: Hub, broker: FakeBroker) -> None:
    for _ in range(20):
        broker.publish(STREAM)
    connection, sink = await _join(hub)
    broker.feed_delay = asyncio.Event()
    first = asyncio.ensure_future(hub.resume(connection, 0))
    await settle()
    second = asyncio.ensure_future(hub.resume(connection, 10))
    await settle()
    broker.feed_delay.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    # The first was replaced before it queued anything: the gifts after 10, once.
    assert sink.seqs() == list(range(11, 21))


async def test_a_rollback_seen_live_starts_a_new_epoch_and_tells_who_saw_more(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    for _ in range(5):
        broker.publish(STREAM)
    await settle()
    broker.roll_back(STREAM, 3)  # gifts 4 and 5 are gone from the store
    broker.publish(STREAM, sender_id="carol")  # a new, paid gift numbered 4
    broker.publish(STREAM, sender_id="carol")
    await settle(100)
    assert broker.bumps == 1
    messages = sink.messages()
    changed = [m for m in messages if m["type"] == "history_changed"]
    assert changed == [{"type": "history_changed", "epoch": "e2", "from_seq": 4}]
    gifts = gifts_in(messages[messages.index(changed[0]) + 1 :])
    # Every paid gift is seen: carol's two, in the new epoch, numbered 4 and 5.
    assert [(g["seq"], g["sender_id"], g["epoch"]) for g in gifts] == [
        (4, "carol", "e2"),
        (5, "carol", "e2"),
    ]
    broker.publish(STREAM)
    await settle()
    assert sink.seqs()[-1] == 6


async def test_a_stats_tick_that_finds_fewer_gifts_starts_a_new_epoch(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    for _ in range(5):
        broker.publish(STREAM)
    await settle()
    broker.roll_back(STREAM, 2)
    await hub.refresh(STREAM)
    await settle(100)
    assert broker.bumps == 1
    assert {"type": "history_changed", "epoch": "e2", "from_seq": 3} in sink.messages()
    broker.publish(STREAM)
    await settle()
    assert sink.seqs()[-1] == 3


async def test_a_stale_snapshot_is_not_mistaken_for_a_rollback(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    broker.publish(STREAM)
    broker.snapshot_delay = asyncio.Event()
    tick = asyncio.ensure_future(hub.refresh(STREAM))
    await settle()
    for _ in range(3):
        broker.publish(STREAM)  # delivered while the snapshot (seq 1) is on its way
    broker.snapshot_delay.set()
    await tick
    await settle(50)
    assert broker.bumps == 0 and "history_changed" not in sink.kinds()
    assert sink.seqs() == [1, 2, 3, 4]


async def test_a_client_resuming_past_the_store_is_told_alone(hub: Hub, broker: FakeBroker) -> None:
    for _ in range(5):
        broker.publish(STREAM)
    broker.roll_back(STREAM, 3)
    broker.publish(STREAM, sender_id="carol")  # numbered 4 again
    _, sink = await _join(hub, since=5)  # the bare form: the current epoch
    await settle(100)
    # This room never saw the lost history: a client's word alone does not change the
    # epoch for everyone (any client could claim any number), but this client trusts
    # none of what it holds and gets the feed again.
    assert broker.bumps == 0
    assert sink.messages()[1] == {"type": "history_changed", "epoch": "e1", "from_seq": 1}
    assert sink.seqs() == [1, 2, 3, 4]
    assert [g["sender_id"] for g in sink.gifts() if g["seq"] == 4] == ["carol"]


async def test_a_client_resuming_past_the_store_of_a_room_that_saw_it_too(
    hub: Hub, broker: FakeBroker
) -> None:
    _, watcher = await _join(hub, "watcher")
    for _ in range(5):
        broker.publish(STREAM)
    broker.roll_back(STREAM, 3)
    # Further than the store, and the room saw more than the store too: a rollback.
    _, sink = await _join(hub, since=6)
    await settle(100)
    assert broker.bumps == 1
    assert {"type": "history_changed", "epoch": "e2", "from_seq": 4} in sink.messages()
    assert {"type": "history_changed", "epoch": "e2", "from_seq": 4} in watcher.messages()
    broker.publish(STREAM, sender_id="carol")
    await settle()
    assert sink.gifts()[-1]["seq"] == 4 and sink.gifts()[-1]["sender_id"] == "carol"


async def test_resuming_from_an_older_epoch(hub: Hub, broker: FakeBroker) -> None:
    for _ in range(6):
        broker.publish(STREAM)
    s = broker.stream(STREAM)
    s.prev_epoch, s.prev_epoch_seq, s.epoch = "e1", 4, "e2"
    # Still good up to 4: resumed as usual, no message.
    _, sink = await _join(hub, "a", since=3, epoch="e1")
    assert sink.seqs() == [4, 5, 6] and "history_changed" not in sink.kinds()
    # Saw 5 and 6 of the old history: told, then sent the current 5 and 6.
    _, sink = await _join(hub, "b", since=6, epoch="e1")
    assert sink.kinds()[1] == "history_changed" and sink.seqs() == [5, 6]
    # An epoch nobody knows: everything the feed holds.
    _, sink = await _join(hub, "c", since=2, epoch="zzz")
    assert sink.messages()[1] == {"type": "history_changed", "epoch": "e2", "from_seq": 1}
    assert sink.seqs() == [1, 2, 3, 4, 5, 6]


async def test_a_second_process_follows_the_epoch_another_one_started(
    broker: FakeBroker, hub: Hub
) -> None:
    _, sink = await _join(hub)
    for _ in range(4):
        broker.publish(STREAM)
    await settle()
    broker.roll_back(STREAM, 2)
    # Another process bumped the epoch; this one hears of it only from the event.
    await broker.bump_epoch(STREAM, "e1", 2)
    broker.publish(STREAM, sender_id="dave")
    await settle(100)
    assert broker.bumps == 1
    assert {"type": "history_changed", "epoch": "e2", "from_seq": 3} in sink.messages()
    last = [m for m in sink.messages() if m["type"] == "gift"][-1]
    assert (last["seq"], last["sender_id"], last["epoch"]) == (3, "dave", "e2")


async def test_a_viewer_count_is_reported_with_each_tick(hub: Hub, broker: FakeBroker) -> None:
    await _join(hub, "a")
    await _join(hub, "b")
    await hub.refresh(STREAM)
    assert broker.viewers_reported[STREAM] == 2
    assert await hub.viewers(STREAM) == 2


def test_fake_events_have_the_lua_fields() -> None:
    from server.protocol.events import GIFT_EVENT_FIELDS

    broker = FakeBroker()
    event = orjson.loads(orjson.dumps(broker.publish(STREAM)))
    assert set(event) == GIFT_EVENT_FIELDS


async def test_other_room_events_reach_the_viewers_then_the_room_event_hook(hub: Hub) -> None:
    _, sink = await _join(hub)
    seen: list[tuple[str, str]] = []
    hub.on_room_event = lambda stream_id, event: seen.append((stream_id, event["type"]))
    battle = {"type": "battle", "battle_id": "b1", "sides": []}
    hub.room_event(STREAM, orjson.dumps(battle))
    hub.room_event(STREAM, orjson.dumps({"type": "guests", "stream_id": STREAM, "guests": []}))
    await settle()
    assert sink.kinds()[-2:] == ["battle", "guests"]
    assert seen == [(STREAM, "battle"), (STREAM, "guests")]


def _states(sink: FakeSink) -> list[tuple[str, int | None]]:
    return [(m["state"], m.get("seq")) for m in sink.messages() if m["type"] == "stream"]


async def test_a_lost_stream_end_is_sent_from_the_next_stats_tick_and_once(
    hub: Hub, broker: FakeBroker
) -> None:
    # A replica's cluster bus (or a broker reconnect) can lose the classic PUBLISH of a
    # state change: it has no sequence, so no gap shows it; the stats tick's snapshot does.
    _, sink = await _join(hub)
    broker.publish(STREAM)
    broker.losing.add(STREAM)
    late = broker.change_state(STREAM, "ended")
    broker.losing.clear()
    await settle()
    assert _states(sink) == []
    await hub.refresh(STREAM)
    await settle()
    assert _states(sink) == [("ended", 1)]
    broker.deliver(STREAM, late)  # the event after all, late: not sent twice
    await hub.refresh(STREAM)
    await settle()
    assert _states(sink) == [("ended", 1)]
    broker.change_state(STREAM, "live")  # reopened, heard live this time
    await hub.refresh(STREAM)
    await settle()
    assert _states(sink) == [("ended", 1), ("live", None)]


async def test_a_stats_tick_read_before_a_state_change_does_not_undo_it(
    hub: Hub, broker: FakeBroker
) -> None:
    _, sink = await _join(hub)
    broker.snapshot_delay = asyncio.Event()
    tick = asyncio.ensure_future(hub.refresh(STREAM))  # reads "live" now, returns later
    await settle()
    broker.change_state(STREAM, "ended")  # the live event, while the tick is out
    broker.snapshot_delay.set()
    broker.snapshot_delay = None
    await tick
    await settle()
    assert _states(sink) == [("ended", 0)]
