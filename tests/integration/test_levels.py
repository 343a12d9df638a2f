"""Gifter levels and display names against a real Redis: the Lua ladder agrees with the
domain's, the level travels with gifts and leaderboards, and a level-up is announced once
(also when concurrent gifts cross it)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, LedgerRefusal
from server.domain.levels import LADDER, TopGifter, ladder_arg, level_for
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.scripts import _read
from server.protocol.events import GIFT_EVENT_FIELDS, LEVEL_UP_EVENT_FIELDS
from tests.integration.goal_helpers import of_type, published
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift, snapshot


async def _live(ledger: Ledger, *viewers: str) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t", epoch="ep1")
    for user in viewers or ("alice",):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=10_000_000)


async def test_the_scripts_ladder_agrees_with_the_domains(redis: Redis) -> None:
    """The Lua's level_of, fed the ARGV the ledger sends, at and beside every threshold."""
    source = b"\n".join(
        [_read("_lib.lua"), _read("_goals.lua"), b"""
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = level_of(ARGV[1], tonumber(ARGV[i]))
end
return out
"""]
    )  # fmt: skip
    amounts = sorted({0, 10**12} | {t + d for t in LADDER for d in (-1, 0, 1)})
    levels = await redis.eval(source.decode(), 0, ladder_arg(), *amounts)  # type: ignore[misc]
    assert levels == [level_for(a) for a in amounts]
    assert level_for(0) == 0 and level_for(1) == 1 and level_for(10**12) == len(LADDER)


def test_the_ladder_is_ascending_and_fits_its_argument() -> None:
    assert list(LADDER) == sorted(set(LADDER)) and len(LADDER) == 50
    assert len(ladder_arg()) == 50 * 12
    with pytest.raises(ValueError):
        ladder_arg((5, 3))


async def test_the_level_travels_with_each_gift(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _live(ledger)
    _, out = await published(redis, keys, gift(ledger, "g1", gift_id="perfume"))  # 20
    (event,) = out  # level 1 is the first gift itself: no level_up
    assert set(event) == GIFT_EVENT_FIELDS and event["level"] == 1
    _, out = await published(redis, keys, gift(ledger, "g2", gift_id="doughnut"))  # 50
    event, level_up = out
    assert event["level"] == 2
    assert set(level_up) == LEVEL_UP_EVENT_FIELDS
    assert (level_up["level"], level_up["prev_level"], level_up["coins"]) == (2, 1, 50)
    assert (level_up["user_id"], level_up["user_name"], level_up["seq"]) == ("alice", "Alice", 2)
    assert await ledger.fan_level(CREATOR, "alice") == 2
    assert await ledger.fan_level(CREATOR, "nobody") == 0


async def test_one_gift_may_climb_several_levels(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _live(ledger)
    _, out = await published(redis, keys, gift(ledger, "g1", gift_id="galaxy", count=4))
    (level_up,) = of_type(out, "level_up")
    assert (level_up["prev_level"], level_up["level"]) == (0, level_for(4_000))


async def test_levels_count_every_stream_of_the_creator(ledger: Ledger) -> None:
    await _live(ledger)
    await gift(ledger, "g1", gift_id="money_gun")  # 500
    await ledger.end_stream(stream_id=STREAM, actor_id=CREATOR, is_admin=False)
    await ledger.start_stream(stream_id="live2", creator_id=CREATOR, title="again")
    await gift(ledger, "g2", gift_id="money_gun", stream="live2")
    assert await ledger.fan_level(CREATOR, "alice") == level_for(1_000)
    (row,) = await ledger.leaderboard("live2")
    assert row == TopGifter("alice", "Alice", 500, level_for(1_000))


async def test_a_level_up_under_concurrent_gifts_is_announced_once(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    sends = [
        gift(ledger, f"g{i}", gift_id="rose") for i in range(120)
    ]  # 120 coins: past 50, not 400
    _, out = await published(redis, keys, asyncio.gather(*sends))
    (level_up,) = of_type(out, "level_up")
    assert (level_up["level"], level_up["coins"]) == (2, 50)
    levels = [e["level"] for e in sorted(of_type(out, "gift"), key=lambda e: e["seq"])]
    assert levels == [1] * 49 + [2] * 71
    await assert_books_reconcile(ledger)


async def test_the_leaderboard_shows_display_names_and_levels(ledger: Ledger) -> None:
    await _live(ledger, "alice", "bob")
    await gift(ledger, "g1", gift_id="corgi")
    await gift(ledger, "g2", sender="bob", gift_id="rose")
    assert await ledger.leaderboard(STREAM) == [
        TopGifter("alice", "Alice", 299, level_for(299)),
        TopGifter("bob", "Bob", 1, 1),
    ]
    # A new name (the token's) replaces the old one with the next gift.
    await ledger.send_gift(
        client_id="g3",
        sender_id="bob",
        sender_name="Bobby 🎉",
        stream_id=STREAM,
        creator_id=CREATOR,
        gift_id="rose",
        count=1,
    )
    assert (await ledger.leaderboard(STREAM))[1].name == "Bobby 🎉"


async def test_a_name_longer_than_the_bound_is_refused_and_writes_nothing(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _live(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.send_gift(
            client_id="g1",
            sender_id="alice",
            sender_name="é" * 129,  # 258 bytes
            stream_id=STREAM,
            creator_id=CREATOR,
            gift_id="rose",
            count=1,
        )
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_a_replayed_gift_moves_no_level(ledger: Ledger, redis: Redis, keys: Keys) -> None:
    await _live(ledger)
    await gift(ledger, "g1", gift_id="doughnut", count=2)
    _, out = await published(redis, keys, gift(ledger, "g1", gift_id="doughnut", count=2))
    assert out == []
    assert await redis.zscore(keys.fans(CREATOR), "alice") == 60


@pytest.mark.parametrize("bad", ["", "12", "x" * 12, "0" * 12 * 51])
async def test_a_malformed_ladder_is_refused_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    await _live(ledger)
    monkeypatch.setattr("server.ledger.ledger.LADDER_ARG", bad)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await gift(ledger, "g1")
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before
