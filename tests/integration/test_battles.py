"""The battle scripts (invite, accept, decline, end) and send_gift's scoring, against a real
Redis: the happy path, every refusal, replays, and gifts racing a battle's start and end."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal, RequestError
from server.domain.limits import BATTLE_INVITES_PER_STREAM_MAX, Limits
from server.ledger.battles import SERVER_ACTOR
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.protocol.events import (
    BATTLE_END_EVENT_FIELDS,
    BATTLE_EVENT_FIELDS,
    BATTLE_INVITE_EVENT_FIELDS,
    BATTLE_INVITE_FIELDS,
    BATTLE_SIDE_FIELDS,
)
from tests.integration.helpers import assert_books_reconcile, gift, make_ledger, snapshot

A, B, C = "room-a", "room-b", "room-c"
CA, CB, CC = "creator-a", "creator-b", "creator-c"


@pytest.fixture
def limits() -> Limits:
    return Limits(battle_seconds_min=1, gifts_per_s_max=1000, gift_burst_max=1000)


@pytest.fixture
async def ledger(redis: Redis, keys: Keys, limits: Limits) -> Ledger:
    ledger = await make_ledger(redis, keys, limits)
    for stream, creator in ((A, CA), (B, CB), (C, CC)):
        await ledger.start_stream(stream_id=stream, creator_id=creator, title=stream)
    for user in ("ann", "bob", "cat", "dan"):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=1_000_000)
    return ledger


async def _battle(ledger: Ledger, battle_id: str = "b1", duration_s: int = 60) -> dict[str, Any]:
    await ledger.battles.invite(
        battle_id=battle_id, from_stream=A, to_stream=B, actor_id=CA, duration_s=duration_s
    )
    reply = await ledger.battles.accept(
        battle_id=battle_id, from_stream=A, to_stream=B, actor_id=CB
    )
    return reply.doc


async def _gift(
    ledger: Ledger, client_id: str, sender: str, stream: str, gift_id: str = "rose"
) -> GiftReceipt:
    creator = {A: CA, B: CB, C: CC}[stream]
    return await gift(
        ledger, client_id, sender=sender, gift_id=gift_id, stream=stream, creator=creator
    )


async def _feed(ledger: Ledger, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in await ledger.feed(stream, 0, 10_000)]


async def _refused(code: ErrorCode, call: Any) -> dict[str, object] | None:
    with pytest.raises(LedgerRefusal) as info:
        await call
    assert info.value.code is code, info.value
    return info.value.detail


async def test_a_battle_scores_each_rooms_gifts_and_stores_the_result(ledger: Ledger) -> None:
    await _gift(ledger, "before", "ann", A)  # before the battle: never scores
    started = await _battle(ledger)
    assert set(started) == BATTLE_EVENT_FIELDS and started["state"] == "running"
    assert started["ends_at"] - started["starts_at"] == 60_000
    assert [s["stream_id"] for s in started["sides"]] == [A, B]
    assert all(set(s) == BATTLE_SIDE_FIELDS and s["top"] == [] for s in started["sides"])
    await _gift(ledger, "a1", "ann", A, "corgi")  # 299
    await _gift(ledger, "a2", "bob", A)  # 1
    await _gift(ledger, "b1", "cat", B, "corgi")
    await _gift(ledger, "b2", "cat", B, "corgi")
    await _gift(ledger, "c1", "dan", C, "corgi")  # another room: not in the battle
    live = await ledger.battles.live(B)
    assert live is not None
    assert [(s["stream_id"], s["score"]) for s in live["sides"]] == [(A, 300), (B, 598)]
    assert live["sides"][1]["top"] == [{"user_id": "cat", "coins": 598}]

    result = (await ledger.battles.end(stream_id=A, actor_id=CA, reason="ended")).doc
    assert set(result) == BATTLE_END_EVENT_FIELDS
    assert result["winner"] == B and result["draw"] is False and result["reason"] == "ended"
    a_side, b_side = result["sides"]
    assert (a_side["score"], a_side["mvp"]) == (300, {"user_id": "ann", "coins": 299})
    assert (b_side["score"], b_side["mvp"]) == (598, {"user_id": "cat", "coins": 598})
    assert a_side["top"] == [{"user_id": "ann", "coins": 299}, {"user_id": "bob", "coins": 1}]
    assert await ledger.battles.result("b1") == result

    await _gift(ledger, "a3", "ann", A, "corgi")  # after the end: never scores
    for stream, scored in ((A, {"a1", "a2"}), (B, {"b1", "b2"}), (C, set())):
        events = await _feed(ledger, stream)
        # The feed names the battle on exactly the gifts that scored.
        assert {e["transfer_id"] for e in events if e.get("battle_id") == "b1"} == {
            e["transfer_id"] for e in events if e.get("battle_id")
        }
        assert len([e for e in events if e.get("battle_id")]) == len(scored)
    ended = await ledger.battles.live(A)
    assert ended is not None and ended["state"] == "ended" and ended["result"] == result
    assert (
        await _refused(
            ErrorCode.UNKNOWN_BATTLE, ledger.battles.end(stream_id=C, actor_id=CC, reason="ended")
        )
        is None
    )
    await assert_books_reconcile(ledger)


async def test_both_rooms_are_told_of_invite_start_and_result(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.room_channel(A), keys.room_channel(B))
    for _ in range(2):
        await pubsub.get_message(timeout=1)
    await _battle(ledger)
    await ledger.battles.end(stream_id=B, actor_id=CB, reason="ended")
    seen: dict[bytes, list[dict[str, Any]]] = {}
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            seen.setdefault(message["channel"], []).append(orjson.loads(message["data"]))
    await pubsub.aclose()
    for channel in (keys.room_channel(A).encode(), keys.room_channel(B).encode()):
        kinds = [e["type"] for e in seen[channel]]
        assert kinds == ["battle_invite", "battle", "battle_end"]
        invite = seen[channel][0]
        assert (
            set(invite) == BATTLE_INVITE_EVENT_FIELDS
            and set(invite["invite"]) == BATTLE_INVITE_FIELDS
        )
    assert seen[keys.room_channel(A).encode()] == seen[keys.room_channel(B).encode()]


async def test_a_battle_ends_on_time_and_later_gifts_do_not_score(ledger: Ledger) -> None:
    started = await _battle(ledger, duration_s=1)
    await _gift(ledger, "in", "ann", A)
    detail = await _refused(
        ErrorCode.BATTLE_NOT_OVER,
        ledger.battles.end(stream_id=A, actor_id=SERVER_ACTOR, reason="time"),
    )
    assert detail == {"ends_at": started["ends_at"]}
    await asyncio.sleep(1.05)
    await _gift(ledger, "late", "ann", A)  # past ends_at, before anyone ended it
    assert await ledger.battles.finish_due(B) is not None
    result = await ledger.battles.result("b1")
    assert result["reason"] == "time" and result["ended_at"] == started["ends_at"]
    assert [s["score"] for s in result["sides"]] == [1, 0] and result["winner"] == A
    late = [e for e in await _feed(ledger, A) if e.get("battle_id")]
    assert len(late) == 1 and late[0]["ts"] < started["ends_at"]


async def test_a_draw_has_no_winner_and_no_mvp_without_gifts(ledger: Ledger) -> None:
    await _battle(ledger)
    result = (await ledger.battles.end(stream_id=A, actor_id=CB, reason="ended")).doc
    assert result["draw"] is True and result["winner"] is None
    assert [s["mvp"] for s in result["sides"]] == [None, None]
    assert [s["top"] for s in result["sides"]] == [[], []]
    # The accepted invitation no longer holds its creator back: the next battle may start.
    await ledger.battles.invite(battle_id="b2", from_stream=A, to_stream=C, actor_id=CA)


async def test_ending_a_stream_ends_its_battle(ledger: Ledger) -> None:
    await _battle(ledger)
    await _gift(ledger, "b1", "cat", B)
    await ledger.end_stream(stream_id=A, actor_id=CA, is_admin=False)
    reply = await ledger.battles.end_for_stream(A)
    assert reply is not None and reply.doc["reason"] == "stream_ended"
    assert reply.doc["winner"] == B
    await _gift(ledger, "b2", "cat", B)  # the other room no longer scores
    assert (await ledger.battles.result("b1"))["sides"][1]["score"] == 1
    assert await ledger.battles.end_for_stream(A) is None  # nothing runs any more


async def test_replays_return_the_first_reply(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    first = await ledger.battles.invite(
        battle_id="b1", from_stream=A, to_stream=B, actor_id=CA, duration_s=60
    )
    again = await ledger.battles.invite(
        battle_id="b1", from_stream=A, to_stream=B, actor_id=CA, duration_s=60
    )
    assert again.replayed and again.doc == first.doc and not first.replayed
    started = await ledger.battles.accept(battle_id="b1", from_stream=A, to_stream=B, actor_id=CB)
    before = await snapshot(redis, keys)
    replay = await ledger.battles.accept(battle_id="b1", from_stream=A, to_stream=B, actor_id=CB)
    assert replay.replayed and replay.doc == started.doc
    assert await snapshot(redis, keys) == before
    ended = await ledger.battles.end(stream_id=A, actor_id=CA, reason="ended")
    before = await snapshot(redis, keys)
    for stream, actor in ((A, CA), (B, CB)):
        replay = await ledger.battles.end(stream_id=stream, actor_id=actor, reason="ended")
        assert replay.replayed and replay.doc == ended.doc
    assert await snapshot(redis, keys) == before


async def test_every_invite_refusal_changes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    b = ledger.battles
    await ledger.start_stream(stream_id="a2", creator_id=CA, title="second")
    await ledger.start_stream(stream_id="off", creator_id="creator-off", title="off")
    await ledger.end_stream(stream_id="off", actor_id="creator-off", is_admin=False)
    before = await snapshot(redis, keys)

    def invite(**kw: Any) -> Any:
        args: dict[str, Any] = {
            "battle_id": "x", "from_stream": A, "to_stream": B, "actor_id": CA, "duration_s": 60
        }  # fmt: skip
        return b.invite(**{**args, **kw})

    assert await _refused(ErrorCode.INVALID_REQUEST, invite(duration_s=601)) == {
        "duration_s_min": 1,
        "duration_s_max": 600,
    }
    await _refused(ErrorCode.INVALID_REQUEST, invite(duration_s=0))
    await _refused(ErrorCode.INVALID_REQUEST, invite(battle_id="bad id"))
    await _refused(ErrorCode.NOT_STREAM_OWNER, invite(actor_id=CB))
    await _refused(ErrorCode.UNKNOWN_STREAM, invite(to_stream="nowhere"))
    await _refused(ErrorCode.SELF_BATTLE, invite(to_stream=A))
    await _refused(ErrorCode.SELF_BATTLE, invite(to_stream="a2"))
    await _refused(ErrorCode.STREAM_NOT_LIVE, invite(to_stream="off"))
    assert await snapshot(redis, keys) == before

    await invite()
    detail = await _refused(ErrorCode.INVITE_PENDING, invite(battle_id="y", to_stream=C))
    assert detail is not None and detail["battle_id"] == "x" and detail["to_stream"] == B
    # One pending invitation per creator, whichever of their streams sends it.
    assert await _refused(
        ErrorCode.INVITE_PENDING, invite(battle_id="y", from_stream="a2", to_stream=C)
    ) == {"from_stream": A}
    await b.accept(battle_id="x", from_stream=A, to_stream=B, actor_id=CB)
    assert await _refused(
        ErrorCode.BATTLE_RUNNING,
        b.invite(battle_id="z", from_stream=C, to_stream=B, actor_id=CC, duration_s=60),
    ) == {"stream_id": B}
    assert await _refused(ErrorCode.BATTLE_RUNNING, invite(battle_id="y", to_stream=C)) == {
        "stream_id": A
    }


async def test_an_invited_stream_holds_a_bounded_number_of_invitations(ledger: Ledger) -> None:
    for i in range(BATTLE_INVITES_PER_STREAM_MAX):
        await ledger.start_stream(stream_id=f"s{i}", creator_id=f"c{i}", title="")
        await ledger.battles.invite(
            battle_id=f"i{i}", from_stream=f"s{i}", to_stream=C, actor_id=f"c{i}", duration_s=60
        )
    invites = await ledger.battles.invites(C)
    assert len(invites["incoming"]) == BATTLE_INVITES_PER_STREAM_MAX
    assert invites["outgoing"] is None
    assert await _refused(
        ErrorCode.INVITEE_BUSY,
        ledger.battles.invite(battle_id="one-more", from_stream=A, to_stream=C, actor_id=CA),
    ) == {"invites_max": BATTLE_INVITES_PER_STREAM_MAX}


async def test_every_accept_decline_and_end_refusal(
    ledger: Ledger, redis: Redis, keys: Keys, limits: Limits
) -> None:
    b = ledger.battles
    await b.invite(battle_id="x", from_stream=A, to_stream=B, actor_id=CA, duration_s=60)
    before = await snapshot(redis, keys)
    await _refused(
        ErrorCode.UNKNOWN_INVITE, b.accept(battle_id="y", from_stream=A, to_stream=B, actor_id=CB)
    )
    await _refused(
        ErrorCode.UNKNOWN_INVITE, b.accept(battle_id="x", from_stream=A, to_stream=C, actor_id=CC)
    )
    await _refused(
        ErrorCode.NOT_STREAM_OWNER,
        b.accept(battle_id="x", from_stream=A, to_stream=B, actor_id=CA),
    )
    await _refused(
        ErrorCode.NOT_STREAM_OWNER,
        b.decline(battle_id="x", from_stream=A, to_stream=B, actor_id=CC),
    )
    await _refused(
        ErrorCode.UNKNOWN_INVITE,
        b.decline(battle_id="y", from_stream=A, to_stream=B, actor_id=CB),
    )
    assert await snapshot(redis, keys) == before
    declined = await b.decline(battle_id="x", from_stream=A, to_stream=B, actor_id=CB)
    assert declined.doc["battle_id"] == "x"
    await _refused(
        ErrorCode.UNKNOWN_INVITE, b.accept(battle_id="x", from_stream=A, to_stream=B, actor_id=CB)
    )
    # The inviter may invite again at once (from any stream of theirs), and withdraw it.
    await ledger.start_stream(stream_id="a2", creator_id=CA, title="second")
    await b.invite(battle_id="x2", from_stream="a2", to_stream=B, actor_id=CA, duration_s=60)
    await b.decline(battle_id="x2", from_stream="a2", to_stream=B, actor_id=CA)
    assert (await b.invites(B))["incoming"] == []
    await b.invite(battle_id="x3", from_stream=A, to_stream=B, actor_id=CA, duration_s=60)
    await b.decline(battle_id="x3", from_stream=A, to_stream=B, actor_id=CB)

    await _battle(ledger, "b3")
    await _refused(ErrorCode.NOT_STREAM_OWNER, b.end(stream_id=A, actor_id=CC, reason="ended"))
    await _refused(ErrorCode.UNKNOWN_BATTLE, b.end(stream_id=C, actor_id=CC, reason="ended"))
    with pytest.raises(RequestError):
        await b.result("b3")  # not finished yet


async def test_an_invitation_expires(redis: Redis, keys: Keys) -> None:
    ledger = await make_ledger(redis, keys, Limits(battle_seconds_min=1, battle_invite_ttl_s=1))
    for stream, creator in ((A, CA), (B, CB)):
        await ledger.start_stream(stream_id=stream, creator_id=creator, title="")
    await ledger.battles.invite(battle_id="x", from_stream=A, to_stream=B, actor_id=CA)
    await asyncio.sleep(1.05)
    await _refused(
        ErrorCode.UNKNOWN_INVITE,
        ledger.battles.accept(battle_id="x", from_stream=A, to_stream=B, actor_id=CB),
    )
    assert await ledger.battles.invites(B) == {"outgoing": None, "incoming": []}
    # Expired, it no longer holds the inviter back.
    await ledger.battles.invite(battle_id="y", from_stream=A, to_stream=B, actor_id=CA)


async def _gift_storm(ledger: Ledger, prefix: str, n: int) -> None:
    senders = ("ann", "bob", "cat", "dan")
    await asyncio.gather(
        *(_gift(ledger, f"{prefix}{i}", senders[i % 4], (A, B)[i % 2]) for i in range(n))
    )


async def _assert_scores_are_a_contiguous_run(ledger: Ledger, battle_id: str) -> list[int]:
    """Each room's scoring gifts are one unbroken run of its sequence numbers, and the
    score is their coins: no gift inside the window was missed, none outside counted."""
    result = await ledger.battles.result(battle_id)
    scores = []
    for side in result["sides"]:
        events = sorted(await _feed(ledger, side["stream_id"]), key=lambda e: e["seq"])
        flags = [e.get("battle_id") == battle_id for e in events]
        if True in flags:
            first = flags.index(True)
            last = len(flags) - 1 - flags[::-1].index(True)
            assert all(flags[first : last + 1]), "a gift inside the window did not score"
        assert side["score"] == sum(e["coins"] for e in events if e.get("battle_id") == battle_id)
        scores.append(side["score"])
    return scores


async def test_gifts_racing_the_start_and_the_end_count_exactly_once(ledger: Ledger) -> None:
    b = ledger.battles
    await b.invite(battle_id="race", from_stream=A, to_stream=B, actor_id=CA, duration_s=60)
    await asyncio.gather(
        _gift_storm(ledger, "s", 200),
        b.accept(battle_id="race", from_stream=A, to_stream=B, actor_id=CB),
        _gift_storm(ledger, "t", 200),
    )
    await asyncio.gather(
        _gift_storm(ledger, "u", 200),
        b.end(stream_id=A, actor_id=CA, reason="ended"),
        _gift_storm(ledger, "v", 200),
    )
    scores = await _assert_scores_are_a_contiguous_run(ledger, "race")
    assert sum(scores) > 0
    await assert_books_reconcile(ledger)


async def test_gifts_racing_the_end_of_time_count_exactly_once(ledger: Ledger) -> None:
    started = await _battle(ledger, "clock", duration_s=1)
    deadline = started["ends_at"]
    n = 0
    while True:
        await _gift_storm(ledger, f"w{n}-", 20)
        n += 1
        events = await _feed(ledger, A)
        if events[-1]["ts"] >= deadline + 20:
            break
        await asyncio.sleep(0.02)
    await ledger.battles.finish_due(A)
    await _assert_scores_are_a_contiguous_run(ledger, "clock")
    for stream in (A, B):
        for event in await _feed(ledger, stream):
            assert (event.get("battle_id") == "clock") == (
                started["starts_at"] <= event["ts"] < deadline
            )


async def test_a_corrupt_key_fails_each_battle_script_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    b = ledger.battles
    await b.invite(battle_id="k1", from_stream=A, to_stream=B, actor_id=CA, duration_s=60)
    await redis.set(keys.battle_top(B), "not a zset")
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await b.accept(battle_id="k1", from_stream=A, to_stream=B, actor_id=CB)
    assert await snapshot(redis, keys) == before
    await redis.delete(keys.battle_top(B))
    await b.accept(battle_id="k1", from_stream=A, to_stream=B, actor_id=CB)
    await redis.set(keys.battle_result("k1"), "x")
    await redis.delete(keys.battle_top(A))
    await redis.hset(keys.battle_top(A), "not", "a zset")  # type: ignore[misc]
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await b.end(stream_id=A, actor_id=CA, reason="ended")
    assert await snapshot(redis, keys) == before
    # A gift into the battling room fails before its first write as well.
    with pytest.raises(InvariantError):
        await _gift(ledger, "corrupt", "ann", A)
    assert await snapshot(redis, keys) == before
    await redis.hset(keys.battle(B), "score", "1e3")  # type: ignore[misc]
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await _gift(ledger, "corrupt2", "ann", B)
    assert await snapshot(redis, keys) == before
