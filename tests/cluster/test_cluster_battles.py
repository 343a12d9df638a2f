"""Battles on a Redis Cluster (docs/ledger.md, "Battles in cluster mode"): each side in its
own stream's slot, credit_gifts.lua scoring each transfer against its slot's side, accept in
three idempotent steps, each side ended on its own, the result stored in the battle's slot.

The happy path, every refusal of each step, replays, a crash between the accept's steps
finished by a retry, and transfers racing the start and the end: each side's score is
exactly the coins of its feed's events that carry the battle's id, and those are one
unbroken run of its seq inside the side's window."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, RequestError
from server.domain.limits import Limits
from server.ledger.battles import SERVER_ACTOR
from server.ledger.cluster_keys import slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reads import _as_hash, _pairs
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.keys import Keys
from server.ledger.receipts import unpack
from server.ledger.scripts import ScriptName
from server.protocol.events import BATTLE_END_EVENT_FIELDS, BATTLE_EVENT_FIELDS
from tests.cluster.legs import funded, gift, open_ledger, uid
from tests.cluster.test_cluster_goals import closed
from tests.support.cluster import RedisCluster

LIMITS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, battle_seconds_min=1)


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix, LIMITS)
    yield ledger
    await closed(ledger)


Rooms = tuple[str, str, str, str]
"""(stream a, creator a, stream b, creator b)."""


async def two_rooms(ledger: ClusterLedger) -> Rooms:
    """Two live streams whose creators' slots are on different primaries."""
    runner = ledger.runner
    creator_a = uid("ca")
    primary_a = runner.primary_of(slot_of(ledger.keys.account(creator_a)))
    while True:
        creator_b = uid("cb")
        if runner.primary_of(slot_of(ledger.keys.account(creator_b))) != primary_a:
            break
    a, b = uid("sa"), uid("sb")
    await ledger.start_stream(stream_id=a, creator_id=creator_a, title="a", creator_name="Ann")
    await ledger.start_stream(stream_id=b, creator_id=creator_b, title="b", creator_name="Bo")
    return a, creator_a, b, creator_b


async def battle(ledger: ClusterLedger, r: Rooms, battle_id: str, duration_s: int = 60) -> Any:
    a, ca, b, cb = r
    await ledger.battles.invite(
        battle_id=battle_id, from_stream=a, to_stream=b, actor_id=ca, duration_s=duration_s
    )
    return (
        await ledger.battles.accept(battle_id=battle_id, from_stream=a, to_stream=b, actor_id=cb)
    ).doc


async def script(ledger: ClusterLedger, name: ScriptName, keys: list[str], args: list[Any]) -> bool:
    """Run one script directly; True when it was a replay (a refusal raises)."""
    _, replayed = unpack(await ledger.runner.run(name, keys, args))
    return replayed


async def refused(code: ErrorCode, call: Any) -> Any:
    with pytest.raises(LedgerRefusal) as info:
        await call
    assert info.value.code is code, info.value
    return info.value.detail


async def side(ledger: ClusterLedger, creator: str, stream: str) -> dict[str, str]:
    raw = _as_hash(await ledger.command(ledger.keys.battle(creator, stream), "HGETALL"))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def feed(ledger: ClusterLedger, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await ledger.feed(stream, 0, 10_000)]


async def reconciled(ledger: ClusterLedger) -> None:
    report = await reconcile_cluster(ledger)
    assert report.problems == []


def test_every_battle_key_of_a_stream_is_in_its_creators_slot() -> None:
    from server.ledger.cluster_keys import ClusterKeys

    k = ClusterKeys("t:")
    keys = [
        k.battle("c", "s"),
        k.battle_top("c", "s"),
        k.battle_invite("c", "s"),
        k.battle_invites("c", "s"),
        k.creator_battle_invite("c"),
        *k.credit_tail_keys("c", "s"),
    ]
    assert {slot_of(key) for key in keys} == {slot_of(k.account("c"))}
    assert slot_of(k.battle_result("b1")) == slot_of("{battle:b1}")


