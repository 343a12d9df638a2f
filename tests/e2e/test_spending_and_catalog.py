"""Responsible spending and the managed catalog through real server processes: the HTTP
API, gifts over real WebSockets on two processes sharing one Redis, and the `catalog`
message reaching every connected client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from server.domain.accounts import Role
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.web.auth import issue_token
from tests.e2e.conftest import FAST
from tests.support.servers import JWT_SECRET, ServerProcess, client, http_json, running, token

STREAM = "spend1"
CREATOR = "star"
ADMIN = token("ops", Role.ADMIN)


@pytest.fixture
def quick_pair(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two processes that follow catalog changes within 0.2 s."""
    env = {**FAST, "GIFTWIRE_REDIS_CHECK_INTERVAL_S": "0.2"}
    with running(redis_server.url, keys.prefix, tmp_path, count=2, **env) as (a, b):
        yield a, b


async def _books(redis_server: RedisProcess, keys: Keys) -> tuple[Redis, Ledger]:
    redis = Redis.from_url(redis_server.url)
    ledger = Ledger(redis, keys=keys, limits=Limits())
    await ledger.runner.prepare()
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=100_000)
    return redis, ledger


def _call(
    server: ServerProcess, method: str, path: str, bearer: str | None, body: object = None
) -> tuple[int, Any]:
    return http_json(method, server.http + path, body, bearer=bearer)


async def _gift(sender: Any, client_id: str, gift: str = "hand_hearts", **extra: Any) -> Any:
    await sender.send({"type": "send_gift", "id": client_id, "gift": gift, **extra})
    return await sender.recv_type("gift_ack", "error")


async def test_a_viewers_limits_bind_gifts_on_every_process(
    quick_pair: tuple[ServerProcess, ServerProcess], redis_server: RedisProcess, keys: Keys
) -> None:
    a, b = quick_pair
    redis, _ = await _books(redis_server, keys)
    alice = token("alice")
    try:
        status, body = _call(a, "PUT", "/api/me/spending", alice, {"day": 250})
        assert status == 200 and body["applied"] == {"day": "now", "month": "unchanged"}
        async with client(b, STREAM, alice) as sender:
            assert (await _gift(sender, "g1"))["type"] == "gift_ack"
            assert (await _gift(sender, "g2"))["type"] == "gift_ack"
            refused = await _gift(sender, "g3")
            assert refused["code"] == "spending_limit"
            assert refused["detail"] == {
                "period": "day", "limit": 250, "spent": 200, "spent_24h": 200, "set_by": "own",
            }  # fmt: skip
            # A raise waits out the cooling-off: shown as pending, the old limit binds.
            status, body = _call(b, "PUT", "/api/me/spending", alice, {"day": 5_000})
            assert status == 200 and body["applied"]["day"] == "pending"
            assert body["day"]["limit"] == 250 and body["day"]["pending"]["limit"] == 5_000
            assert (await _gift(sender, "g4"))["code"] == "spending_limit"
            # The platform marks the account a minor: its cap binds at once, and the
            # viewer cannot set more than it.
            status, body = _call(
                a, "PUT", "/api/admin/accounts/alice/spending", ADMIN,
                {"minor": True, "day_cap": 100, "month_cap": 1_000},
            )  # fmt: skip
            assert status == 200 and body["minor"] and body["day"]["set_by"] == "platform"
            status, body = _call(a, "PUT", "/api/me/spending", alice, {"month": 2_000})
            assert status == 422 and body["error"]["code"] == "spending_cap"
            assert body["error"]["detail"] == {"period": "month", "cap": 1_000}
            status, body = _call(a, "GET", "/api/me/spending", alice)
            assert status == 200
            assert (body["day"]["limit"], body["day"]["spent"], body["month"]["spent"]) == (
                100, 200, 200,
            )  # fmt: skip
            assert body["day"]["remaining"] == 0 and body["month"]["remaining"] == 800
    finally:
        await redis.aclose()


def test_the_spending_api_refuses_what_it_should(server: ServerProcess) -> None:
    alice = token("alice")
    for bearer, body, status, code in [
        (None, {"day": 5}, 401, "unauthorized"),
        (alice, {}, 400, "invalid_request"),
        (alice, {"day": -1}, 400, "invalid_request"),
        (alice, {"day": 1.5}, 400, "invalid_request"),
        (alice, {"day": 10**14}, 400, "invalid_request"),
        (alice, {"day": 5, "cap": 1}, 400, "invalid_request"),
        (alice, [1], 400, "invalid_request"),
    ]:
        got, reply = _call(server, "PUT", "/api/me/spending", bearer, body)
        assert (got, reply["error"]["code"]) == (status, code), body
    overlay = issue_token(JWT_SECRET, "alice", Role.OVERLAY, stream=STREAM)
    for method in ("GET", "PUT"):  # an overlay URL is shared: its token reads nothing private
        got, reply = _call(server, method, "/api/me/spending", overlay, {"day": 5})
        assert (got, reply["error"]["code"]) == (403, "read_only")
    got, reply = _call(server, "PUT", "/api/admin/accounts/bob/spending", alice, {"minor": True})
    assert (got, reply["error"]["code"]) == (403, "forbidden")
    got, reply = _call(server, "PUT", "/api/admin/accounts/bob/spending", ADMIN, {"minor": 1})
    assert (got, reply["error"]["code"]) == (400, "invalid_request")
    got, reply = _call(server, "GET", "/api/admin/accounts/bob/spending", ADMIN)
    assert got == 200 and reply["user_id"] == "bob" and not reply["minor"]


