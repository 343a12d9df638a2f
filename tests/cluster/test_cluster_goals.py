"""Goals, gifter levels and leaderboard names on a Redis Cluster: credit_gifts.lua applies
them per transfer of its batch, in the creator's slot (docs/ledger.md, "Goals and levels")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from server.broker.cluster_rooms import ClusterRooms
from server.broker.redis_sharded import ShardedPubSubBroker
from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.goals import Goal, GoalKind
from server.domain.levels import level_for
from server.ledger.cluster_credits import Transfer
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger, uid
from tests.cluster.test_sharded_broker import make_rooms
from tests.support.cluster import RedisCluster
from tests.support.listening import Listener, listening


async def closed(ledger: ClusterLedger) -> None:
    """Close once the background deletes of settled outbox entries are done (closing first
    would leave their connections open)."""
    if ledger._delete_task is not None:
        await ledger._delete_task
    await ledger.aclose()


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await closed(ledger)


@pytest.fixture
async def room(
    redis_cluster: RedisCluster, keys: Keys
) -> AsyncIterator[tuple[ClusterRooms, ShardedPubSubBroker, Listener]]:
    rooms = await make_rooms(redis_cluster, keys)
    broker = ShardedPubSubBroker(rooms, presence_ttl_s=5, timeout_s=2)
    async with listening(broker) as listener:
        yield rooms, broker, listener
    await rooms.runner.aclose()


def coins_goal(goal_id: str, target: int) -> Goal:
    return Goal(goal_id=goal_id, kind=GoalKind.COINS, gift_id="", target=target, title="Go!")


def transfer(creator: str, stream: str, sender: str, *, name: str = "") -> Transfer:
    """A debited finger_heart (5 coins), as the debit leg's outbox entry names it."""
    client_id = uid("g")
    return Transfer(
        transfer_id=f"{sender}|{client_id}|{int(time.time() * 1000)}-0",
        client_id=client_id,
        sender_id=sender,
        sender_name=name or sender,
        creator_id=creator,
        stream_id=stream,
        gift_id="finger_heart",
        count=1,
        coins=5,
        price=5,
        catalog_version=1,
        share_bps=5000,
        debit_ms=int(time.time() * 1000),
    )


def of_type(listener: Listener, stream: str, kind: str) -> list[dict[str, object]]:
    return [e for s, e in listener.events if s == stream and e["type"] == kind]


async def _fans_and_goals(ledger: ClusterLedger, creator: str, stream: str) -> object:
    k = ledger.keys
    return (
        await ledger.command(k.fans(creator), "ZRANGE", 0, -1, "WITHSCORES"),
        await ledger.command(k.goals(creator, stream), "HGETALL"),
        await ledger.command(k.names(creator, stream), "HGETALL"),
    )


async def test_the_goal_keys_are_in_the_creators_slot(ledger: ClusterLedger) -> None:
    k = ledger.keys
    slots = {slot_of(key) for key in k.credit_tail_keys("c1", "s1")}
    assert slots == {slot_of(k.account("c1"))}


