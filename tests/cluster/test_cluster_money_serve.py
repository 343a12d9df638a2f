"""``giftwire serve`` in cluster mode with the durable record: the payout hold, a chargeback
that claws back across slots, the payout webhook, and the record's routes (history and
statements), with the archiver that serve runs following every slot's log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from server.domain.accounts import Role
from server.ledger.cluster_reconcile import reconcile_cluster
from server.ledger.keys import Keys
from tests.cluster.legs import open_ledger
from tests.cluster.test_cluster_hold import age
from tests.reliability.helpers import Peer
from tests.support.cluster import RedisCluster
from tests.support.servers import ServerProcess, http_json, signed_webhook, token

PAYOUT_SECRET = "payout-secret-for-tests"


@pytest.fixture
def server(
    redis_cluster: RedisCluster, keys: Keys, database_url: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        redis_cluster.startup_urls[0], keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true",
        GIFTWIRE_DATABASE_URL=database_url, GIFTWIRE_PAYOUT_HOLD_DAYS="7",
        GIFTWIRE_PAYOUT_WEBHOOK_SECRET=PAYOUT_SECRET,
    )  # fmt: skip
    try:
        process.start(timeout_s=60)
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log()


def _payout_event(server: ServerProcess, event: dict[str, object]) -> tuple[int, Any]:
    body = orjson.dumps(event)
    signature = "sha256=" + hmac.new(PAYOUT_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return http_json(
        "POST", f"{server.http}/api/webhooks/payouts", raw=body,
        headers={"x-giftwire-signature": signature},
    )  # fmt: skip


def _recorded(database_url: str) -> int:
    try:
        with psycopg.connect(database_url, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM transfers").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def _posted(database_url: str, user: str | None, account: str) -> int:
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM postings WHERE account = %s"
            " AND user_id IS NOT DISTINCT FROM %s",
            (account, user),
        ).fetchone()
    return int(row[0]) if row else 0


async def _log_entries(ledger: Any) -> int:
    lengths = await ledger.shards.lengths(ledger.keys.ledger_shards())
    return int(sum(lengths.values()))


async def test_money_beyond_gifts_on_a_cluster_server_with_the_record(
    server: ServerProcess, redis_cluster: RedisCluster, keys: Keys, database_url: str
) -> None:
    creator = token("star", Role.CREATOR)
    status, _ = http_json("POST", server.http + "/api/streams", {"stream_id": "show"},
                          bearer=creator)  # fmt: skip
    assert status == 201
    for fan in ("fan1", "fan2"):
        status, _ = signed_webhook(server, {"type": "payment.succeeded",
                                            "payment_id": f"p-{fan}", "user_id": fan,
                                            "coins": 10_000})  # fmt: skip
        assert status == 200
        peer = await Peer.open(server, token(fan), stream_id="show")
        try:
            await peer.send_gift("g1", gift="interstellar")
            await peer.wait_replies(["g1"])
            ack = peer.reply("g1")
            assert ack is not None and ack["type"] == "gift_ack", ack
        finally:
            await peer.close()
    status, wallet = http_json("GET", server.http + "/api/me/wallet", bearer=creator)
    assert status == 200
    assert (wallet["diamonds"], wallet["held_diamonds"], wallet["withdrawable_diamonds"]) == (
        10_000, 10_000, 0,
    )  # fmt: skip
    status, body = http_json("POST", server.http + "/api/cashouts",
                             {"id": "c1", "diamonds": 1_000}, bearer=creator)  # fmt: skip
    assert (status, body["error"]["code"]) == (409, "funds_held"), body
    # fan2's payment is charged back inside the hold: the clawback crosses to star's slot.
    status, refund = signed_webhook(server, {"type": "payment.refunded", "payment_id": "p-fan2",
                                             "user_id": "fan2", "refund_id": "r1",
                                             "coins": 10_000})  # fmt: skip
    assert status == 200, refund
    status, wallet = http_json("GET", server.http + "/api/me/wallet", bearer=creator)
    assert (wallet["diamonds"], wallet["held_diamonds"]) == (5_000, 5_000)

    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        await age(ledger, ["star", "fan1", "fan2"], 8)  # the hold is over
        status, body = http_json("POST", server.http + "/api/cashouts",
                                 {"id": "c1", "diamonds": 3_000}, bearer=creator)  # fmt: skip
        assert (status, body["state"]) == (201, "pending"), body
        status, body = http_json("POST", server.http + "/api/cashouts",
                                 {"id": "c2", "diamonds": 2_000}, bearer=creator)  # fmt: skip
        assert status == 201, body
        event = {"type": "payout.paid", "creator_id": "star", "id": "c1"}
        status, paid = _payout_event(server, event)
        assert (status, paid["state"], paid["replayed"]) == (200, "paid", False), paid
        status, paid = _payout_event(server, event)
        assert (status, paid["replayed"]) == (200, True)
        status, failed = _payout_event(server, {"type": "payout.failed", "creator_id": "star",
                                                "id": "c2"})  # fmt: skip
        assert (status, failed["state"], failed["balance"]) == (200, "failed", 2_000), failed
        status, settled = _payout_event(server, {**event, "type": "payout.failed"})
        assert (status, settled["error"]["code"]) == (409, "payout_settled"), settled
        # The admin call settles by hand, the same script: here a replay of c1's outcome.
        status, by_hand = http_json("POST", server.http + "/api/admin/payouts",
                                    {"creator_id": "star", "id": "c1", "state": "paid"},
                                    bearer=token("support", Role.ADMIN))  # fmt: skip
        assert (status, by_hand["replayed"]) == (200, True), by_hand

        # Everything reached the record (the archiver runs inside serve, every slot's log).
        await asyncio.sleep(0.1)
        want = await _log_entries(ledger)
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(_recorded, database_url) < want:
            assert time.monotonic() < deadline, "the archiver did not catch up"
            await asyncio.sleep(0.2)
        report = await reconcile_cluster(ledger)
        assert report.ok and not report.pending, (report.problems, report.pending)
        # The record's postings: nothing left in transit, and the accounts Redis holds.
        assert await asyncio.to_thread(_posted, database_url, None, "transit") == 0
        for user in ("star", "fan1", "fan2"):
            held = await ledger.balance(user)
            for account, want in (("coins", held.coins), ("diamonds", held.diamonds),
                                  ("debt", -held.debt_coins)):  # fmt: skip
                assert await asyncio.to_thread(_posted, database_url, user, account) == want
        assert (await ledger.balance("star")).diamonds == 2_000  # 10,000 - 5,000 - 3,000
    finally:
        await ledger.aclose()

    status, page = http_json("GET", server.http + "/api/me/transactions", bearer=creator)
    assert status == 200, page
    kinds = [item["kind"] for item in page["transactions"]]
    assert sorted(kinds) == sorted(
        ["gift_received", "gift_received", "clawback", "cash_out", "cash_out", "payout_paid",
         "payout_failed"]
    ), kinds  # fmt: skip
    status, page = http_json("GET", server.http + "/api/me/transactions", bearer=token("fan2"))
    kinds = [item["kind"] for item in page["transactions"]]
    assert kinds == ["refund", "gift_reversed", "gift_sent", "top_up"], kinds  # one leg each
    month = time.strftime("%Y-%m", time.gmtime())
    status, statement = http_json(
        "GET", f"{server.http}/api/creators/me/statements?month={month}", bearer=creator
    )
    assert status == 200, statement
    assert statement["totals"]["diamonds"] == 10_000
    assert statement["clawbacks"]["diamonds"] == 5_000


@pytest.mark.slow
async def test_kill_9_of_the_server_between_the_refund_legs(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> None:
    """A server dies after the buyer's leg of a chargeback: the survivor's relay applies the
    clawback from the outbox; the provider's retry on the survivor replays the refund."""
    env = {"GIFTWIRE_REDIS_CLUSTER": "true", "GIFTWIRE_PAYOUT_HOLD_DAYS": "7"}
    doomed = ServerProcess(redis_cluster.startup_urls[0], keys.prefix, tmp_path,
                           GIFTWIRE_TEST_CRASH_AFTER_REFUND_CLAIM="1", **env)  # fmt: skip
    survivor = ServerProcess(redis_cluster.startup_urls[1], keys.prefix, tmp_path, **env)
    doomed.start(timeout_s=60)
    survivor.start(timeout_s=60)
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        status, _ = http_json("POST", survivor.http + "/api/streams", {"stream_id": "k9r"},
                              bearer=token("k9_star", Role.CREATOR))  # fmt: skip
        assert status == 201
        paid = {"type": "payment.succeeded", "payment_id": "p-k9", "user_id": "k9_fan",
                "coins": 10_000}  # fmt: skip
        assert signed_webhook(survivor, paid)[0] == 200
        peer = await Peer.open(survivor, token("k9_fan"), stream_id="k9r")
        try:
            await peer.send_gift("g1", gift="interstellar")
            await peer.wait_replies(["g1"])
        finally:
            await peer.close()
        refund = {"type": "payment.refunded", "payment_id": "p-k9", "user_id": "k9_fan",
                  "refund_id": "r1", "coins": 10_000}  # fmt: skip
        with pytest.raises(OSError):
            await asyncio.to_thread(signed_webhook, doomed, refund)  # the server dies
        assert doomed.process is not None and doomed.process.wait(10) == -9
        assert (await ledger.balance("k9_fan")).debt_coins == 0  # the buyer's leg committed
        deadline = time.monotonic() + 40
        while (await ledger.balance("k9_star")).diamonds != 0:  # the survivor's relay
            assert time.monotonic() < deadline, "the clawback was not applied"
            await asyncio.sleep(0.2)
        status, again = signed_webhook(survivor, refund)
        assert (status, again["replayed"], again["reversed"]) == (200, True, 10_000)
        await asyncio.sleep(0.1)
        report = await reconcile_cluster(ledger)
        assert report.ok and not report.pending, (report.problems, report.pending)
    finally:
        await ledger.aclose()
        doomed.stop()
        survivor.stop()
