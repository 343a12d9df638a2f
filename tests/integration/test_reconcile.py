"""reconcile() and ``giftwire reconcile`` against a real Redis: clean books and tampering."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from redis.asyncio import Redis

from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, gift, make_ledger

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60


async def _books(ledger: Ledger) -> None:
    """A small but complete history: top-ups, gifts, a chargeback into debt, a cash-out."""
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-a", user_id="alice", coins=10_000)
    await ledger.top_up(payment_id="pay-b", user_id="bob", coins=500)
    await gift(ledger, "a1", gift_id="interstellar")  # 10000 coins: 5000 diamonds
    await gift(ledger, "b1", sender="bob", gift_id="finger_heart", count=61)  # 305: 152 + 153
    await ledger.refund(payment_id="pay-b", user_id="bob", refund_id="r1", coins=500)
    # ... which claws back 195 and leaves 305 owed
    await ledger.top_up(payment_id="pay-b2", user_id="bob", coins=100)  # repays 100
    await ledger.cash_out(client_id="c1", creator_id=CREATOR, diamonds=3_000)  # 1500 cents


EXPECTED_TOTALS = {
    "entries": 7,
    "top_ups": 3,
    "coins_bought": 10_600,
    "coins_credited": 10_500,
    "coins_withheld": 0,
    "debt_repaid": 100,
    "coins_clawed": 195,
    "debt_added": 305,
    "gifts": 2,
    "coins_spent": 10_305,
    "diamonds_credited": 5_152,
    "platform_coins": 5_153,
    "diamonds_cashed_out": 3_000,
    "coins_reversed": 0,
    "diamonds_clawed_back": 0,
    "platform_returned": 0,
    "diamonds_in_hold": 0,
    "payout_cents": 1_500,
    "coins_held": 0,
    "diamonds_held": 2_152,
    "share_units": 10_305 * 5_000,
    "diamonds_carried": 5_152,
    "share_rem_held": 5_000,  # bob's 305 coins earned 152.5 diamonds
    "debt_held": 205,
    "platform_held": 5_153,
    "accounts": 3,
}


async def test_empty_books_reconcile(redis: Redis, keys: Keys) -> None:
    report = await reconcile(redis, keys)
    assert report.ok and report.to_json()["totals"] == dict.fromkeys(EXPECTED_TOTALS, 0)


async def test_books_reconcile_with_exact_totals(ledger: Ledger) -> None:
    await _books(ledger)
    report = await reconcile(ledger.redis, ledger.keys)
    assert report.ok, report.problems
    assert report.to_json() == {"ok": True, "totals": EXPECTED_TOTALS, "problems": []}


async def test_progress_is_reported_in_entries_read(ledger: Ledger) -> None:
    await _books(ledger)
    seen: list[int] = []
    await reconcile(ledger.redis, ledger.keys, progress=seen.append)
    assert seen and seen[-1] == EXPECTED_TOTALS["entries"]


async def _forge_gift_entry(redis: Redis, keys: Keys) -> None:
    await redis.xadd(
        keys.ledger(),
        {"type": "gift", "from": "alice", "to": CREATOR, "coins": 0, "diamonds": 1, "platform": 0},
    )


async def _drop_account(redis: Redis, keys: Keys) -> None:
    await redis.delete(keys.account(CREATOR))


async def _log(redis: Redis, keys: Keys) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(keys.ledger()))


async def _duplicate_gift(redis: Redis, keys: Keys) -> None:
    # The first gift applied twice, its money too: the sums alone would still agree.
    _, entry = next(row for row in await _log(redis, keys) if row[1][b"type"] == b"gift")
    await redis.xadd(keys.ledger(), entry)
    await redis.hincrby(keys.account("alice"), "coins", -int(entry[b"coins"]))
    await redis.hincrby(keys.account(CREATOR), "diamonds", int(entry[b"diamonds"]))
    await redis.hincrby(keys.platform(), "coins", int(entry[b"platform"]))


async def _lose_the_tail(redis: Redis, keys: Keys) -> None:
    # A restore or a lost fsync took the log back to its first gift; the balances and the
    # stream stayed as they were.
    rows = await _log(redis, keys)
    first_gift = next(i for i, row in enumerate(rows) if row[1][b"type"] == b"gift")
    await redis.xdel(keys.ledger(), *(entry_id for entry_id, _ in rows[first_gift + 1 :]))


async def _mischarge(redis: Redis, keys: Keys) -> None:
    # Five finger hearts (5 coins each) charged 20 in all, the split and balances made to fit.
    await redis.xadd(
        keys.ledger(),
        {
            "type": "gift", "client_id": "m1", "from": "alice", "to": "other", "stream": "s9",
            "gift": "finger_heart", "count": 5, "price": 5, "coins": 20, "diamonds": 10,
            "platform": 10, "seq": 1,
        },
    )  # fmt: skip
    await redis.hincrby(keys.account("alice"), "coins", -20)
    await redis.hincrby(keys.account("other"), "diamonds", 10)
    await redis.hincrby(keys.platform(), "coins", 10)


async def _charge_another_version(redis: Redis, keys: Keys) -> None:
    # A gift charged at 5 coins a rose under catalog version 1, which lists the rose at 1:
    # the coins, split and balances all fit the 5, only the catalog says otherwise.
    catalog = resources.files("server.domain").joinpath("data/catalog.json").read_bytes()
    await redis.hset(keys.catalog_versions(), "1", catalog)
    await redis.xadd(
        keys.ledger(),
        {
            "type": "gift", "client_id": "v1", "from": "alice", "to": "other", "stream": "s9",
            "gift": "rose", "count": 2, "price": 5, "coins": 10, "diamonds": 5,
            "platform": 5, "seq": 1, "catalog_version": 1,
        },
    )  # fmt: skip


async def _charge_a_lost_version(redis: Redis, keys: Keys) -> None:
    await redis.xadd(
        keys.ledger(),
        {
            "type": "gift", "client_id": "v2", "from": "alice", "to": "other", "stream": "s9",
            "gift": "rose", "count": 1, "price": 1, "coins": 1, "diamonds": 0, "platform": 1,
            "seq": 1, "catalog_version": 7,
        },
    )  # fmt: skip


async def _evict_receipt(redis: Redis, keys: Keys) -> None:
    await redis.delete(keys.gift_receipt("alice", "a1"))


async def _alter_receipt(redis: Redis, keys: Keys) -> None:
    key = keys.gift_receipt("bob", "b1")
    head, _, body = cast(bytes, await redis.get(key)).partition(b"\n")
    receipt = orjson.loads(body) | {"coins": 1}
    await redis.set(key, head + b"\n" + orjson.dumps(receipt), keepttl=True)


async def _reuse_seq(redis: Redis, keys: Keys) -> None:
    _, entry = next(row for row in await _log(redis, keys) if row[1].get(b"client_id") == b"b1")
    await redis.xadd(keys.ledger(), {**entry, b"client_id": b"b2", b"seq": b"1"})


async def _skip_in_feed(redis: Redis, keys: Keys) -> None:
    await redis.xdel(keys.feed(STREAM), "1-0")
    await redis.xadd(keys.feed(STREAM), {"e": b"{}"}, id="5-0")


TAMPERING: dict[str, tuple[Callable[[Redis, Keys], Awaitable[object]], str]] = {
    "duplicated gift": (_duplicate_gift, "gift a1 of alice is in the log twice"),
    "lost tail": (_lose_the_tail, f"stream {STREAM}: holds seq 2, the log's last gift is seq 1"),
    "lost tail's payments": (_lose_the_tail, "{pay:pay-b2}:payment: no such payment in the log"),
    "price mismatch": (_mischarge, "gift charged 20 coins for 5 x finger_heart at 5"),
    "price of another catalog version": (
        _charge_another_version,
        "rose charged at 5, catalog version 1 lists 1",
    ),
    "catalog version gone": (_charge_a_lost_version, "catalog version 7: not in Redis"),
    "evicted receipt": (_evict_receipt, "the receipt of gift a1 of alice is gone"),
    "altered receipt": (_alter_receipt, "gift:b1: does not match log entry"),
    "reused seq": (_reuse_seq, f"stream {STREAM} gift seq 1 again within one stream"),
    "feed skips": (_skip_in_feed, f"stream {STREAM}: the feed skips from 2 to 5"),
    "payment record gone": (
        lambda r, k: r.delete(k.payment("pay-a")),
        "payment pay-a: in the log, but its record is gone",
    ),
    "refund record gone": (
        lambda r, k: r.delete(k.refund("pay-b", "r1")),
        "refund ('pay-b', 'r1'): in the log, but its record is gone",
    ),
    "refund recorded larger": (
        lambda r, k: r.hset(k.payment("pay-b"), "refunded", 400),
        "payment pay-b: record says 400 refunded, the log 500",
    ),
    "cash-out record gone": (
        lambda r, k: r.delete(k.cashout(CREATOR, "c1")),
        f"cash-out ('{CREATOR}', 'c1'): in the log, but its record is gone",
    ),
    "coins added": (lambda r, k: r.hincrby(k.account("alice"), "coins", 5), "account alice"),
    "diamonds taken": (
        lambda r, k: r.hincrby(k.account(CREATOR), "diamonds", -1),
        f"account {CREATOR}",
    ),
    "debt forgiven": (lambda r, k: r.hset(k.account("bob"), "debt", 0), "account bob"),
    "negative balance": (lambda r, k: r.hset(k.account("alice"), "coins", -1), "negative"),
    "platform skimmed": (lambda r, k: r.hincrby(k.platform(), "coins", -7), "platform holds"),
    "account deleted": (_drop_account, f"account {CREATOR}: missing"),
    "forged entry": (_forge_gift_entry, "gift splits 0 into 1 + 0"),
    "unknown entry": (lambda r, k: r.xadd(k.ledger(), {"type": "gift_card"}), "unknown entry"),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
async def test_tampering_is_detected(
    ledger: Ledger, redis: Redis, keys: Keys, tampering: str
) -> None:
    await _books(ledger)
    tamper, problem = TAMPERING[tampering]
    await tamper(redis, keys)
    report = await reconcile(redis, keys)
    assert not report.ok
    assert any(problem in line for line in report.problems), report.problems


async def test_other_prefixes_are_not_counted(ledger: Ledger, redis: Redis) -> None:
    await _books(ledger)
    other = Keys(prefix=ledger.keys.prefix + "x")
    await redis.hset(other.account("alice"), "coins", 99)
    try:
        report = await reconcile(redis, ledger.keys)
        assert report.ok and report.totals.accounts == 3
    finally:
        await redis.delete(other.account("alice"))


# The command line


async def _giftwire(redis_server: RedisProcess, keys: Keys, *args: str) -> tuple[int, str]:
    """Run ``giftwire ARGS`` as a separate process against the test's Redis and prefix."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIFTWIRE_")}
    env |= {"GIFTWIRE_REDIS_URL": redis_server.url, "GIFTWIRE_KEY_PREFIX": keys.prefix}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    assert process.returncode is not None
    assert process.returncode in (0, 1), stderr.decode()
    return process.returncode, stdout.decode()