async def test_one_batch_carries_progress_and_lifetime_coins_from_transfer_to_transfer(
    ledger: ClusterLedger, room: tuple[ClusterRooms, ShardedPubSubBroker, Listener]
) -> None:
    _, broker, listener = room
    stream, creator = await live_stream(ledger)
    await broker.subscribe(stream)
    await ledger.set_goal(stream_id=stream, actor_id=creator, goal=coins_goal("g30", 30))
    hearts = Goal("hearts", GoalKind.GIFT, "finger_heart", 3, "Three hearts")
    await ledger.set_goal(stream_id=stream, actor_id=creator, goal=hearts)
    fan, others = uid("fan"), [uid("v") for _ in range(3)]
    # 12 of 5 coins from one fan: it reaches 50 (level 2) with its 10th; with three others
    # interleaved the goal of 30 coins is reached by the 6th transfer of the batch, the goal
    # of 3 hearts by the 3rd.
    batch = [transfer(creator, stream, fan, name="Fan Name") for _ in range(12)]
    batch[1:1] = [transfer(creator, stream, other) for other in others]
    results = await ledger.credits.call(creator, stream, batch)
    assert [r.status for r in results] == ["ok"] * 15
    await listener.wait(lambda: len(of_type(listener, stream, "gift")) == 15)
    gifts = of_type(listener, stream, "gift")
    assert [g["goals"] for g in gifts] == [
        [{"goal_id": "g30", "progress": 5 * i}, {"goal_id": "hearts", "progress": i}]
        for i in range(1, 16)
    ]
    assert [g["level"] for g in gifts if g["sender_id"] == fan] == [1] * 9 + [2] * 3
    reached = of_type(listener, stream, "goal_reached")
    assert [(r["goal_id"], r["kind"], r["progress"], r["seq"]) for r in reached] == [
        ("hearts", "gift", 3, 3),
        ("g30", "coins", 30, 6),
    ]
    [level_up] = of_type(listener, stream, "level_up")
    assert level_up == {
        "type": "level_up",
        "stream_id": stream,
        "seq": 13,
        "user_id": fan,
        "user_name": "Fan Name",
        "level": 2,
        "prev_level": 1,
        "coins": 50,
    }
    # Replayed, alone or in a new batch: nothing moves and nothing is published again.
    before = await _fans_and_goals(ledger, creator, stream)
    sentinel = transfer(creator, stream, uid("late"))
    again = await ledger.credits.call(creator, stream, [*batch[::-1], sentinel])
    assert [r.status for r in again] == ["replay"] * 15 + ["ok"]
    await listener.wait(lambda: len(of_type(listener, stream, "gift")) == 16)
    assert of_type(listener, stream, "gift")[-1]["goals"] == [
        {"goal_id": "g30", "progress": 80},
        {"goal_id": "hearts", "progress": 16},
    ]
    assert len(of_type(listener, stream, "goal_reached")) == 2
    assert len(of_type(listener, stream, "level_up")) == 1
    fans, goals, names = before  # type: ignore[misc]
    now_fans, now_goals, _ = await _fans_and_goals(ledger, creator, stream)  # type: ignore[misc]
    # Only the sentinel's coins were added: the replays moved no lifetime coins.
    assert dict(now_fans) == {**dict(fans), sentinel.sender_id.encode(): 5.0}
    assert dict(fans)[fan.encode()] == 60.0
    assert now_goals[b"p:g30"] == b"80" and goals[b"p:g30"] == b"75"
    assert names[fan.encode()] == b"Fan Name"
    goals_now = await ledger.stream_goals(stream)
    assert [(g.goal_id, g.progress) for g in goals_now] == [("g30", 80), ("hearts", 16)]
    assert await ledger.fan_level(creator, fan) == level_for(60) == 2


async def test_concurrent_gifts_from_many_senders_reach_a_goal_once_with_exact_progress(
    redis_cluster: RedisCluster,
    keys: Keys,
    ledger: ClusterLedger,
    room: tuple[ClusterRooms, ShardedPubSubBroker, Listener],
) -> None:
    _, broker, listener = room
    stream, creator = await live_stream(ledger)
    await broker.subscribe(stream)
    await ledger.set_goal(stream_id=stream, actor_id=creator, goal=coins_goal("big", 1000))
    second = await open_ledger(redis_cluster, keys.prefix)  # another process's batches
    try:
        senders = [await funded(ledger, 500, "crowd") for _ in range(30)]
        # 30 senders x 3 caps (99 coins each), from two processes at once.
        receipts = await asyncio.gather(
            *(
                gift(ledger if i % 2 else second, sender, stream, creator, gift_id="cap")
                for i, sender in enumerate(senders)
                for _ in range(3)
            )
        )
    finally:
        await closed(second)
    total = sum(r.coins for r in receipts)
    assert total == 90 * 99
    await listener.wait(lambda: len(of_type(listener, stream, "gift")) == 90)
    # A last gift after every other: the room's events are ordered, so every goal_reached
    # the earlier gifts caused has arrived once this one's event has.
    last = await gift(ledger, senders[0], stream, creator, gift_id="cap")
    await listener.wait(lambda: len(of_type(listener, stream, "gift")) == 91)
    gifts = of_type(listener, stream, "gift")
    progress = [g["goals"][0]["progress"] for g in sorted(gifts, key=lambda g: g["seq"])]  # type: ignore[index]
    assert progress == [99 * i for i in range(1, 92)]
    [reached] = of_type(listener, stream, "goal_reached")
    assert reached["progress"] == 99 * 11 and reached["target"] == 1000
    [goal] = await ledger.stream_goals(stream)
    assert goal.progress == total + last.coins