async def test_an_admins_edit_reaches_the_clients_of_every_process(
    quick_pair: tuple[ServerProcess, ServerProcess], redis_server: RedisProcess, keys: Keys
) -> None:
    a, b = quick_pair
    redis, ledger = await _books(redis_server, keys)
    try:
        async with (
            client(a, STREAM, token("alice")) as sender,
            client(b, STREAM, token("viewer")) as viewer,
        ):
            edit = {
                "expect_version": 1,
                "changes": [
                    {"op": "reprice", "id": "rose", "price_coins": 3},
                    {"op": "add", "gift": {"id": "comet", "name": "Comet", "price_coins": 42}},
                    {"op": "retire", "id": "heart"},
                ],
            }
            status, body = _call(b, "POST", "/api/admin/catalog", token("alice"), edit)
            assert (status, body["error"]["code"]) == (403, "forbidden")
            status, body = _call(b, "POST", "/api/admin/catalog", ADMIN, edit)
            assert status == 200 and body["version"] == 2 and body["written"]
            # Both processes tell their clients: the one that wrote it, and the other.
            for peer in (sender, viewer):
                message = await peer.recv_type("catalog")
                prices = {g["id"]: g["price_coins"] for g in message["gifts"]}
                assert message["version"] == 2
                assert prices["rose"] == 3 and prices["comet"] == 42 and "heart" not in prices
            # Shown version 1: refused, not charged 3. Shown 2: charged 3.
            refused = await _gift(sender, "r1", "rose", catalog_version=1)
            assert refused["code"] == "catalog_changed"
            ack = await _gift(sender, "r1", "rose", catalog_version=2)
            assert ack["coins"] == 3
            assert (await _gift(sender, "h1", "heart"))["code"] == "unknown_gift"
            # The same edit again, from the old version: refused.
            status, body = _call(a, "POST", "/api/admin/catalog", ADMIN, edit)
            assert (status, body["error"]["code"]) == (409, "catalog_changed")
            assert body["error"]["detail"] == {"catalog_version": 2}
            bad = {"expect_version": 2, "changes": [{"op": "retire", "id": "nope"}]}
            status, body = _call(a, "POST", "/api/admin/catalog", ADMIN, bad)
            assert (status, body["error"]["code"]) == (404, "unknown_gift")
        assert (await ledger.balance("alice")).coins == 100_000 - 3
    finally:
        await redis.aclose()


async def test_a_scheduled_edit_is_published_once_at_its_time_by_two_processes(
    quick_pair: tuple[ServerProcess, ServerProcess], redis_server: RedisProcess, keys: Keys
) -> None:
    a, b = quick_pair
    redis, _ = await _books(redis_server, keys)
    try:
        seconds, micros = await redis.time()
        at_ms = int(seconds) * 1000 + int(micros) // 1000 + 1_500
        edit = {
            "id": "rose-sale",
            "at_ms": at_ms,
            "changes": [{"op": "reprice", "id": "rose", "price_coins": 2}],
        }
        status, body = _call(a, "POST", "/api/admin/catalog", ADMIN, edit)
        assert status == 202 and body["scheduled"]["id"] == "rose-sale"
        status, body = _call(b, "POST", "/api/admin/catalog", ADMIN, edit)  # a retry
        assert status == 200 and body["replayed"]
        status, body = _call(b, "GET", "/api/admin/catalog", ADMIN)
        assert [e["id"] for e in body["scheduled"]] == ["rose-sale"] and body["version"] == 1
        async with (
            client(a, STREAM, token("alice")) as on_a,
            client(b, STREAM, token("viewer")) as on_b,
        ):
            for peer in (on_a, on_b):
                message = await peer.recv_type("catalog", timeout_s=15)
                assert message["version"] == 2
            seconds, micros = await redis.time()
            assert int(seconds) * 1000 + int(micros) // 1000 >= at_ms
            await asyncio.sleep(0.5)  # both processes had their turn at it
            status, body = _call(a, "GET", "/api/admin/catalog", ADMIN)
            assert body["version"] == 2 and body["scheduled"] == []
            assert {g["id"]: g["price_coins"] for g in body["gifts"]}["rose"] == 2
            status, body = _call(a, "DELETE", "/api/admin/catalog/scheduled/rose-sale", ADMIN)
            assert (status, body["error"]["code"]) == (404, "not_found")
    finally:
        await redis.aclose()
