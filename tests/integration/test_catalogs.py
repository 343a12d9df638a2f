"""publish_catalog.lua and the catalog version in send_gift.lua, against a real Redis."""

from __future__ import annotations

import asyncio
from typing import cast

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.catalog import Catalog, load_catalog, parse_catalog
from server.domain.errors import ErrorCode, InvariantError, LedgerRefusal
from server.domain.limits import Limits
from server.ledger.catalogs import VERSION_FIELD
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.receipts import GiftReceipt
from server.ledger.runner import StreamRows
from server.ledger.scripts import ScriptName
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, snapshot

LIMITS = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000)


def _catalog(rose_coins: int, *extra: tuple[str, int]) -> Catalog:
    gifts = [{"id": "rose", "name": "Rose", "price_coins": rose_coins, "tier": 1}]
    gifts += [{"id": gift_id, "price_coins": price} for gift_id, price in extra]
    return parse_catalog(orjson.dumps({"version": 1, "gifts": gifts}))


async def _fresh(redis: Redis, keys: Keys) -> Ledger:
    ledger = Ledger(redis, keys=keys, limits=LIMITS)
    await ledger.runner.prepare()
    return ledger


async def _gift(
    ledger: Ledger, client_id: str, version: int | None = None, gift: str = "rose"
) -> GiftReceipt:
    return await ledger.send_gift(
        client_id=client_id, sender_id="alice", sender_name="Alice", stream_id=STREAM,
        creator_id=CREATOR, gift_id=gift, count=1, catalog_version=version,
    )  # fmt: skip


async def _live(ledger: Ledger, coins: int = 10_000) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=coins)


async def test_first_seed_wins_and_later_seeds_change_nothing(redis: Redis, keys: Keys) -> None:
    ledger = await _fresh(redis, keys)
    first = await ledger.catalogs.seed(_catalog(1))
    assert (first.version, first.written) == (1, True)
    assert await redis.hgetall(keys.catalog()) == {b"rose": b"1", b"@version": b"1"}
    before = await snapshot(redis, keys)
    second = await ledger.catalogs.seed(_catalog(500))
    assert (second.version, second.written) == (1, False)
    assert await snapshot(redis, keys) == before
    held = await ledger.prepare(_catalog(500))  # a process started with another file
    assert held.version == 1 and held.prices() == {"rose": 1}
    assert not held.same_gifts(_catalog(500))


async def test_push_makes_a_new_version_and_keeps_the_old_one(redis: Redis, keys: Keys) -> None:
    ledger = await _fresh(redis, keys)
    await ledger.catalogs.seed(_catalog(1))
    pushed = await ledger.catalogs.push(_catalog(2, ("heart", 5)))
    assert (pushed.version, pushed.written) == (2, True)
    current = await ledger.catalogs.current()
    assert current is not None and current.version == 2
    assert current.prices() == {"rose": 2, "heart": 5}
    assert (await ledger.catalogs.read(1)).prices() == {"rose": 1}
    assert await redis.hgetall(keys.catalog()) == {b"rose": b"2", b"heart": b"5", b"@version": b"2"}
    before = await snapshot(redis, keys)
    again = await ledger.catalogs.push(_catalog(2, ("heart", 5)))
    assert (again.version, again.written) == (2, False)
    assert await snapshot(redis, keys) == before


async def test_push_with_a_stale_expected_version_is_refused(redis: Redis, keys: Keys) -> None:
    ledger = await _fresh(redis, keys)
    await ledger.catalogs.seed(_catalog(1))
    await ledger.catalogs.push(_catalog(2), expected_version=1)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await ledger.catalogs.push(_catalog(3), expected_version=1)
    assert refused.value.code is ErrorCode.CATALOG_CHANGED
    assert refused.value.detail == {"catalog_version": 2}
    assert await snapshot(redis, keys) == before


@pytest.mark.parametrize(
    "args",
    [
        ["replace", "{}", "1", "100", "", "rose", "1"],  # unknown mode
        ["seed", "{}", "0", "100", "", "rose", "1"],  # seed needs a version
        ["seed", "{}", "1", "100", "", "rose", "0"],  # price below 1
        ["seed", "{}", "1", "100", "", "rose", "101"],  # price above the largest
        ["seed", "{}", "1", "100", "", "rose", "1e3"],
        ["seed", "{}", "1", "100", "", "ro se", "1"],  # not an id
        ["seed", "{}", "1", "100", "", "@version", "1"],  # the reserved field
        ["seed", "{}", "1", "100", "", "rose"],  # odd pairs
        ["seed", "{}", "1", "100", ""],  # no gift
        ["push", "{}", "-1", "100", "", "rose", "1"],
        ["due", "{}", "1", "100", "", "rose", "1"],  # due names its scheduled edit
        ["push", "{}", "1", "100", "edit1", "rose", "1"],  # only due names one
        ["due", "{}", "1", "100", "no way", "rose", "1"],
    ],
)
async def test_invalid_arguments_are_refused_and_write_nothing(
    redis: Redis, keys: Keys, args: list[str]
) -> None:
    ledger = await _fresh(redis, keys)
    reply = await ledger.runner.run_now(
        ScriptName.PUBLISH_CATALOG,
        [keys.catalog(), keys.catalog_versions(), keys.catalog_schedule(), keys.catalog_due()],
        list(args),
    )
    assert reply == [b"refused", b"invalid_request"]
    assert await snapshot(redis, keys) == {}