async def test_the_cluster_leaderboard_has_names_and_levels(ledger: ClusterLedger) -> None:
    stream, creator = await live_stream(ledger)
    big, small = await funded(ledger, 5000, "big"), await funded(ledger, 500, "small")
    for sender, name, times in ((big, "Big Spender", 40), (small, "Small", 1)):
        for _ in range(times):
            await ledger.send_gift(
                client_id=uid("g"),
                sender_id=sender,
                sender_name=name,
                stream_id=stream,
                creator_id=creator,
                gift_id="cap",
                count=1,
            )
    top = await ledger.leaderboard(stream)
    assert [(t.user_id, t.name, t.coins, t.level) for t in top] == [
        (big, "Big Spender", 3960, level_for(3960)),
        (small, "Small", 99, 2),
    ]
    assert level_for(3960) == 5


async def test_a_snapshot_carries_names_levels_and_goals(
    ledger: ClusterLedger, room: tuple[ClusterRooms, ShardedPubSubBroker, Listener]
) -> None:
    _, broker, _ = room
    stream, creator = await live_stream(ledger)
    await ledger.set_goal(stream_id=stream, actor_id=creator, goal=coins_goal("g", 10))
    sender = await funded(ledger, 500)
    await ledger.send_gift(
        client_id=uid("g"),
        sender_id=sender,
        sender_name="Shown",
        stream_id=stream,
        creator_id=creator,
        gift_id="cap",
        count=1,
    )
    snapshot = await broker.snapshot(stream)
    assert snapshot is not None
    assert [(t.user_id, t.name, t.coins, t.level) for t in snapshot.top] == [
        (sender, "Shown", 99, 2)
    ]
    assert [(g.goal_id, g.progress) for g in snapshot.goals] == [("g", 99)]


async def test_goal_calls_on_a_cluster_check_the_owner_and_publish_to_the_shard_channel(
    ledger: ClusterLedger, room: tuple[ClusterRooms, ShardedPubSubBroker, Listener]
) -> None:
    _, broker, listener = room
    stream, creator = await live_stream(ledger)
    await broker.subscribe(stream)
    goal = Goal("cap5", GoalKind.GIFT, "cap", 5, "Five caps")
    stored, replayed = await ledger.set_goal(stream_id=stream, actor_id=creator, goal=goal)
    assert (stored.goal_id, replayed) == ("cap5", False)
    assert (await ledger.set_goal(stream_id=stream, actor_id=creator, goal=goal))[1]
    with pytest.raises(LedgerRefusal) as other:
        await ledger.set_goal(stream_id=stream, actor_id=uid("x"), goal=goal)
    assert other.value.code is ErrorCode.NOT_STREAM_OWNER
    with pytest.raises(LedgerRefusal) as unknown_gift:
        bad = Goal("nope", GoalKind.GIFT, "no_such_gift", 5, "")
        await ledger.set_goal(stream_id=stream, actor_id=creator, goal=bad)
    assert unknown_gift.value.code is ErrorCode.UNKNOWN_GIFT
    with pytest.raises(LedgerRefusal) as unknown:
        await ledger.set_goal(stream_id=uid("nostream"), actor_id=creator, goal=goal)
    assert unknown.value.code is ErrorCode.UNKNOWN_STREAM
    assert [g.goal_id for g in await ledger.stream_goals(stream)] == ["cap5"]
    assert await ledger.delete_goal(stream_id=stream, actor_id=creator, goal_id="cap5")
    assert not await ledger.delete_goal(stream_id=stream, actor_id=creator, goal_id="cap5")
    assert await ledger.stream_goals(stream) == []
    await listener.wait(lambda: len(of_type(listener, stream, "goals")) == 2)
    assert [len(e["goals"]) for e in of_type(listener, stream, "goals")] == [1, 0]  # type: ignore[arg-type]
