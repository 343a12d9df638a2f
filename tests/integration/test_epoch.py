"""Stream epochs against a real Redis: start_stream.lua sets one, send_gift.lua copies it
into every event, bump_epoch.lua changes it once (compare and set)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.protocol.events import EPOCH_EVENT_FIELDS, GIFT_EVENT_FIELDS
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _live(ledger: Ledger, epoch: str = "ep1") -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch=epoch)
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=1_000)


async def _published(redis: Redis, keys: Keys, action: Any) -> list[dict[str, Any]]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.room_channel(STREAM))
    await pubsub.get_message(timeout=1)
    try:
        await action
    finally:
        out = []
        while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            out.append(orjson.loads(message["data"]))
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return out


async def test_start_stream_sets_the_epoch_and_a_replay_keeps_it(ledger: Ledger) -> None:
    await _live(ledger, "ep1")
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch="other")
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.epoch == "ep1"
    assert (stream.prev_epoch, stream.prev_epoch_seq) == ("", 0)


async def test_a_fresh_epoch_by_default(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    stream = await ledger.stream(STREAM)
    assert stream is not None and len(stream.epoch) == 16


async def test_an_invalid_epoch_is_refused_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch="a b")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_the_published_gift_event_has_exactly_the_fields_events_py_names(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger, "ep1")
    (event,) = await _published(redis, keys, gift(ledger, "g1"))
    assert set(event) == GIFT_EVENT_FIELDS
    assert event["epoch"] == "ep1" and event["seq"] == 1
    # The feed holds the same JSON (history and resume read it).
    (stored,) = await ledger.feed(STREAM, 0, 10)
    assert orjson.loads(stored) == event


async def test_a_stream_from_before_epochs_publishes_an_empty_one(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await redis.hdel(keys.stream(STREAM), "epoch")
    (event,) = await _published(redis, keys, gift(ledger, "g1"))
    assert event["epoch"] == ""


async def test_bump_epoch_sets_it_once_and_publishes(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger, "ep1")
    for i in range(5):
        await gift(ledger, f"g{i}")
    events = await _published(
        redis, keys, ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch="ep2", valid_seq=3)
    )
    assert events == [
        {"type": "epoch", "stream_id": STREAM, "epoch": "ep2", "prev_epoch": "ep1",
         "prev_epoch_seq": 3}
    ]  # fmt: skip
    assert set(events[0]) == EPOCH_EVENT_FIELDS
    stream = await ledger.stream(STREAM)
    assert stream is not None
    assert (stream.epoch, stream.prev_epoch, stream.prev_epoch_seq) == ("ep2", "ep1", 3)
    # Gifts from now on carry the new epoch, numbered on.
    (event,) = await _published(redis, keys, gift(ledger, "g9"))
    assert (event["epoch"], event["seq"]) == ("ep2", 6)
    await assert_books_reconcile(ledger)


async def test_a_stale_bump_changes_nothing_and_returns_the_current_epoch(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger, "ep1")
    await ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch="ep2", valid_seq=0)
    before = await snapshot(redis, keys)
    late = await ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch="ep3", valid_seq=0)
    assert (late.epoch, late.prev_epoch, late.changed) == ("ep2", "ep1", False)
    assert await snapshot(redis, keys) == before


async def test_the_valid_seq_is_capped_at_the_stream_seq(ledger: Ledger) -> None:
    await _live(ledger, "ep1")
    await gift(ledger, "g1")
    change = await ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch="ep2", valid_seq=99)
    assert change.prev_epoch_seq == 1 and change.changed


@pytest.mark.parametrize(
    ("expected", "epoch", "valid"),
    [("ep1", "", "1"), ("ep1", "a b", "1"), ("ep1", "ep2", "-1"), ("ep1", "ep2", "1e3"),
     ("x" * 65, "ep2", "1")],
)  # fmt: skip
async def test_bump_epoch_refuses_bad_arguments_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, expected: str, epoch: str, valid: str
) -> None:
    await _live(ledger, "ep1")
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.bump_epoch(
            stream_id=STREAM,
            expected=expected,
            epoch=epoch,
            valid_seq=valid,  # type: ignore[arg-type]
        )
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_bump_epoch_of_an_unknown_stream_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.bump_epoch(stream_id="nope", expected="", epoch="ep2", valid_seq=0)
    assert refused.value.code is ErrorCode.UNKNOWN_STREAM


async def test_a_corrupt_stream_hash_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger, "ep1")
    await redis.hset(keys.stream(STREAM), "seq", "1e3")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch="ep2", valid_seq=0)
    assert await snapshot(redis, keys) == before


async def test_racing_bumps_change_the_epoch_once(ledger: Ledger) -> None:
    await _live(ledger, "ep1")
    changes = await asyncio.gather(
        *(
            ledger.bump_epoch(stream_id=STREAM, expected="ep1", epoch=f"new{i}", valid_seq=0)
            for i in range(20)
        )
    )
    assert sum(c.changed for c in changes) == 1
    assert len({c.epoch for c in changes}) == 1