async def test_a_battle_scores_each_side_in_its_own_slot_and_stores_the_result(
    ledger: ClusterLedger,
) -> None:
    a, ca, b, cb = await two_rooms(ledger)
    ann, bob, cat = [await funded(ledger, 100_000, n) for n in ("ann", "bob", "cat")]
    await gift(ledger, ann, a, ca)  # before the battle: never scores
    invited = await ledger.battles.invite(
        battle_id="b1", from_stream=a, to_stream=b, actor_id=ca, duration_s=60
    )
    assert invited.doc["to_creator"] == cb and not invited.replayed
    listed = await ledger.battles.invites(b)
    assert listed == {"outgoing": None, "incoming": [invited.doc]}
    assert (await ledger.battles.invites(a))["outgoing"] == invited.doc
    started = (
        await ledger.battles.accept(battle_id="b1", from_stream=a, to_stream=b, actor_id=cb)
    ).doc
    assert (
        set(started) == BATTLE_EVENT_FIELDS and started["ends_at"] - started["starts_at"] == 60_000
    )
    assert [(s["stream_id"], s["creator_name"]) for s in started["sides"]] == [
        (a, "Ann"),
        (b, "Bo"),
    ]
    sa, sb = await side(ledger, ca, a), await side(ledger, cb, b)
    assert (sa["state"], sb["state"]) == ("running", "running")
    assert (sa["starts_at"], sa["ends_at"]) == (sb["starts_at"], sb["ends_at"])
    assert await ledger.battles.invites(b) == {"outgoing": None, "incoming": []}

    await gift(ledger, ann, a, ca, gift_id="corgi")  # 299
    await gift(ledger, bob, a, ca)  # 1
    await gift(ledger, cat, b, cb, gift_id="corgi", count=2)
    live = await ledger.battles.live(b)
    assert live is not None and live["state"] == "running"
    assert [(s["stream_id"], s["score"]) for s in live["sides"]] == [(a, 300), (b, 598)]
    assert live["sides"][0]["top"] == [
        {"user_id": ann, "coins": 299},
        {"user_id": bob, "coins": 1},
    ]

    result = (await ledger.battles.end(stream_id=b, actor_id=ca, reason="ended")).doc
    assert set(result) == BATTLE_END_EVENT_FIELDS
    assert (result["winner"], result["draw"], result["reason"]) == (b, False, "ended")
    assert [(s["stream_id"], s["score"], s["mvp"]) for s in result["sides"]] == [
        (a, 300, {"user_id": ann, "coins": 299}),
        (b, 598, {"user_id": cat, "coins": 598}),
    ]
    assert all(s["ended_at"] <= result["ended_at"] for s in result["sides"])
    assert await ledger.battles.result("b1") == result
    again = await ledger.battles.end(stream_id=a, actor_id=cb, reason="ended")
    assert again.replayed and again.doc == result

    await gift(ledger, ann, a, ca, gift_id="corgi")  # after the end: never scores
    for stream, scored in ((a, 2), (b, 1)):
        events = await feed(ledger, stream)
        assert len([e for e in events if e.get("battle_id") == "b1"]) == scored
    ended = await ledger.battles.live(a)
    assert ended is not None and ended["state"] == "ended" and ended["result"] == result
    await reconciled(ledger)


