"""Stream goals against a real Redis: set_goal.lua, delete_goal.lua and send_gift.lua's
part (``_goals.lua``): the happy path, every refusal, replays, a goal crossed by
concurrent gifts, and progress that outlives the server process."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.goals import Goal, GoalKind
from server.domain.limits import GOALS_PER_STREAM_MAX, Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.protocol import events
from server.protocol.events import (
    GIFT_EVENT_FIELDS,
    GIFT_GOALS_FIELD,
    GOAL_FIELDS,
    GOAL_PROGRESS_FIELDS,
    GOAL_REACHED_EVENT_FIELDS,
    GOALS_EVENT_FIELDS,
)
from tests.integration.goal_helpers import of_type, published
from tests.integration.helpers import (
    CREATOR,
    STREAM,
    assert_books_reconcile,
    gift,
    make_ledger,
    snapshot,
)

COINS = Goal("coins1k", GoalKind.COINS, "", 1_000, "1,000 coins")
ROSES = Goal("roses", GoalKind.GIFT, "rose", 10, "10 Roses")


async def _live(ledger: Ledger, *viewers: str) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch="ep1")
    for user in viewers or ("alice",):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=100_000)


async def _set(ledger: Ledger, goal: Goal, actor: str = CREATOR) -> tuple[Goal, bool]:
    return await ledger.set_goal(stream_id=STREAM, actor_id=actor, goal=goal)


async def test_gifts_move_the_goals_that_count_them(ledger: Ledger) -> None:
    await _live(ledger)
    await _set(ledger, COINS)
    await _set(ledger, ROSES)
    await gift(ledger, "g1", gift_id="rose", count=3)  # 3 coins, 3 roses
    await gift(ledger, "g2", gift_id="corgi", count=2)  # 598 coins, no rose
    goals = {g.goal_id: g for g in await ledger.stream_goals(STREAM)}
    assert (goals["coins1k"].progress, goals["roses"].progress) == (601, 3)
    assert not goals["coins1k"].reached
    assert [g.goal_id for g in await ledger.stream_goals(STREAM)] == ["coins1k", "roses"]
    await assert_books_reconcile(ledger)


async def test_the_gift_event_carries_the_progress_of_the_goals_it_moved(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, COINS)
    await _set(ledger, ROSES)
    _, out = await published(redis, keys, gift(ledger, "g1", gift_id="rose", count=2))
    (event,) = of_type(out, "gift")
    assert set(event) == GIFT_EVENT_FIELDS | {GIFT_GOALS_FIELD}
    assert all(set(p) == GOAL_PROGRESS_FIELDS for p in event["goals"])
    assert event["goals"] == [
        {"goal_id": "coins1k", "progress": 2},
        {"goal_id": "roses", "progress": 2},
    ]
    # A gift that moves no goal has no `goals` field at all (cjson has no empty array).
    await ledger.delete_goal(stream_id=STREAM, actor_id=CREATOR, goal_id="coins1k")
    _, out = await published(redis, keys, gift(ledger, "g2", gift_id="heart"))
    (event,) = of_type(out, "gift")
    assert set(event) == GIFT_EVENT_FIELDS
    # The feed stores the same JSON, progress included.
    stored = [events_row for events_row in await ledger.feed(STREAM, 0, 10)]
    assert b'"goals"' in stored[0] and b'"goals"' not in stored[1]


async def test_a_goal_is_reached_once_and_goes_on_counting(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, ROSES)
    _, before = await published(redis, keys, gift(ledger, "g1", gift_id="rose", count=9))
    assert of_type(before, "goal_reached") == []
    _, out = await published(redis, keys, gift(ledger, "g2", gift_id="rose", count=5))
    gift_event, reached = out
    assert gift_event["type"] == "gift"  # the gift first, then what it caused
    assert set(reached) == GOAL_REACHED_EVENT_FIELDS
    assert (reached["goal_id"], reached["target"], reached["progress"]) == ("roses", 10, 14)
    assert (reached["seq"], reached["sender_id"], reached["title"]) == (2, "alice", "10 Roses")
    _, after = await published(redis, keys, gift(ledger, "g3", gift_id="rose"))
    assert of_type(after, "goal_reached") == []
    (goal,) = await ledger.stream_goals(STREAM)
    assert goal.reached and goal.progress == 15


async def test_set_goal_publishes_the_goals_as_events_py_builds_them(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, COINS)
    await gift(ledger, "g1", gift_id="corgi")
    (stored, replayed), out = await published(redis, keys, _set(ledger, ROSES))
    assert not replayed and stored == ROSES
    (message,) = out
    assert set(message) == GOALS_EVENT_FIELDS
    assert all(set(goal) == GOAL_FIELDS for goal in message["goals"])
    assert message == events.goals(STREAM, await ledger.stream_goals(STREAM))
    assert message["goals"][0]["progress"] == 299


async def test_a_replay_changes_nothing_and_publishes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, ROSES)
    await gift(ledger, "g1", gift_id="rose", count=4)
    before = await snapshot(redis, keys)
    (stored, replayed), out = await published(redis, keys, _set(ledger, ROSES))
    assert replayed and stored.progress == 4 and out == []
    assert await snapshot(redis, keys) == before


def _bad(goal: Goal, **change: object) -> Goal:
    return dataclasses.replace(goal, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "actor", "goal", "code"),
    [
        ("another user", "mallory", ROSES, ErrorCode.NOT_STREAM_OWNER),
        ("unknown gift", CREATOR, _bad(ROSES, gift_id="unicorn"), ErrorCode.UNKNOWN_GIFT),
        ("same id, other target", CREATOR, _bad(COINS, target=5), ErrorCode.DUPLICATE_MISMATCH),
        ("same id, other title", CREATOR, _bad(COINS, title="x"), ErrorCode.DUPLICATE_MISMATCH),
        ("zero target", CREATOR, _bad(ROSES, target=0), ErrorCode.INVALID_REQUEST),
        ("huge target", CREATOR, _bad(ROSES, target=10**14), ErrorCode.INVALID_REQUEST),
        ("coins with a gift", CREATOR, _bad(COINS, goal_id="c2", gift_id="rose"),
         ErrorCode.INVALID_REQUEST),
        ("long title", CREATOR, _bad(ROSES, title="x" * 257), ErrorCode.INVALID_REQUEST),
        ("bad id", CREATOR, _bad(ROSES, goal_id="a b"), ErrorCode.INVALID_REQUEST),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
async def test_every_refusal_of_set_goal_writes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, case: str, actor: str, goal: Goal, code: ErrorCode
) -> None:
    await _live(ledger)
    await _set(ledger, COINS)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _set(ledger, goal, actor)
    assert refused.value.code is code, case
    assert await snapshot(redis, keys) == before


async def test_an_unknown_stream_has_no_goals_to_set(ledger: Ledger) -> None:
    with pytest.raises(LedgerRefusal) as refused:
        await _set(ledger, ROSES)
    assert refused.value.code is ErrorCode.UNKNOWN_STREAM
    assert await ledger.stream_goals(STREAM) == []


async def test_a_stream_holds_at_most_goals_max(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _live(ledger)
    for i in range(GOALS_PER_STREAM_MAX):
        await _set(ledger, _bad(COINS, goal_id=f"c{i}"))
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _set(ledger, ROSES)
    assert refused.value.code is ErrorCode.GOAL_LIMIT
    assert refused.value.detail == {"goals_max": GOALS_PER_STREAM_MAX}
    assert await snapshot(redis, keys) == before
    # Every one of them moves with one gift: the bound is the gift's cost.
    await gift(ledger, "g1", gift_id="rose")
    assert [g.progress for g in await ledger.stream_goals(STREAM)] == [1] * GOALS_PER_STREAM_MAX


async def test_delete_removes_the_goal_and_its_progress_once(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, COINS)
    await _set(ledger, ROSES)
    await gift(ledger, "g1", gift_id="rose", count=2)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.delete_goal(stream_id=STREAM, actor_id="mallory", goal_id="roses")
    assert refused.value.code is ErrorCode.NOT_STREAM_OWNER
    removed, out = await published(
        redis, keys, ledger.delete_goal(stream_id=STREAM, actor_id=CREATOR, goal_id="roses")
    )
    assert removed and [g["goal_id"] for g in out[0]["goals"]] == ["coins1k"]
    assert not await ledger.delete_goal(stream_id=STREAM, actor_id=CREATOR, goal_id="roses")
    await gift(ledger, "g2", gift_id="rose")
    assert [(g.goal_id, g.progress) for g in await ledger.stream_goals(STREAM)] == [("coins1k", 3)]
    # Set again under the same id, it starts from zero.
    await _set(ledger, ROSES)
    assert {g.goal_id: g.progress for g in await ledger.stream_goals(STREAM)}["roses"] == 0
    await ledger.delete_goal(stream_id=STREAM, actor_id=CREATOR, goal_id="roses")
    await ledger.delete_goal(stream_id=STREAM, actor_id=CREATOR, goal_id="coins1k")
    assert await redis.exists(keys.goals(STREAM)) == 0


async def test_a_goal_crossed_by_concurrent_gifts_is_reached_exactly_once(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    senders = [f"fan{i}" for i in range(20)]
    await _live(ledger, *senders)
    await _set(ledger, _bad(ROSES, target=150))
    await _set(ledger, _bad(COINS, target=150))
    sends = [
        gift(ledger, f"{s}-{n}", sender=s, gift_id="rose", count=1 + n % 2)
        for s in senders
        for n in range(10)
    ]
    _, out = await published(redis, keys, asyncio.gather(*sends))
    reached = of_type(out, "goal_reached")
    assert sorted(r["goal_id"] for r in reached) == ["coins1k", "roses"]
    total = 20 * sum(1 + n % 2 for n in range(10))
    assert [g.progress for g in await ledger.stream_goals(STREAM)] == [total, total]
    # The progress in the gift events only grows, and the last one is the total.
    progress = [
        e["goals"][0]["progress"] for e in sorted(of_type(out, "gift"), key=lambda e: e["seq"])
    ]
    assert progress == sorted(progress) and progress[-1] == total
    await assert_books_reconcile(ledger)


async def test_progress_outlives_the_server_process(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, ROSES)
    await gift(ledger, "g1", gift_id="rose", count=7)
    # A new process: nothing of the old one's memory, the same Redis.
    restarted = await make_ledger(redis, keys, Limits(gifts_per_s_max=1000, gift_burst_max=1000))
    assert [g.progress for g in await restarted.stream_goals(STREAM)] == [7]
    await gift(restarted, "g2", gift_id="rose", count=3)
    (goal,) = await restarted.stream_goals(STREAM)
    assert goal.reached and goal.progress == 10


async def test_a_corrupted_progress_fails_the_gift_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, ROSES)
    await redis.hset(keys.goals(STREAM), "p:roses", "1e3")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await gift(ledger, "g1", gift_id="rose")
    assert await snapshot(redis, keys) == before


async def test_a_goal_whose_record_is_gone_fails_the_gift_that_reaches_it_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    await _set(ledger, ROSES)
    await gift(ledger, "g1", gift_id="rose", count=9)
    await redis.hdel(keys.goals(STREAM), "d:roses")  # corrupted by hand
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await gift(ledger, "g2", gift_id="rose")  # the one that would reach 10
    assert await snapshot(redis, keys) == before