async def test_cli_json_reports_totals_and_exits_by_the_result(
    ledger: Ledger, redis: Redis, redis_server: RedisProcess
) -> None:
    await _books(ledger)
    code, out = await _giftwire(redis_server, ledger.keys, "reconcile", "--json")
    doc: dict[str, Any] = orjson.loads(out)
    assert code == 0
    assert doc == {"ok": True, "totals": EXPECTED_TOTALS, "problems": []}

    await redis.hincrby(ledger.keys.account("alice"), "coins", 1)
    code, out = await _giftwire(redis_server, ledger.keys, "reconcile", "--json")
    doc = orjson.loads(out)
    assert code == 1
    assert doc["ok"] is False
    assert any("account alice" in problem for problem in doc["problems"])


async def test_cli_prints_totals_and_the_verdict(
    ledger: Ledger, redis: Redis, redis_server: RedisProcess
) -> None:
    await _books(ledger)
    code, out = await _giftwire(redis_server, ledger.keys, "reconcile")
    assert code == 0
    lines = out.splitlines()
    assert lines[-1] == "books reconcile: OK"
    assert any(line.split() == ["coins", "bought", "10,600"] for line in lines)
    assert any(line.split() == ["payouts", "(cents)", "1,500"] for line in lines)
    assert any(line.split() == ["debt", "outstanding", "205"] for line in lines)

    await redis.hincrby(ledger.keys.platform(), "coins", -1)
    code, out = await _giftwire(redis_server, ledger.keys, "reconcile")
    assert code == 1
    assert "books DO NOT reconcile: 1 problem(s)" in out
    assert "platform holds 5152, ledger says 5153" in out


