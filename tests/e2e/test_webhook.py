"""The payment webhook on a real server process: partial, repeated and early refunds."""

from __future__ import annotations

from server.ledger.ledger import Ledger
from server.ledger.reconcile import reconcile
from tests.support.servers import ServerProcess, signed_webhook


def _refund(refund_id: str, coins: int, payment_id: str = "p-1") -> dict[str, object]:
    return {
        "type": "payment.refunded",
        "payment_id": payment_id,
        "user_id": "dave",
        "refund_id": refund_id,
        "coins": coins,
    }


PAID = {"type": "payment.succeeded", "payment_id": "p-1", "user_id": "dave", "coins": 100}


async def test_partial_refunds_take_back_what_they_say_once_each(
    server: ServerProcess, ledger: Ledger
) -> None:
    assert signed_webhook(server, PAID)[0] == 200
    status, body = signed_webhook(server, _refund("r-1", 30))
    assert status == 200
    assert (body["refund_id"], body["refunded"], body["clawed"], body["balance"]) == (
        "r-1",
        30,
        30,
        70,
    )
    status, again = signed_webhook(server, _refund("r-1", 30))
    assert status == 200 and again["replayed"] and again["transfer_id"] == body["transfer_id"]
    status, body = signed_webhook(server, _refund("r-1", 31))
    assert status == 409 and body["error"]["code"] == "duplicate_mismatch"
    status, body = signed_webhook(server, _refund("r-2", 500))
    assert status == 200 and (body["refunded"], body["balance"]) == (70, 0)  # capped
    assert (await ledger.balance("dave")).coins == 0
    assert (await reconcile(ledger.redis, ledger.keys)).ok


async def test_a_refund_before_its_payment_is_not_credited(
    server: ServerProcess, ledger: Ledger
) -> None:
    status, body = signed_webhook(server, _refund("r-1", 40))
    assert status == 200 and body["before_payment"] and body["refunded"] == 0
    status, body = signed_webhook(server, PAID)
    assert status == 200 and (body["withheld"], body["credited"], body["balance"]) == (40, 60, 60)
    assert (await ledger.balance("dave")).coins == 60
    assert (await reconcile(ledger.redis, ledger.keys)).ok


async def test_a_refund_without_its_id_or_amount_is_refused(server: ServerProcess) -> None:
    assert signed_webhook(server, PAID)[0] == 200
    for missing in ("refund_id", "coins"):
        event = {k: v for k, v in _refund("r-1", 30).items() if k != missing}
        status, body = signed_webhook(server, event)
        assert status == 400 and body["error"]["code"] == "invalid_request", missing
