"""send_gift.lua against a real Redis: success, every refusal, replay, races, books."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.levels import TopGifter
from server.domain.limits import Limits
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.ledger.reconcile import reconcile
from tests.integration.helpers import gift as send_gift
from tests.integration.helpers import snapshot

STREAM = "live1"
CREATOR = "creator1"


async def _setup(ledger: Ledger, *viewers: tuple[str, int]) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="hello")
    for user, coins in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=coins)


async def _send(
    ledger: Ledger,
    client_id: str,
    sender: str = "alice",
    gift: str = "rose",
    count: int = 1,
    stream: str = STREAM,
    creator: str = CREATOR,
) -> GiftReceipt:
    return await send_gift(
        ledger, client_id, sender=sender, gift_id=gift, count=count, stream=stream, creator=creator
    )


async def test_gift_moves_coins_to_diamonds_and_platform(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 1000))
    receipt = await _send(ledger, "g1", gift="corgi", count=2)  # 299 coins each
    assert (receipt.coins, receipt.diamonds, receipt.platform_coins) == (598, 299, 299)
    assert receipt.balance == 402 and receipt.seq == 1 and receipt.combo == 2
    assert not receipt.replayed
    assert (await ledger.balance("alice")).coins == 402
    assert (await ledger.balance(CREATOR)).diamonds == 299
    stream = await ledger.stream(STREAM)
    assert stream is not None
    assert (stream.last_sequence, stream.coins_total, stream.gifts_total) == (1, 598, 2)
    assert await ledger.leaderboard(STREAM) == [TopGifter("alice", "Alice", 598, 3)]
    assert len(await ledger.feed(STREAM, 0, 10)) == 1
    assert (await reconcile(ledger.redis, ledger.keys)).ok


async def test_odd_amount_rounds_creator_down_platform_gets_remainder(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 10))
    receipt = await _send(ledger, "g1", gift="finger_heart", count=1)  # 5 coins
    assert (receipt.diamonds, receipt.platform_coins) == (2, 3)


async def test_replay_returns_original_receipt_and_moves_nothing(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100))
    first = await _send(ledger, "same-id", count=3)
    again = await _send(ledger, "same-id", count=3)
    assert again.replayed and again.transfer_id == first.transfer_id
    assert again.balance == first.balance == 97
    assert (await ledger.balance("alice")).coins == 97
    assert (await ledger.stream(STREAM)).last_sequence == 1  # type: ignore[union-attr]


async def test_same_id_different_content_is_refused(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100))
    await _send(ledger, "same-id", count=3)
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "same-id", count=4)
    assert refused.value.code is ErrorCode.DUPLICATE_MISMATCH
    assert (await ledger.balance("alice")).coins == 97


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"gift": "no_such_gift"}, ErrorCode.UNKNOWN_GIFT),
        ({"stream": "nope"}, ErrorCode.UNKNOWN_STREAM),
        ({"sender": CREATOR}, ErrorCode.SELF_GIFT),
        ({"creator": "someone_else"}, ErrorCode.INVALID_REQUEST),
        ({"gift": "universe"}, ErrorCode.INSUFFICIENT_FUNDS),
        ({"count": 0}, ErrorCode.INVALID_REQUEST),
        ({"count": 10_000}, ErrorCode.INVALID_REQUEST),
        ({"sender": "bob"}, ErrorCode.INSUFFICIENT_FUNDS),  # bob has no account at all
    ],
)
async def test_refusals_write_nothing(
    ledger: Ledger, redis: Redis, keys: Keys, kwargs: dict[str, object], code: ErrorCode
) -> None:
    await _setup(ledger, ("alice", 100))
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "g-refused", **kwargs)  # type: ignore[arg-type]
    assert refused.value.code is code
    assert await snapshot(redis, keys) == before


async def test_ended_stream_refuses(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100))
    await ledger.end_stream(stream_id=STREAM, actor_id=CREATOR, is_admin=False)
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "g1")
    assert refused.value.code is ErrorCode.STREAM_NOT_LIVE
    assert (await ledger.balance("alice")).coins == 100


async def test_insufficient_funds_reports_balance_and_price(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100))
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "g1", gift="money_gun")
    assert refused.value.detail == {"balance": 100, "price": 500}


async def test_rate_limit_is_enforced_in_redis(redis: Redis, keys: Keys) -> None:
    ledger = Ledger(redis, keys=keys, limits=Limits(gifts_per_s_max=1, gift_burst_max=3))
    from server.domain.catalog import load_catalog

    await ledger.prepare(load_catalog())
    await _setup(ledger, ("alice", 100))
    for i in range(3):
        await _send(ledger, f"g{i}")
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "g3")
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert (await ledger.balance("alice")).coins == 97


async def test_daily_spending_limit(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 1000))
    await ledger.set_daily_limit("alice", 150)
    await _send(ledger, "g1", gift="hand_hearts")  # 100
    with pytest.raises(LedgerRefusal) as refused:
        await _send(ledger, "g2", gift="hand_hearts")
    assert refused.value.code is ErrorCode.SPENDING_LIMIT
    await _send(ledger, "g3", gift="perfume", count=2)  # 40 more fits under 150
    assert (await ledger.balance("alice")).coins == 860


async def test_combo_counts_same_gift_from_same_sender(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100), ("bob", 100))
    combos = [(await _send(ledger, f"a{i}")).combo for i in range(3)]
    assert combos == [1, 2, 3]
    assert (await _send(ledger, "b0", sender="bob")).combo == 1
    assert (await _send(ledger, "a-heart", gift="heart")).combo == 1


async def test_event_is_published_only_when_committed(ledger: Ledger, redis: Redis) -> None:
    await _setup(ledger, ("alice", 5))
    pubsub = redis.pubsub()
    await pubsub.subscribe(ledger.keys.room_channel(STREAM))
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    with pytest.raises(LedgerRefusal):
        await _send(ledger, "too-much", gift="perfume")
    await _send(ledger, "ok", gift="rose")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    import orjson

    event = orjson.loads(message["data"])
    assert (event["type"], event["seq"], event["gift_id"], event["sender_name"]) == (
        "gift",
        1,
        "rose",
        "Alice",
    )
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_concurrent_sends_from_one_wallet_never_overspend(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 300))
    results = await asyncio.gather(
        *(_send(ledger, f"race-{i}") for i in range(1000)), return_exceptions=True
    )
    sent = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, LedgerRefusal)]
    assert len(sent) == 300 and len(refused) == 700
    assert all(r.code is ErrorCode.INSUFFICIENT_FUNDS for r in refused)
    assert (await ledger.balance("alice")).coins == 0
    assert sorted(r.seq for r in sent) == list(range(1, 301))
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems


async def test_concurrent_duplicates_move_money_once(ledger: Ledger) -> None:
    await _setup(ledger, ("alice", 100))
    results = await asyncio.gather(*(_send(ledger, "dup", count=7) for _ in range(50)))
    assert sum(not r.replayed for r in results) == 1
    assert len({r.transfer_id for r in results}) == 1
    assert (await ledger.balance("alice")).coins == 93


async def _combo_is_a_hash(redis: Redis, keys: Keys) -> None:
    combo = keys.combo(STREAM, "alice", "rose")
    await redis.delete(combo)
    await redis.hset(combo, "x", "1")


# Each corrupts one key that send_gift writes, the way a hand edit or a bug elsewhere could.
# SET replaces a key of any type, so a plain string stands in for every wrong-typed key.
CORRUPTIONS: dict[str, Callable[[Redis, Keys], Awaitable[object]]] = {
    "receipt key is a hash": lambda r, k: r.hset(k.gift_receipt("alice", "g2"), "x", "1"),
    "sender account is a string": lambda r, k: r.set(k.account("alice"), "x"),
    "sender coins not a number": lambda r, k: r.hset(k.account("alice"), "coins", "abc"),
    # tonumber() reads these two, HINCRBY does not: they used to fail halfway.
    "creator diamonds in exponent form": lambda r, k: r.hset(k.account(CREATOR), "diamonds", "1e3"),
    "platform coins a fraction": lambda r, k: r.hset(k.platform(), "coins", "7.0"),
    "stream totals not a number": lambda r, k: r.hset(k.stream(STREAM), "gifts", "many"),
    "leaderboard is a string": lambda r, k: r.set(k.leaderboard(STREAM), "x"),
    "feed is a string": lambda r, k: r.set(k.feed(STREAM), "x"),
    # The next entry id would be 1-0, which the feed already holds: XADD would refuse it.
    "feed ahead of the sequence": lambda r, k: r.hset(k.stream(STREAM), "seq", 0),
    "combo counter is a hash": _combo_is_a_hash,
    "ledger log is a string": lambda r, k: r.set(k.ledger(), "x"),
    "catalog is a string": lambda r, k: r.set(k.catalog(), "x"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_corrupt_key_fails_before_any_write(
    ledger: Ledger, redis: Redis, keys: Keys, corruption: str
) -> None:
    await _setup(ledger, ("alice", 100))
    await _send(ledger, "g1")  # the feed, the combo counter and the leaderboard now exist
    await CORRUPTIONS[corruption](redis, keys)
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await _send(ledger, "g2")
    assert await snapshot(redis, keys) == before
