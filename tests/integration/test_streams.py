"""start_stream.lua and end_stream.lua against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import Limits
from server.domain.streams import StreamState
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger, StreamChange
from tests.integration.helpers import (
    CREATOR,
    STREAM,
    assert_books_reconcile,
    gift,
    make_ledger,
    snapshot,
)


async def _events_of(redis: Redis, keys: Keys, action: Awaitable[object]) -> list[Any]:
    """Run ``action`` and return what it published to the room, as decoded JSON."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.room_channel(STREAM))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        await action
    finally:
        events = []
        while message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            events.append(orjson.loads(message["data"]))
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    return events


async def _start(ledger: Ledger, creator: str = CREATOR, title: str = "hello") -> StreamChange:
    return await ledger.start_stream(stream_id=STREAM, creator_id=creator, title=title)


async def _end(ledger: Ledger, actor: str = CREATOR, is_admin: bool = False) -> StreamChange:
    return await ledger.end_stream(stream_id=STREAM, actor_id=actor, is_admin=is_admin)


# start_stream


async def test_start_opens_a_live_stream_and_announces_it(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    events = await _events_of(redis, keys, _start(ledger))
    assert events == [{"type": "stream", "stream_id": STREAM, "state": "live"}]
    stream = await ledger.stream(STREAM)
    assert stream is not None
    assert (stream.creator_id, stream.state, stream.title) == (CREATOR, StreamState.LIVE, "hello")
    assert (stream.last_sequence, stream.coins_total, stream.gifts_total) == (0, 0, 0)


async def test_starting_again_replays_and_keeps_the_stream(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    first = await _start(ledger)
    assert first == StreamChange(STREAM, CREATOR, StreamState.LIVE, replayed=False)
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await gift(ledger, "g1")
    before = await snapshot(redis, keys)
    events = await _events_of(redis, keys, _start(ledger, title="another title"))
    assert events == []
    again = await _start(ledger)
    assert again == StreamChange(STREAM, CREATOR, StreamState.LIVE, replayed=True)
    assert await snapshot(redis, keys) == before  # the title, sequence and feed stay
    await assert_books_reconcile(ledger)


async def test_start_clears_a_leftover_feed_and_leaderboard(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _start(ledger)
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await gift(ledger, "g1")
    await redis.delete(keys.stream(STREAM))  # deleted by hand; its feed is left behind
    await _start(ledger)
    assert await redis.exists(keys.feed(STREAM), keys.leaderboard(STREAM)) == 0
    receipt = await gift(ledger, "g2")
    assert receipt.seq == 1


async def test_each_start_stores_the_creator_display_name_and_a_replay_keeps_it(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await ledger.start_stream(
        stream_id=STREAM, creator_id=CREATOR, title="t", creator_name="Maya ✨ Star"
    )
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.creator_name == "Maya ✨ Star"
    before = await snapshot(redis, keys)
    again = await ledger.start_stream(
        stream_id=STREAM, creator_id=CREATOR, title="t", creator_name="Someone Else"
    )
    assert again.replayed
    assert await snapshot(redis, keys) == before  # a replay renames nothing
    assert (await ledger.stream(STREAM)).creator_name == "Maya ✨ Star"  # type: ignore[union-attr]
    # Ended and started again by its owner: a new start takes the name of its token.
    await _end(ledger)
    reopened = await ledger.start_stream(
        stream_id=STREAM, creator_id=CREATOR, title="t", creator_name="Maya Lin"
    )
    assert not reopened.replayed
    assert (await ledger.stream(STREAM)).creator_name == "Maya Lin"  # type: ignore[union-attr]


async def test_a_stream_without_a_stored_name_shows_its_creator_id(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _start(ledger)  # no name given: the creator id stands in
    assert (await ledger.stream(STREAM)).creator_name == CREATOR  # type: ignore[union-attr]
    await redis.hdel(keys.stream(STREAM), "creator_name")  # started before names were kept
    assert (await ledger.stream(STREAM)).creator_name == CREATOR  # type: ignore[union-attr]
    assert (await _start(ledger)).replayed


@pytest.mark.parametrize("name", ["", "n" * 257, "é" * 129], ids=["empty", "long", "long-utf8"])
async def test_start_refuses_a_bad_creator_name_and_writes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, name: str
) -> None:
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.start_stream(
            stream_id=STREAM, creator_id=CREATOR, title="t", creator_name=name
        )
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(
    ("stream_id", "creator", "title", "code"),
    [
        ("bad id", CREATOR, "t", ErrorCode.INVALID_REQUEST),
        ("s" * 65, CREATOR, "t", ErrorCode.INVALID_REQUEST),
        ("live2", "", "t", ErrorCode.INVALID_REQUEST),
        ("live2", CREATOR, "t" * 257, ErrorCode.INVALID_REQUEST),
        # STREAM is live and owned by CREATOR: another creator may not take its id.
        (STREAM, "creator2", "t", ErrorCode.STREAM_EXISTS),
    ],
)
async def test_start_refusals_write_nothing(
    ledger: Ledger,
    redis: Redis,
    keys: Keys,
    stream_id: str,
    creator: str,
    title: str,
    code: ErrorCode,
) -> None:
    await _start(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.start_stream(stream_id=stream_id, creator_id=creator, title=title)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_an_ended_stream_is_reopened_by_its_owner_and_keeps_its_history(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    """Issue #11 item 13: an ended id stays its owner's, who may start it again."""
    await _start(ledger)
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await gift(ledger, "g1", count=2)
    await _end(ledger)
    top_before = await redis.zrange(keys.leaderboard(STREAM), 0, -1, withscores=True)
    events = await _events_of(redis, keys, _start(ledger, title="second live"))
    assert events == [{"type": "stream", "stream_id": STREAM, "state": "live"}]
    stream = await ledger.stream(STREAM)
    assert stream is not None
    assert (stream.state, stream.title, stream.creator_id) == (
        StreamState.LIVE,
        "second live",
        CREATOR,
    )
    # The same stream again: the sequence, totals, feed and leaderboard carry on.
    assert (stream.last_sequence, stream.coins_total, stream.gifts_total) == (1, 2, 2)
    assert await redis.hget(keys.stream(STREAM), "starts") == b"2"
    assert await redis.hexists(keys.stream(STREAM), "ended_at") == 0
    assert await redis.zrange(keys.leaderboard(STREAM), 0, -1, withscores=True) == top_before
    receipt = await gift(ledger, "g2")
    assert receipt.seq == 2  # never a sequence number used twice
    assert [orjson.loads(e)["seq"] for e in await ledger.feed(STREAM, 0, 10)] == [1, 2]
    # Starting it again while live is a replay, as before.
    assert (await _start(ledger)).replayed is True
    # Ended and reopened once more: each restart counts.
    await _end(ledger)
    assert (await _start(ledger)).replayed is False
    assert await redis.hget(keys.stream(STREAM), "starts") == b"3"
    assert await redis.smembers(keys.creator_streams(CREATOR)) == {STREAM.encode()}
    await assert_books_reconcile(ledger)


async def test_an_ended_stream_stays_its_owners(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _start(ledger)
    await _end(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _start(ledger, creator="squatter")
    assert refused.value.code is ErrorCode.STREAM_EXISTS
    assert await snapshot(redis, keys) == before


async def test_a_creator_owns_at_most_the_bound_of_stream_ids(redis: Redis, keys: Keys) -> None:
    ledger = await make_ledger(redis, keys, Limits(streams_per_creator_max=3))
    for n in range(3):
        await ledger.start_stream(stream_id=f"mine{n}", creator_id=CREATOR, title="")
        await ledger.end_stream(stream_id=f"mine{n}", actor_id=CREATOR, is_admin=False)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.start_stream(stream_id="mine3", creator_id=CREATOR, title="")
    assert refused.value.code is ErrorCode.STREAM_LIMIT
    assert refused.value.detail == {"streams_max": 3}
    assert await snapshot(redis, keys) == before
    # Ended ids still count, and may be started again; another creator has its own bound.
    assert (await ledger.start_stream(stream_id="mine1", creator_id=CREATOR, title="")).state
    await ledger.start_stream(stream_id="theirs", creator_id="creator2", title="")
    assert await redis.scard(keys.creator_streams(CREATOR)) == 3


async def test_concurrent_claims_are_bounded_per_creator(redis: Redis, keys: Keys) -> None:
    bound = 5
    ledger = await make_ledger(redis, keys, Limits(streams_per_creator_max=bound))
    creators = [f"creator{c}" for c in range(4)]
    ids = [f"hot{i}" for i in range(12)]
    # Every creator races for every id, twice: each id is won once, no creator passes the
    # bound, and each refusal is either "another creator owns it" or "you own enough".
    calls = [
        ledger.start_stream(stream_id=i, creator_id=c, title="")
        for _ in range(2)
        for i in ids
        for c in creators
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    owners: dict[str, str] = {}
    for result in results:
        if isinstance(result, StreamChange):
            assert owners.setdefault(result.stream_id, result.creator_id) == result.creator_id
        else:
            assert isinstance(result, LedgerRefusal), result
            assert result.code in (ErrorCode.STREAM_EXISTS, ErrorCode.STREAM_LIMIT)
    assert sum(isinstance(r, StreamChange) and not r.replayed for r in results) == len(owners)
    for creator in creators:
        owned = {m.decode() for m in await redis.smembers(keys.creator_streams(creator))}
        assert len(owned) <= bound
        assert owned == {i for i, c in owners.items() if c == creator}
    for stream_id, creator in owners.items():
        stream = await ledger.stream(stream_id)
        assert stream is not None and stream.creator_id == creator
    # 12 ids, 4 creators of at most 5: every id found an owner.
    assert set(owners) == set(ids)


async def test_concurrent_starts_open_the_stream_once(ledger: Ledger) -> None:
    results = await asyncio.gather(
        *(_start(ledger, creator=CREATOR if i % 2 else "creator2") for i in range(50)),
        return_exceptions=True,
    )
    opened = [r for r in results if isinstance(r, StreamChange) and not r.replayed]
    assert len(opened) == 1
    winner = opened[0].creator_id
    # The winner's other calls replay; the other creator's calls are refused.
    for result in results:
        if isinstance(result, StreamChange):
            assert result.creator_id == winner
        else:
            assert isinstance(result, LedgerRefusal)
            assert result.code is ErrorCode.STREAM_EXISTS
    assert sum(isinstance(r, StreamChange) for r in results) == 25
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.creator_id == winner


# end_stream


async def test_end_closes_the_stream_and_announces_it(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _start(ledger)
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await gift(ledger, "g1", count=3)
    events = await _events_of(redis, keys, _end(ledger))
    assert events == [{"type": "stream", "stream_id": STREAM, "state": "ended", "seq": 1}]
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.state is StreamState.ENDED
    assert (stream.last_sequence, stream.coins_total, stream.gifts_total) == (1, 3, 3)
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, "g2")
    assert refused.value.code is ErrorCode.STREAM_NOT_LIVE
    await assert_books_reconcile(ledger)


async def test_an_admin_may_end_any_stream(ledger: Ledger) -> None:
    await _start(ledger)
    change = await _end(ledger, actor="moderator", is_admin=True)
    assert change == StreamChange(STREAM, CREATOR, StreamState.ENDED, replayed=False)


async def test_ending_again_replays_and_changes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _start(ledger)
    await _end(ledger)
    before = await snapshot(redis, keys)
    events = await _events_of(redis, keys, _end(ledger))
    assert events == []
    again = await _end(ledger, actor="moderator", is_admin=True)
    assert again == StreamChange(STREAM, CREATOR, StreamState.ENDED, replayed=True)
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(
    ("stream_id", "actor", "is_admin", "code"),
    [
        ("bad id", CREATOR, False, ErrorCode.INVALID_REQUEST),
        (STREAM, "", False, ErrorCode.INVALID_REQUEST),
        ("nope", CREATOR, False, ErrorCode.UNKNOWN_STREAM),
        ("nope", "moderator", True, ErrorCode.UNKNOWN_STREAM),
        (STREAM, "alice", False, ErrorCode.NOT_STREAM_OWNER),
    ],
)
async def test_end_refusals_write_nothing(
    ledger: Ledger,
    redis: Redis,
    keys: Keys,
    stream_id: str,
    actor: str,
    is_admin: bool,
    code: ErrorCode,
) -> None:
    await _start(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.end_stream(stream_id=stream_id, actor_id=actor, is_admin=is_admin)
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_only_the_owner_may_end_even_an_ended_stream(ledger: Ledger) -> None:
    await _start(ledger)
    await _end(ledger)
    with pytest.raises(LedgerRefusal) as refused:
        await _end(ledger, actor="alice")
    assert refused.value.code is ErrorCode.NOT_STREAM_OWNER


async def test_concurrent_ends_close_the_stream_once(ledger: Ledger) -> None:
    await _start(ledger)
    results = await asyncio.gather(*(_end(ledger) for _ in range(50)))
    assert sum(not r.replayed for r in results) == 1
    assert {r.state for r in results} == {StreamState.ENDED}


async def test_gifts_racing_the_end_are_either_in_the_totals_or_refused(ledger: Ledger) -> None:
    await _start(ledger)
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=100)
    calls: list[Awaitable[object]] = [gift(ledger, f"g{i}") for i in range(20)]
    calls.insert(10, _end(ledger))
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(
        isinstance(r, LedgerRefusal) and r.code is ErrorCode.STREAM_NOT_LIVE for r in refused
    )
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.state is StreamState.ENDED
    sent = 20 - len(refused)
    assert (stream.last_sequence, stream.coins_total) == (sent, sent)
    assert len(await ledger.feed(STREAM, 0, 100)) == sent
    assert (await ledger.balance("alice")).coins == 100 - sent
    await assert_books_reconcile(ledger)


# Corrupt keys


async def _stream_is_a_list(redis: Redis, keys: Keys) -> None:
    await redis.delete(keys.stream(STREAM))
    await redis.rpush(keys.stream(STREAM), "x")


STREAM_CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "stream is a string": lambda r, k: r.set(k.stream(STREAM), "x"),
    "stream is a list": _stream_is_a_list,
}


async def _ended_with_corrupt_starts(redis: Redis, keys: Keys) -> None:
    await redis.hset(
        keys.stream(STREAM), mapping={"creator": CREATOR, "state": "ended", "starts": "1e3"}
    )


START_CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "creator's stream set is a string": lambda r, k: r.set(k.creator_streams(CREATOR), "x"),
    "an ended stream's starts is not an integer": _ended_with_corrupt_starts,
}


@pytest.mark.parametrize("corruption", list(START_CORRUPTIONS))
async def test_corrupt_start_keys_fail_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str
) -> None:
    await START_CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await _start(ledger)
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize("corruption", list(STREAM_CORRUPTIONS))
@pytest.mark.parametrize("script", ["start_stream", "end_stream"])
async def test_corrupt_stream_key_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str, script: str
) -> None:
    await ledger.top_up(payment_id="pay1", user_id="alice", coins=10)
    await STREAM_CORRUPTIONS[corruption](redis, keys)
    await redis.xadd(keys.feed(STREAM), {"e": "{}"}, id="1-0")  # start_stream would clear it
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await (_start(ledger) if script == "start_stream" else _end(ledger))
    assert await snapshot(redis, keys) == before