async def test_a_client_id_reused_after_its_receipt_expired_is_not_a_duplicate(
    redis: Redis, keys: Keys
) -> None:
    limits = Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, receipt_ttl_s=1)
    ledger = await make_ledger(redis, keys, limits)
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-a", user_id="alice", coins=10)
    first = await gift(ledger, "g1")
    # Redis expires a key on access once its time is up: wait that long, once.
    await asyncio.sleep(await redis.pttl(keys.gift_receipt("alice", "g1")) / 1000 + 0.05)
    second = await gift(ledger, "g1")
    assert not second.replayed and second.transfer_id != first.transfer_id
    report = await reconcile(redis, keys, receipt_ttl_s=1)
    assert report.ok, report.problems
    # Within a longer window, the same two entries are one gift applied twice.
    report = await reconcile(redis, keys, receipt_ttl_s=3_600)
    assert any("gift g1 of alice is in the log twice" in line for line in report.problems)


async def test_each_gift_is_checked_against_the_catalog_version_it_was_charged_under(
    ledger: Ledger, redis: Redis, keys: Keys
) -> None:
    await _books(ledger)
    rows = await _log(redis, keys)
    gifts = [entry for _, entry in rows if entry[b"type"] == b"gift"]
    assert {(e[b"gift"], e[b"price"], e[b"catalog_version"]) for e in gifts} == {
        (b"interstellar", b"10000", b"1"),
        (b"finger_heart", b"5", b"1"),
    }
    assert (await reconcile(redis, keys)).ok
    # Rewrite version 1 (which never happens: versions are kept as published) to list the
    # finger heart at 4: the gifts charged 5 under it no longer match.
    doc = orjson.loads(cast(bytes, await redis.hget(keys.catalog_versions(), "1")))
    for item in doc["gifts"]:
        if item["id"] == "finger_heart":
            item["price_coins"] = 4
    await redis.hset(keys.catalog_versions(), "1", orjson.dumps(doc))
    report = await reconcile(redis, keys)
    assert any("finger_heart charged at 5, catalog version 1 lists 4" in p for p in report.problems)
