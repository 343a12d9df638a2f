"""reconcile() and ``giftwire reconcile`` against a real Redis: clean books and tampering."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.integration.helpers import CREATOR, STREAM, gift

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


TAMPERING: dict[str, tuple[Callable[[Redis, Keys], Awaitable[object]], str]] = {
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
