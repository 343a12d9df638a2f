"""The broker port and the hub on both stores (``backend``: one redis-server with pub/sub, or
the loopback Redis Cluster with sharded pub/sub): the same promises, the same tests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.realtime.hub import Hub
from tests.support.backends import Backend
from tests.support.listening import listening
from tests.unit.fakes import FakeSink, viewer

STREAM, CREATOR = "rt1", "rt_creator"


async def polled(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.02)


def welcome(snapshot: object) -> dict[str, Any]:
    return {"type": "welcome"}


async def test_events_after_subscribe_arrive_in_order_and_stop_after_unsubscribe(
    backend: Backend,
) -> None:
    broker = backend.broker()
    async with listening(broker) as listener:
        await backend.open_stream(STREAM, CREATOR)
        await broker.subscribe(STREAM)
        for _ in range(20):
            await backend.gift(STREAM, CREATOR)
        await polled(lambda: len(listener.seqs()) == 20)
        assert listener.seqs() == list(range(1, 21)) and broker.connected
        await broker.unsubscribe(STREAM)
        await backend.gift(STREAM, CREATOR)
        await asyncio.sleep(0.3)
        assert len(listener.seqs()) == 20 and listener.lost == []


async def test_a_snapshot_counts_the_viewers_of_every_process(backend: Backend) -> None:
    here, there = backend.broker(), backend.broker()
    await backend.open_stream(STREAM, CREATOR, epoch="e9")
    await backend.gift(STREAM, CREATOR)
    await there.snapshot(STREAM, viewers_here=4)
    snapshot = await here.snapshot(STREAM, viewers_here=2)
    assert snapshot is not None
    assert (snapshot.position.seq, snapshot.position.epoch, snapshot.gifts) == (1, "e9", 1)
    assert (snapshot.creator_id, snapshot.state, snapshot.viewers) == (CREATOR, "live", 6)
    assert await here.viewers(STREAM) == 6
    assert await here.snapshot("nope") is None
    assert [orjson.loads(raw)["seq"] for raw in await here.feed(STREAM, 0, 10)] == [1]


async def test_viewers_get_lost_events_from_the_feed_and_a_resume_from_its_seq(
    backend: Backend,
) -> None:
    """Live events 4..6 never reach the hub (as if pub/sub dropped them): event 7 shows the
    gap and the hub reads 4..6 from the feed, so each viewer holds 1..10 once, in order; a
    viewer joining with ``since=5`` gets 6..10 from the feed, then live ones."""
    broker = backend.broker()
    hub = Hub(broker, load_catalog(), Limits(), batch_ms=10, hot_events_per_s=10_000,
              stats_interval_s=60)  # fmt: skip
    await hub.start()
    try:
        await backend.open_stream(STREAM, CREATOR)
        sinks: list[FakeSink] = []
        for i in range(3):
            connection, sink = viewer(f"v{i}")
            sinks.append(sink)
            await hub.join(connection, STREAM, welcome)
        deliver = hub.room_event

        def lossy(stream_id: str, data: bytes) -> None:
            if orjson.loads(data).get("seq") not in (4, 5, 6):
                deliver(stream_id, data)

        hub.room_event = lossy  # type: ignore[method-assign]
        for _ in range(10):
            await backend.gift(STREAM, CREATOR)
        await polled(lambda: all(sink.seqs()[-1:] == [10] for sink in sinks))
        assert all(sink.seqs() == list(range(1, 11)) for sink in sinks)

        late, late_sink = viewer("late")
        await hub.join(late, STREAM, welcome, since=5)
        await backend.gift(STREAM, CREATOR)
        await polled(lambda: late_sink.seqs()[-1:] == [11])
        assert late_sink.seqs() == [6, 7, 8, 9, 10, 11]
    finally:
        await hub.stop()


async def test_a_stream_rolled_back_gets_a_new_epoch_and_viewers_are_told(
    backend: Backend,
) -> None:
    """The store forgets gifts 4..5 (a restore): the next gift reuses seq 4 for another
    transfer; the hub sees it, starts a new epoch through the broker (bump_epoch.lua in
    the stream's slot) and tells each viewer ``history_changed`` from 4, then sends the
    history as the store now holds it."""
    broker = backend.broker()
    hub = Hub(broker, load_catalog(), Limits(), batch_ms=10, hot_events_per_s=10_000,
              stats_interval_s=60)  # fmt: skip
    await hub.start()
    try:
        await backend.open_stream(STREAM, CREATOR, epoch="old")
        connection, sink = viewer("v")
        await hub.join(connection, STREAM, welcome)
        for _ in range(5):
            await backend.gift(STREAM, CREATOR)
        await polled(lambda: sink.seqs()[-1:] == [5])
        await backend.roll_back(STREAM, CREATOR, 3)
        for _ in range(2):
            await backend.gift(STREAM, CREATOR)
        # The old 4..5 end in 5 too: wait for the history sent again after them.
        await polled(lambda: "history_changed" in sink.kinds() and len(sink.seqs()) >= 7)
        changed = next(m for m in sink.messages() if m["type"] == "history_changed")
        assert changed["from_seq"] == 4 and changed["epoch"] != "old"
        assert sink.seqs() == [1, 2, 3, 4, 5, 4, 5]
        snapshot = await broker.snapshot(STREAM)
        assert snapshot is not None and snapshot.position.epoch == changed["epoch"]
        assert (snapshot.prev_epoch, snapshot.prev_epoch_seq) == ("old", 3)
    finally:
        await hub.stop()
