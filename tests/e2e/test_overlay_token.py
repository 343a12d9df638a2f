"""The read-only overlay token against a real server process: it may watch its one stream
and change nothing (an OBS browser-source URL is shared with every scene export).

The worst case is tested: an overlay token whose subject *is* the stream's creator, who
could end the stream and cash out with a creator token.
"""

from __future__ import annotations

import time

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from server.web.auth import issue_token
from tests.support.servers import JWT_SECRET, ServerProcess, client, http_json, token

STREAM = "show1"
CREATOR = "star"


def _overlay(stream: str = STREAM, user: str = CREATOR) -> str:
    return issue_token(JWT_SECRET, user, Role.OVERLAY, name="OBS", ttl_s=600, stream=stream)


async def _live_with_diamonds(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Live!")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=40_000)
    await ledger.send_gift(
        client_id="g1", sender_id="alice", sender_name="Alice", stream_id=STREAM,
        creator_id=CREATOR, gift_id="universe", count=1,
    )  # fmt: skip


async def test_overlay_token_watches_its_stream_and_cannot_send_a_gift(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live_with_diamonds(ledger)
    await ledger.top_up(payment_id="pay-star", user_id=CREATOR, coins=1_000)
    async with client(server, STREAM, _overlay()) as overlay:
        assert overlay.welcome["you"]["role"] == "overlay"
        assert overlay.welcome["stream"]["state"] == "live"
        await overlay.send({"type": "send_gift", "id": "o1", "gift": "rose"})
        refused = await overlay.recv_type("error", "gift_ack")
        assert (refused["type"], refused["code"], refused["id"]) == ("error", "read_only", "o1")
        # Reading is still fine on the same connection.
        await overlay.send({"type": "ping", "id": "p1"})
        assert (await overlay.recv_type("pong"))["id"] == "p1"
        # And it sees other viewers' gifts.
        async with client(server, STREAM, token("alice")) as alice:
            await alice.send({"type": "send_gift", "id": "a1", "gift": "rose"})
            assert (await alice.recv_type("gift_ack"))["id"] == "a1"
        assert (await overlay.gifts(1))[0]["transfer_id"]
    assert (await ledger.balance(CREATOR)).coins == 1_000
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.gifts_total == 2


async def test_overlay_token_cannot_end_the_stream_cash_out_or_start_one(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live_with_diamonds(ledger)
    diamonds = (await ledger.balance(CREATOR)).diamonds
    assert diamonds >= 1_000  # enough that a creator token could cash out
    overlay = _overlay()
    calls = [
        ("POST", f"/api/streams/{STREAM}/end", None),
        ("POST", "/api/cashouts", {"id": "c1", "diamonds": 1_000}),
        ("POST", "/api/streams", {"stream_id": "show2", "title": "mine now"}),
    ]
    for method, path, body in calls:
        status, reply = http_json(method, server.http + path, body, bearer=overlay)
        assert (status, reply["error"]["code"]) == (403, "read_only"), path
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.state == "live"
    assert (await ledger.balance(CREATOR)).diamonds == diamonds
    assert await ledger.stream("show2") is None
    # The same calls with the creator's own token do go through: the refusal was the scope.
    status, _ = http_json(
        "POST", f"{server.http}/api/cashouts", {"id": "c1", "diamonds": 1_000},
        bearer=token(CREATOR, Role.CREATOR),
    )  # fmt: skip
    assert status == 201


async def test_overlay_token_is_refused_on_any_other_stream(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live_with_diamonds(ledger)
    await ledger.start_stream(stream_id="other", creator_id=CREATOR, title="Other")
    with pytest.raises(InvalidStatus) as refused:
        async with client(server, "other", _overlay()):
            pass
    assert refused.value.response.status_code == 403
    assert b'"forbidden"' in refused.value.response.body


async def test_an_overlay_token_without_its_stream_is_not_accepted(
    server: ServerProcess, ledger: Ledger
) -> None:
    await _live_with_diamonds(ledger)
    now = int(time.time())
    claims = {"sub": CREATOR, "role": "overlay", "iat": now, "exp": now + 600}
    with pytest.raises(InvalidStatus) as refused:
        async with client(server, STREAM, jwt.encode(claims, JWT_SECRET, algorithm="HS256")):
            pass
    assert refused.value.response.status_code == 401