async def test_a_failure_partway_writes_nothing(redis: Redis, keys: Keys) -> None:
    """The next version's slot already holds another document (a hand edit): the script
    fails at its last check, before the first write."""
    ledger = await _fresh(redis, keys)
    await ledger.catalogs.seed(_catalog(1))
    await redis.hset(keys.catalog_versions(), "2", b'{"gifts":[]}')
    before = await snapshot(redis, keys)
    with pytest.raises(InvariantError):
        await ledger.catalogs.push(_catalog(7))
    assert await snapshot(redis, keys) == before


async def test_concurrent_seeds_and_pushes_never_lose_or_reuse_a_version(
    redis_server: RedisProcess, keys: Keys
) -> None:
    clients = [Redis.from_url(redis_server.url) for _ in range(8)]
    try:
        ledgers = [await _fresh(client, keys) for client in clients]
        seeds = await asyncio.gather(
            *(ledger.catalogs.seed(_catalog(i + 1)) for i, ledger in enumerate(ledgers))
        )
        assert sum(seed.written for seed in seeds) == 1 and {s.version for s in seeds} == {1}
        pushes = await asyncio.gather(
            *(ledger.catalogs.push(_catalog(100 + i)) for i, ledger in enumerate(ledgers))
        )
        assert sorted(p.version for p in pushes) == list(range(2, 10))
        history = {v: (await ledgers[0].catalogs.read(v)).prices()["rose"] for v in range(2, 10)}
        assert sorted(history.values()) == [100 + i for i in range(8)]
        current = await ledgers[0].catalogs.current()
        assert current is not None and current.version == 9
        assert current.prices()["rose"] == history[9]
    finally:
        for client in clients:
            await client.aclose()


async def test_send_gift_charges_the_version_the_client_names_or_refuses(
    redis: Redis, keys: Keys
) -> None:
    ledger = await _fresh(redis, keys)
    await ledger.prepare(_catalog(1))
    await _live(ledger)
    assert (await _gift(ledger, "g1", version=1)).coins == 1
    await ledger.catalogs.push(_catalog(500))
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _gift(ledger, "g2", version=1)  # the client was shown the 1-coin rose
    assert refused.value.code is ErrorCode.CATALOG_CHANGED
    assert refused.value.detail == {"catalog_version": 2}
    assert await snapshot(redis, keys) == before
    # The refused id left no receipt: the same id, now with the version shown, goes through.
    assert (await _gift(ledger, "g2", version=2)).coins == 500
    # A retry of a gift that was applied replays, whichever version it names.
    replay = await _gift(ledger, "g1", version=1)
    assert replay.replayed and replay.coins == 1
    # Without a version the current prices apply (older clients).
    assert (await _gift(ledger, "g3")).coins == 500
    assert (await ledger.balance("alice")).coins == 10_000 - 1001
    # Each ledger entry names the version it was charged under, whose prices are kept.
    rows = cast(StreamRows, await redis.xrange(keys.ledger()))
    charged = [
        (int(f[b"catalog_version"]), int(f[b"coins"])) for _, f in rows if f[b"type"] == b"gift"
    ]
    assert charged == [(1, 1), (2, 500), (2, 500)]
    for version, coins in charged:
        assert (await ledger.catalogs.read(version)).prices()["rose"] == coins
    await assert_books_reconcile(ledger)


async def test_an_out_of_range_catalog_version_is_refused(redis: Redis, keys: Keys) -> None:
    ledger = await _fresh(redis, keys)
    await ledger.prepare(_catalog(1))
    await _live(ledger)
    before = await snapshot(redis, keys)
    with pytest.raises(LedgerRefusal) as refused:
        await _gift(ledger, "g1", version=-1)
    assert refused.value.code is ErrorCode.INVALID_REQUEST
    assert await snapshot(redis, keys) == before


async def test_a_lost_catalog_is_seeded_again_under_the_version_served(
    redis: Redis, keys: Keys
) -> None:
    ledger = await _fresh(redis, keys)
    await ledger.prepare(_catalog(1))
    await ledger.catalogs.push(_catalog(3))
    assert (await ledger.current_catalog()).version == 2
    await redis.delete(keys.catalog(), keys.catalog_versions())
    assert await ledger.restore_catalog()
    assert await redis.hget(keys.catalog(), VERSION_FIELD) == b"2"
    assert (await ledger.current_catalog()).prices() == {"rose": 3}
    assert not await ledger.restore_catalog()  # present: nothing to do


def test_the_built_in_catalog_document_is_stable() -> None:
    assert load_catalog().document() == load_catalog().document()
    assert load_catalog().same_gifts(load_catalog())