async def test_replays_of_each_step_return_the_first_reply(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    first = await ledger.battles.invite(battle_id="r1", from_stream=a, to_stream=b, actor_id=ca)
    again = await ledger.battles.invite(battle_id="r1", from_stream=a, to_stream=b, actor_id=ca)
    assert again.replayed and again.doc == first.doc
    started = await ledger.battles.accept(battle_id="r1", from_stream=a, to_stream=b, actor_id=cb)
    replay = await ledger.battles.accept(battle_id="r1", from_stream=a, to_stream=b, actor_id=cb)
    assert replay.replayed and replay.doc == started.doc
    await refused(
        ErrorCode.NOT_STREAM_OWNER,
        ledger.battles.accept(battle_id="r1", from_stream=a, to_stream=b, actor_id=ca),
    )
    end = await ledger.battles.end(stream_id=a, actor_id=ca, reason="ended")
    assert (await ledger.battles.end(stream_id=b, actor_id=cb, reason="ended")).doc == end.doc
    # A replayed accept of an ended battle changes nothing.
    assert (
        await ledger.battles.accept(battle_id="r1", from_stream=a, to_stream=b, actor_id=cb)
    ).replayed
    assert (await side(ledger, ca, a))["state"] == "ended"
    del r


async def test_every_invite_and_decline_refusal(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    c, cc = uid("sc"), uid("cc")
    await ledger.start_stream(stream_id=c, creator_id=cc, title="c")
    own = uid("own")
    await ledger.start_stream(stream_id=own, creator_id=ca, title="mine too")
    bt = ledger.battles

    def invite(**kw: Any) -> Any:
        args = {"battle_id": "i1", "from_stream": a, "to_stream": b, "actor_id": ca, **kw}
        return bt.invite(**args)

    detail = await refused(ErrorCode.INVALID_REQUEST, invite(duration_s=9999))
    assert detail == {"duration_s_min": 1, "duration_s_max": 600}
    await refused(ErrorCode.UNKNOWN_STREAM, invite(to_stream="nobody"))
    await refused(ErrorCode.UNKNOWN_STREAM, invite(from_stream="nobody"))
    await refused(ErrorCode.NOT_STREAM_OWNER, invite(actor_id=cb))
    await refused(ErrorCode.SELF_BATTLE, invite(to_stream=own))
    await ledger.end_stream(stream_id=c, actor_id=cc, is_admin=False)
    await refused(ErrorCode.STREAM_NOT_LIVE, invite(to_stream=c))
    assert await bt.invites(a) == {"outgoing": None, "incoming": []}
    await invite()
    detail = await refused(ErrorCode.INVITE_PENDING, invite(battle_id="i2"))
    assert detail["battle_id"] == "i1"
    detail = await refused(ErrorCode.INVITE_PENDING, invite(battle_id="i3", from_stream=own))
    assert detail == {"from_stream": a}
    # Decline: only the two creators, only the pending invitation.
    await refused(
        ErrorCode.NOT_STREAM_OWNER,
        bt.decline(battle_id="i1", from_stream=a, to_stream=b, actor_id=cc),
    )
    await refused(
        ErrorCode.UNKNOWN_INVITE,
        bt.decline(battle_id="other", from_stream=a, to_stream=b, actor_id=cb),
    )
    declined = await bt.decline(battle_id="i1", from_stream=a, to_stream=b, actor_id=cb)
    assert declined.doc["battle_id"] == "i1"
    assert await bt.invites(b) == {"outgoing": None, "incoming": []}
    assert await bt.invites(a) == {"outgoing": None, "incoming": []}
    await refused(
        ErrorCode.UNKNOWN_INVITE,
        bt.decline(battle_id="i1", from_stream=a, to_stream=b, actor_id=cb),
    )
    # A battle holds both of its streams.
    await battle(ledger, r, "i4")
    x, cx = uid("sx"), uid("cx")
    await ledger.start_stream(stream_id=x, creator_id=cx, title="x")
    detail = await refused(
        ErrorCode.BATTLE_RUNNING, bt.invite(battle_id="i5", from_stream=x, to_stream=b, actor_id=cx)
    )
    assert detail == {"stream_id": b}
    detail = await refused(ErrorCode.BATTLE_RUNNING, invite(battle_id="i6", to_stream=x))
    assert detail == {"stream_id": a}


async def test_an_invited_stream_holds_a_bounded_number_of_invitations(
    ledger: ClusterLedger,
) -> None:
    a, ca, b, cb = await two_rooms(ledger)
    k = ledger.keys
    invites, room = k.battle_invites(cb, b), k.room_channel(cb, b)
    expires = int(time.time() * 1000) + 60_000

    def incoming(op: str, sender: str, state: str = "pending", most: int = 2) -> Any:
        invite = {"battle_id": "x", "from_stream": sender, "expires_at": expires}
        return script(
            ledger,
            ScriptName.BATTLE_INCOMING,
            [invites, room],
            [op, sender, orjson.dumps(invite).decode(), state, most],
        )

    assert (await incoming("add", "s1")) is False
    assert (await incoming("add", "s1")) is True
    assert (await incoming("add", "s2")) is False
    await refused(ErrorCode.INVITEE_BUSY, incoming("add", "s3"))
    await refused(ErrorCode.INVALID_REQUEST, incoming("add", "s3", state="declined"))
    assert (await incoming("remove", "s1", "declined")) is False
    assert (await incoming("remove", "s1", "declined")) is True
    assert (await incoming("add", "s3")) is False
    # Through the ledger: a refusal in the invited stream's slot takes the invitation back.
    await ledger.command(invites, "ZADD", expires, "s4")
    limit = 16
    for i in range(limit):
        await ledger.command(invites, "ZADD", expires, f"filler{i}")
    await refused(
        ErrorCode.INVITEE_BUSY,
        ledger.battles.invite(battle_id="busy", from_stream=a, to_stream=b, actor_id=ca),
    )
    assert await ledger.command(k.battle_invite(ca, a), "EXISTS") == 0
    assert await ledger.command(k.creator_battle_invite(ca), "EXISTS") == 0


async def test_every_accept_step_refusal_changes_nothing(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt, k = ledger.battles, ledger.keys
    await refused(
        ErrorCode.UNKNOWN_INVITE,
        bt.accept(battle_id="n1", from_stream=a, to_stream=b, actor_id=cb),
    )
    await bt.invite(battle_id="n1", from_stream=a, to_stream=b, actor_id=ca)
    await refused(
        ErrorCode.UNKNOWN_INVITE,
        bt.accept(battle_id="n2", from_stream=a, to_stream=b, actor_id=cb),
    )
    await refused(
        ErrorCode.NOT_STREAM_OWNER,
        bt.accept(battle_id="n1", from_stream=a, to_stream=b, actor_id=ca),
    )
    assert await ledger.command(k.battle(ca, a), "EXISTS") == 0
    # Step 2 refuses (the invited stream ended after the invitation): side a is cancelled,
    # nothing of the battle is left in either slot.
    await ledger.end_stream(stream_id=b, actor_id=cb, is_admin=False)
    read = bt._other_stream

    async def stale(stream_id: str) -> Any:  # read while b was still live
        creator, _, name, held = await read(stream_id)
        return creator, "live", name, held

    bt._other_stream = stale  # type: ignore[method-assign]
    await refused(
        ErrorCode.STREAM_NOT_LIVE,
        bt.accept(battle_id="n1", from_stream=a, to_stream=b, actor_id=cb),
    )
    bt._other_stream = read  # type: ignore[method-assign]
    assert await ledger.command(k.battle(ca, a), "EXISTS") == 0
    assert await ledger.command(k.battle(cb, b), "EXISTS") == 0
    # Each step's own refusals, called directly.
    join = [
        k.stream(cb, b),
        k.battle_invites(cb, b),
        k.battle(cb, b),
        k.battle_top(cb, b),
        k.room_channel(cb, b),
    ]
    doc = {
        "battle_id": "n1",
        "starts_at": 1,
        "ends_at": 2,
        "duration_s": 1,
        "sides": [{"stream_id": a}, {"stream_id": b, "creator_id": cb}],
    }

    def run(name: ScriptName, keys: list[str], args: list[Any]) -> Any:
        return script(ledger, name, keys, args)

    await refused(
        ErrorCode.INVALID_REQUEST, run(ScriptName.BATTLE_JOIN, join, ["n1", a, b, cb, ca, "{}"])
    )
    args = ["n1", a, b, ca, ca, orjson.dumps(doc).decode()]
    await refused(ErrorCode.NOT_STREAM_OWNER, run(ScriptName.BATTLE_JOIN, join, args))
    args[3] = cb
    await refused(ErrorCode.STREAM_NOT_LIVE, run(ScriptName.BATTLE_JOIN, join, args))
    step3 = [k.battle(ca, a), k.room_channel(ca, a)]
    await refused(ErrorCode.UNKNOWN_BATTLE, run(ScriptName.BATTLE_RUN, step3, ["run", "n1", b]))
    assert (await run(ScriptName.BATTLE_RUN, step3, ["cancel", "n1", b])) is True
    await refused(ErrorCode.INVALID_REQUEST, run(ScriptName.BATTLE_RUN, step3, ["go", "n1", b]))
    del r


async def test_a_crash_between_the_accept_steps_is_finished_by_a_retry(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt = ledger.battles
    sender = await funded(ledger, 10_000)
    for stop_after in ("start", "join"):
        battle_id = f"c-{stop_after}"
        await bt.invite(battle_id=battle_id, from_stream=a, to_stream=b, actor_id=ca)
        real = bt._join_and_run

        async def crash(*args: Any, _stop: str = stop_after, _real: Any = real) -> None:
            if _stop == "join":
                # Step 2 runs, step 3 never does.
                await bt._run(
                    ScriptName.BATTLE_JOIN,
                    *_join_call(ledger, r, args[2], args[5]),
                )
            raise ConnectionError("the process died")

        bt._join_and_run = crash  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await bt.accept(battle_id=battle_id, from_stream=a, to_stream=b, actor_id=cb)
        bt._join_and_run = real  # type: ignore[method-assign]
        assert (await side(ledger, ca, a))["state"] == "starting"
        # Side a does not score while starting; side b does once it joined.
        await gift(ledger, sender, a, ca)
        await gift(ledger, sender, b, cb)
        live = await bt.live(a)
        assert live is not None and live["state"] == "starting"
        assert live["sides"][0]["score"] == 0
        # The retry finishes it, and side a scores from then on.
        retried = await bt.accept(battle_id=battle_id, from_stream=a, to_stream=b, actor_id=cb)
        assert retried.replayed
        assert (await side(ledger, ca, a))["state"] == "running"
        assert (await side(ledger, cb, b))["state"] == "running"
        await gift(ledger, sender, a, ca)
        live = await bt.live(b)
        assert live is not None
        assert [s["score"] for s in live["sides"]] == [1, 1 if stop_after == "join" else 0]
        await bt.end(stream_id=a, actor_id=ca, reason="ended")
    await reconciled(ledger)


def _join_call(ledger: ClusterLedger, r: Rooms, battle_id: str, started: Any) -> Any:
    a, ca, b, cb = r
    k = ledger.keys
    return (
        [
            k.stream(cb, b),
            k.battle_invites(cb, b),
            k.battle(cb, b),
            k.battle_top(cb, b),
            k.room_channel(cb, b),
        ],
        [battle_id, a, b, cb, ca, orjson.dumps(started.doc).decode()],
        cb,
    )


async def test_an_accept_stopped_after_its_first_step_is_resumed_or_cancelled(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt = ledger.battles
    await bt.invite(battle_id="s1", from_stream=a, to_stream=b, actor_id=ca)

    async def died(*args: Any) -> None:
        raise ConnectionError("the process died")

    real = bt._join_and_run
    bt._join_and_run = died  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await bt.accept(battle_id="s1", from_stream=a, to_stream=b, actor_id=cb)
    bt._join_and_run = real  # type: ignore[method-assign]
    # Within the invitation's lifetime it is left for the retry; after it, cancelled.
    await bt.finish_due(a)
    assert (await side(ledger, ca, a))["state"] == "starting"
    # Ending it now: it has not begun, so there is nothing to end (and nothing changes).
    await refused(ErrorCode.UNKNOWN_BATTLE, bt.end(stream_id=a, actor_id=ca, reason="ended"))
    assert await bt.end_for_stream(a) is None
    assert (await side(ledger, ca, a))["state"] == "starting"
    await ledger.command(ledger.keys.battle(ca, a), "HINCRBY", "starts_at", -120_000)
    await bt.finish_due(a)
    assert await side(ledger, ca, a) == {}
    # The streams are free again.
    await battle(ledger, r, "s2")


async def test_every_end_refusal_and_an_end_on_time(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt, k = ledger.battles, ledger.keys
    await refused(ErrorCode.UNKNOWN_BATTLE, bt.end(stream_id=a, actor_id=ca, reason="ended"))
    await refused(ErrorCode.UNKNOWN_BATTLE, bt.end(stream_id="nobody", actor_id=ca, reason="ended"))
    started = await battle(ledger, r, "e1", duration_s=1)
    detail = await refused(
        ErrorCode.BATTLE_NOT_OVER, bt.end(stream_id=a, actor_id=SERVER_ACTOR, reason="time")
    )
    assert detail == {"ends_at": started["ends_at"]}
    outsider = uid("out")
    await refused(
        ErrorCode.NOT_STREAM_OWNER, bt.end(stream_id=a, actor_id=outsider, reason="ended")
    )

    def run(name: ScriptName, keys: list[str], args: list[Any]) -> Any:
        return script(ledger, name, keys, args)

    end_keys = [k.battle(ca, a), k.battle_top(ca, a)]
    await refused(
        ErrorCode.UNKNOWN_BATTLE,
        run(ScriptName.BATTLE_END_SIDE, end_keys, ["zz", a, "-", "time", 3]),
    )
    await refused(
        ErrorCode.INVALID_REQUEST,
        run(ScriptName.BATTLE_END_SIDE, end_keys, ["e1", a, "-", "late", 3]),
    )
    await refused(
        ErrorCode.INVALID_REQUEST,
        run(ScriptName.BATTLE_RESULT, [k.battle_result("e1")], ["e1", "{}", "{}", 60]),
    )
    sender = await funded(ledger, 10_000)
    await gift(ledger, sender, a, ca)
    await asyncio.sleep(max(0, started["ends_at"] / 1000 - time.time()) + 0.05)
    # Past ends_at nothing scores, before anyone ended it.
    late = await gift(ledger, sender, b, cb)
    assert "battle_id" not in (await feed(ledger, b))[-1] and late.seq == 1
    assert await bt.finish_due(a) is not None
    result = await bt.result("e1")
    assert (result["reason"], result["winner"], result["ended_at"]) == (
        "time",
        a,
        started["ends_at"],
    )
    assert await bt.finish_due(a) is None
    with pytest.raises(RequestError):
        await bt.result("never")


async def test_sides_ended_without_a_stored_result_are_finished_later(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt = ledger.battles
    await battle(ledger, r, "f1")
    for creator, stream in ((ca, a), (cb, b)):
        await bt._end_side(creator, stream, "f1", ca, "ended")  # the process died after these
    with pytest.raises(RequestError):
        await bt.result("f1")
    stored = await bt.finish_due(b)
    assert stored is not None and stored.doc["reason"] == "ended"
    assert await bt.result("f1") == stored.doc
    # A stream's end ends its battle, both sides.
    await battle(ledger, r, "f2")
    await ledger.end_stream(stream_id=a, actor_id=ca, is_admin=False)
    ended = await bt.end_for_stream(a)
    assert ended is not None and ended.doc["reason"] == "stream_ended"
    assert (await side(ledger, cb, b))["state"] == "ended"
    assert await bt.end_for_stream(a) is None


async def test_a_corrupt_side_fails_the_credit_before_any_write(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    await battle(ledger, r, "k1")
    await ledger.command(ledger.keys.battle(cb, b), "HSET", "score", "1e3")
    sender = await funded(ledger, 1000)
    before = await ledger.command(ledger.keys.stream(cb, b), "HGETALL")
    with pytest.raises(InvariantError):
        await gift(ledger, sender, b, cb)
    assert await ledger.command(ledger.keys.stream(cb, b), "HGETALL") == before
    del a, ca


# Races at the boundaries.


async def storm(ledger: ClusterLedger, r: Rooms, senders: list[str], n: int) -> None:
    a, ca, b, cb = r
    await asyncio.gather(
        *(gift(ledger, senders[i % len(senders)], (a, b)[i % 2], (ca, cb)[i % 2]) for i in range(n))
    )


async def assert_windows_exact(ledger: ClusterLedger, r: Rooms, battle_id: str) -> list[int]:
    """Per side: the score is the coins of the feed's events that carry the battle id;
    those are one unbroken run of seq, inside the side's own window on its primary's clock
    (from when it began to score to when it ended), and every other event is outside."""
    a, ca, b, cb = r
    result = await ledger.battles.result(battle_id)
    scores = []
    for (creator, stream), res in zip(((ca, a), (cb, b)), result["sides"], strict=True):
        s = await side(ledger, creator, stream)
        opens = max(int(s["starts_at"]), int(s["running_at"]))
        closes = int(s["ended_at"])
        events = sorted(await feed(ledger, stream), key=lambda e: e["seq"])
        flags = [e.get("battle_id") == battle_id for e in events]
        assert True in flags and False in flags
        first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
        assert all(flags[first : last + 1]), "a transfer inside the window did not score"
        for e, scored in zip(events, flags, strict=True):
            if scored:
                assert opens <= e["ts"] <= closes
            else:
                assert e["ts"] <= opens or e["ts"] >= closes
        assert res["score"] == sum(e["coins"] for e, f in zip(events, flags, strict=False) if f)
        assert res["score"] == int(s["score"])
        scores.append(res["score"])
    return scores


async def test_transfers_racing_the_start_and_an_early_end_score_exactly(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    bt = ledger.battles
    senders = [await funded(ledger, 1_000_000, f"v{i}") for i in range(4)]
    await bt.invite(battle_id="race", from_stream=a, to_stream=b, actor_id=ca)
    await asyncio.gather(
        storm(ledger, r, senders, 150),
        bt.accept(battle_id="race", from_stream=a, to_stream=b, actor_id=cb),
        storm(ledger, r, senders, 150),
    )
    await storm(ledger, r, senders, 20)  # inside, on both sides
    await asyncio.gather(
        storm(ledger, r, senders, 150),
        bt.end(stream_id=a, actor_id=ca, reason="ended"),
        storm(ledger, r, senders, 150),
    )
    await storm(ledger, r, senders, 20)  # after the end, on both sides
    await assert_windows_exact(ledger, r, "race")
    await reconciled(ledger)


async def test_transfers_racing_the_end_of_time_score_exactly(ledger: ClusterLedger) -> None:
    r = a, _ca, b, _cb = await two_rooms(ledger)
    senders = [await funded(ledger, 1_000_000, f"w{i}") for i in range(4)]
    started = await battle(ledger, r, "clock", duration_s=1)
    await storm(ledger, r, senders, 10)
    while time.time() * 1000 < started["ends_at"] + 50:
        await storm(ledger, r, senders, 20)
    await ledger.battles.finish_due(b)
    scores = await assert_windows_exact(ledger, r, "clock")
    assert all(score > 0 for score in scores)
    for stream in (a, b):
        for e in await feed(ledger, stream):
            if e["ts"] >= started["ends_at"]:
                assert "battle_id" not in e
    await reconciled(ledger)


async def test_each_step_refuses_what_its_own_slot_forbids(ledger: ClusterLedger) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    k = ledger.keys

    def run(name: ScriptName, keys: list[str], args: list[Any]) -> Any:
        return script(ledger, name, keys, args)

    start = [
        k.stream(ca, a),
        k.battle_invite(ca, a),
        k.battle(ca, a),
        k.battle_top(ca, a),
        k.creator_battle_invite(ca),
    ]
    await ledger.battles.invite(battle_id="x1", from_stream=a, to_stream=b, actor_id=ca)
    base = ["x1", a, b, cb, ca, "Bo", "live", "0"]
    await refused(ErrorCode.INVALID_REQUEST, run(ScriptName.BATTLE_START, start, [*base[:7], "2"]))
    detail = await refused(
        ErrorCode.BATTLE_RUNNING, run(ScriptName.BATTLE_START, start, [*base[:7], "1"])
    )
    assert detail == {"stream_id": b}
    await refused(
        ErrorCode.UNKNOWN_STREAM, run(ScriptName.BATTLE_START, start, [*base[:6], "", "0"])
    )
    await refused(
        ErrorCode.UNKNOWN_INVITE, run(ScriptName.BATTLE_START, start, [*base[:4], cb, *base[5:]])
    )
    # A corrupt key of the slot fails the step before its first write.
    await ledger.command(k.battle_top(ca, a), "SET", "not a zset")
    with pytest.raises(InvariantError):
        await run(ScriptName.BATTLE_START, start, base)
    assert await ledger.command(k.battle(ca, a), "EXISTS") == 0
    await ledger.command(k.battle_top(ca, a), "DEL")
    assert await run(ScriptName.BATTLE_START, start, base) is False
    assert await run(ScriptName.BATTLE_START, start, base) is True
    # Side b already in another battle: the join refuses, the accept cancels side a.
    await ledger.command(k.battle(cb, b), "HSET", "id", "other", "state", "running")
    doc = await ledger.command(k.battle(ca, a), "HGET", "json")
    join = [
        k.stream(cb, b),
        k.battle_invites(cb, b),
        k.battle(cb, b),
        k.battle_top(cb, b),
        k.room_channel(cb, b),
    ]
    detail = await refused(
        ErrorCode.BATTLE_RUNNING,
        run(ScriptName.BATTLE_JOIN, join, ["x1", a, b, cb, ca, doc.decode()]),
    )
    assert detail == {"stream_id": b}
    step3 = [k.battle(ca, a), k.room_channel(ca, a)]
    assert await run(ScriptName.BATTLE_RUN, step3, ["cancel", "x1", b]) is False
    assert await run(ScriptName.BATTLE_RUN, step3, ["cancel", "x1", b]) is True
    await ledger.command(k.battle(cb, b), "DEL")
    # A running side is not cancelled.
    await battle(ledger, r, "x2")
    detail = await refused(
        ErrorCode.BATTLE_RUNNING, run(ScriptName.BATTLE_RUN, step3, ["cancel", "x2", b])
    )
    assert await run(ScriptName.BATTLE_RUN, step3, ["run", "x2", b]) is True
    # The incoming list takes only a well-formed invitation of the named stream.
    incoming = [k.battle_invites(cb, b), k.room_channel(cb, b)]
    bad = orjson.dumps({"from_stream": "someone-else", "expires_at": 1}).decode()
    await refused(
        ErrorCode.INVALID_REQUEST,
        run(ScriptName.BATTLE_INCOMING, incoming, ["add", a, bad, "pending", 16]),
    )
    await refused(
        ErrorCode.INVALID_REQUEST,
        run(ScriptName.BATTLE_INCOMING, incoming, ["add", a, "[", "pending", 16]),
    )
    # The result is stored once.
    result = (await ledger.battles.end(stream_id=a, actor_id=ca, reason="ended")).doc
    sides = [
        (await side(ledger, creator, stream))["side_result"]
        for creator, stream in ((ca, a), (cb, b))
    ]
    assert await run(ScriptName.BATTLE_RESULT, [k.battle_result("x2")], ["x2", *sides, 60]) is True
    assert await ledger.battles.result("x2") == result
    mismatched = orjson.loads(sides[1])
    mismatched["battle_id"] = "x3"
    await refused(
        ErrorCode.INVALID_REQUEST,
        run(
            ScriptName.BATTLE_RESULT,
            [k.battle_result("x3")],
            ["x3", sides[0], orjson.dumps(mismatched).decode(), 60],
        ),
    )
    del detail


async def test_concurrent_accepts_and_ends_over_two_processes_start_and_end_one_battle(
    ledger: ClusterLedger, redis_cluster: RedisCluster, keys: Keys
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    other = await open_ledger(redis_cluster, keys.prefix, LIMITS)
    try:
        await ledger.battles.invite(battle_id="c1", from_stream=a, to_stream=b, actor_id=ca)
        replies = await asyncio.gather(
            *(
                (ledger, other)[i % 2].battles.accept(
                    battle_id="c1", from_stream=a, to_stream=b, actor_id=cb
                )
                for i in range(10)
            )
        )
        assert len({orjson.dumps(reply.doc) for reply in replies}) == 1
        assert [reply.replayed for reply in replies].count(False) == 1
        assert (
            (await side(ledger, ca, a))["state"]
            == (await side(ledger, cb, b))["state"]
            == "running"
        )
        ends = await asyncio.gather(
            *(
                (ledger, other)[i % 2].battles.end(
                    stream_id=(a, b)[i % 2], actor_id=(ca, cb)[i % 2], reason="ended"
                )
                for i in range(10)
            )
        )
        assert len({orjson.dumps(end.doc) for end in ends}) == 1
        assert [end.replayed for end in ends].count(False) == 1
        assert await ledger.battles.result("c1") == ends[0].doc
    finally:
        await closed(other)
    del r


async def test_one_credit_call_scores_its_new_transfers_once_and_no_replay(
    ledger: ClusterLedger,
) -> None:
    from tests.cluster.test_cluster_goals import transfer

    r = a, ca, b, cb = await two_rooms(ledger)
    await battle(ledger, r, "batch")
    fan, other = uid("fan"), uid("other")
    first = [transfer(cb, b, fan) for _ in range(3)]
    results = await ledger.credits.call(cb, b, [*first, transfer(cb, b, other)])
    assert [x.status for x in results] == ["ok"] * 4
    broken = dataclasses.replace(transfer(cb, b, other), coins=7)  # not price x count
    again = await ledger.credits.call(cb, b, [*first, broken, transfer(cb, b, fan)])
    assert [x.status for x in again] == ["replay"] * 3 + ["refused", "ok"]
    s = await side(ledger, cb, b)
    assert s["score"] == str(5 * 5)
    top = await ledger.command(ledger.keys.battle_top(cb, b), "ZREVRANGE", 0, -1, "WITHSCORES")
    assert [(m.decode(), int(float(c))) for m, c in _pairs(top)] == [
        (fan, 20),
        (other, 5),
    ]
    events = await feed(ledger, b)
    assert [e.get("battle_id") for e in events] == ["batch"] * 5
    del a, ca


async def test_the_window_is_decided_at_the_credit_not_at_the_debit(
    ledger: ClusterLedger,
) -> None:
    """A transfer debited before the start and credited after it scores; one debited during
    the battle and credited after its end (the relay's, late) does not."""
    from tests.cluster.test_cluster_goals import transfer

    r = a, ca, b, cb = await two_rooms(ledger)
    early = dataclasses.replace(transfer(cb, b, uid("early")), debit_ms=int(time.time() * 1000))
    await asyncio.sleep(0.01)
    started = await battle(ledger, r, "late")
    assert early.debit_ms < started["starts_at"]
    during = transfer(cb, b, uid("during"))
    [credited] = await ledger.credits.call(cb, b, [early])
    assert credited.status == "ok"
    await ledger.battles.end(stream_id=a, actor_id=ca, reason="ended")
    [late] = await ledger.credits.call(cb, b, [during])
    assert late.status == "ok"
    assert [e.get("battle_id") for e in await feed(ledger, b)] == ["late", None]
    result = await ledger.battles.result("late")
    assert [s["score"] for s in result["sides"]] == [0, 5]


async def test_a_live_read_with_the_opponent_known_reads_both_slots_at_once(
    ledger: ClusterLedger,
) -> None:
    r = a, ca, b, cb = await two_rooms(ledger)
    await battle(ledger, r, "hint")
    await gift(ledger, await funded(ledger, 100), b, cb)
    plain = await ledger.battles.live(a)
    assert plain is not None and [s["score"] for s in plain["sides"]] == [0, 1]
    assert await ledger.battles.live(a, b) == plain
    assert await ledger.battles.live(a, a) == plain  # a wrong hint is read again
    assert await ledger.battles.live(a, "unclaimed") == plain
    del ca
