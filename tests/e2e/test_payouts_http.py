"""The payout lifecycle over HTTP: a cash-out is pending, then paid or failed through the
payout provider's signed webhook or an admin call; each step idempotent."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.e2e.conftest import FAST
from tests.support.servers import ServerProcess, client, http_json, running, signed_webhook, token

PAYOUT_SECRET = "payout-secret-for-tests"
CREATOR = "payee"


@pytest.fixture
def payout_server(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> Iterator[ServerProcess]:
    env = {"GIFTWIRE_PAYOUT_WEBHOOK_SECRET": PAYOUT_SECRET, **FAST}
    with running(redis_server.url, keys.prefix, tmp_path, **env) as (process,):
        yield process


def _payout_event(server: ServerProcess, event: dict[str, object], secret: str = PAYOUT_SECRET,
                  ) -> tuple[int, Any]:  # fmt: skip
    body = orjson.dumps(event)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return http_json(
        "POST", f"{server.http}/api/webhooks/payouts", raw=body,
        headers={"x-giftwire-signature": signature},
    )  # fmt: skip


def _wallet(server: ServerProcess) -> int:
    status, wallet = http_json("GET", f"{server.http}/api/me/wallet", bearer=token(CREATOR))
    assert status == 200
    return int(wallet["diamonds"])


def _earn_and_cash_out(server: ServerProcess, *cash_outs: str) -> None:
    creator = token(CREATOR, Role.CREATOR)
    status, _ = http_json("POST", f"{server.http}/api/streams", {"stream_id": "pay"},
                          bearer=creator)  # fmt: skip
    assert status in (200, 201)
    status, _ = signed_webhook(server, {"type": "payment.succeeded", "payment_id": "p-fan",
                                        "user_id": "fan", "coins": 100_000})  # fmt: skip
    assert status == 200

    # Gifts are sent over the WebSocket only.
    async def send() -> None:
        async with client(server, "pay", token("fan")) as fan:
            await fan.send({"type": "send_gift", "id": "g1", "gift": "interstellar", "count": 2})
            await fan.recv_type("gift_ack")

    asyncio.run(send())
    for cash_out in cash_outs:
        status, reply = http_json("POST", f"{server.http}/api/cashouts",
                                  {"id": cash_out, "diamonds": 2_000}, bearer=creator)  # fmt: skip
        assert (status, reply["state"]) == (201, "pending")


def test_a_failed_payout_returns_the_diamonds_and_replays(payout_server: ServerProcess) -> None:
    _earn_and_cash_out(payout_server, "c1", "c2")
    assert _wallet(payout_server) == 10_000 - 4_000
    event = {"type": "payout.failed", "creator_id": CREATOR, "id": "c1"}
    status, reply = _payout_event(payout_server, event)
    assert (status, reply["state"], reply["balance"], reply["replayed"]) == (
        200,
        "failed",
        8_000,
        False,
    )
    status, again = _payout_event(payout_server, event)
    assert (status, again["replayed"], again["transfer_id"]) == (200, True, reply["transfer_id"])
    assert _wallet(payout_server) == 8_000
    status, refused = _payout_event(payout_server, {**event, "type": "payout.paid"})
    assert (status, refused["error"]["code"]) == (409, "payout_settled")
    # c2 is paid by an admin; the diamonds stay out.
    admin = token("ops", Role.ADMIN)
    body = {"creator_id": CREATOR, "id": "c2", "state": "paid"}
    status, paid = http_json("POST", f"{payout_server.http}/api/admin/payouts", body, bearer=admin)
    assert (status, paid["state"], paid["balance"]) == (200, "paid", 8_000)
    assert _wallet(payout_server) == 8_000


def test_payout_refusals(payout_server: ServerProcess) -> None:
    _earn_and_cash_out(payout_server, "c1")
    event = {"type": "payout.paid", "creator_id": CREATOR, "id": "c1"}
    status, reply = _payout_event(payout_server, event, secret="wrong")
    assert (status, reply["error"]["code"]) == (401, "bad_signature")
    status, reply = _payout_event(payout_server, {**event, "id": "nope"})
    assert (status, reply["error"]["code"]) == (404, "unknown_payout")
    status, reply = _payout_event(payout_server, {**event, "type": "payout.lost"})
    assert (status, reply["error"]["code"]) == (400, "invalid_request")
    body = {"creator_id": CREATOR, "id": "c1", "state": "paid"}
    status, reply = http_json("POST", f"{payout_server.http}/api/admin/payouts", body,
                              bearer=token(CREATOR, Role.CREATOR))  # fmt: skip
    assert (status, reply["error"]["code"]) == (403, "forbidden")
    assert _wallet(payout_server) == 8_000  # nothing settled


def test_without_a_payout_secret_the_webhook_is_refused(server: ServerProcess) -> None:
    status, reply = _payout_event(server, {"type": "payout.paid", "creator_id": CREATOR, "id": "c"})
    assert (status, reply["error"]["code"]) == (401, "bad_signature")
