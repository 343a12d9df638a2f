"""Authentication and authorization at the edge (issue item 8).

giftwire uses no one-time tickets: a WebSocket is opened with the access token itself, so
"a token reused after its ticket was spent" does not apply (``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from server.domain.accounts import Role
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    CREATOR,
    STREAM,
    Peer,
    assert_books_hold,
    open_stream,
)
from tests.support.servers import JWT_SECRET, ServerProcess, http_json, token

GOOD_ORIGIN = "https://good.example"


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


def _signed(claims: dict[str, Any], secret: str, alg: str) -> str:
    """A JWT signed by hand: pyjwt warns (an error here) about HS384/512 key lengths."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    head = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(secret.encode(), head.encode(), digest).digest()
    return head + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _claims(user: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "role": "viewer", "name": user, "iat": now, "exp": now + 600, **extra}


def bad_tokens() -> dict[str, tuple[str, str]]:
    """Each bad token and the code it gets, signed now: tokens made at import would have
    expired by the time a long suite reaches the test, turning every refusal into
    token_expired."""
    return {
        "expired": (token("alice", ttl_s=-30), "token_expired"),
        "forged with another secret": (
            jwt.encode(_claims(), "another-secret-" + "y" * 40, algorithm="HS256"),
            "unauthorized",
        ),
        "forged admin role": (
            jwt.encode(_claims(role="admin"), "another-secret-" + "y" * 40, algorithm="HS256"),
            "unauthorized",
        ),
        "alg none": (f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.", "unauthorized"),
        "alg None spelled otherwise": (
            f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{_b64(_claims())}.",
            "unauthorized",
        ),
        "HS512 with the right secret": (
            _signed(_claims(), JWT_SECRET, "HS512"),
            "unauthorized",
        ),
        "HS384 with the right secret": (
            _signed(_claims(), JWT_SECRET, "HS384"),
            "unauthorized",
        ),
        "no expiry": (
            jwt.encode({"sub": "alice", "role": "viewer"}, JWT_SECRET, algorithm="HS256"),
            "unauthorized",
        ),
        "signature stripped": (token("alice").rsplit(".", 1)[0] + ".", "unauthorized"),
        "payload swapped, signature kept": (
            ".".join(
                [token("alice").split(".")[0], _b64(_claims("bob")), token("alice").split(".")[2]]
            ),
            "unauthorized",
        ),
        "unknown role": (jwt.encode(_claims(role="god"), JWT_SECRET, "HS256"), "unauthorized"),
        "bad user id": (jwt.encode(_claims("a b"), JWT_SECRET, algorithm="HS256"), "unauthorized"),
        "not a jwt": ("not-a-jwt", "unauthorized"),
    }


async def _refused(server: ServerProcess, url_suffix: str = "", **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.ws_url(STREAM) + url_suffix, open_timeout=10, **kwargs):
            pass
    response = refused.value.response
    return response.status_code, orjson.loads(response.body)["error"]["code"]


async def test_bad_tokens_are_refused_at_the_handshake_and_over_http(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url)
    for name, (bearer, code) in bad_tokens().items():
        status, got = await _refused(server, subprotocols=[f"bearer.{bearer}"])
        assert (status, got) == (401, code), name
        status, got = await _refused(
            server, additional_headers={"authorization": f"Bearer {bearer}"}
        )
        assert (status, got) == (401, code), name
        status, body = http_json("GET", server.http + "/api/me/wallet", bearer=bearer)
        assert (status, body["error"]["code"]) == (401, code), name
    # Control: the same hand signing with HS256 is accepted, so HS384/HS512 were refused
    # for their algorithm alone.
    status, body = http_json(
        "GET", server.http + "/api/me/wallet", bearer=_signed(_claims(), JWT_SECRET, "HS256")
    )
    assert (status, body["coins"]) == (200, 100)
    # A token is never taken from the query string, and `since` must be a sequence.
    assert await _refused(server, f"?token={token('alice')}") == (401, "unauthorized")
    protocols = [f"bearer.{token('alice')}"]
    for since in ("abc", "-1", "1e3", "9" * 17, "%C2%B2", "%D9%A3"):  # ², ٣
        refusal = await _refused(server, f"?since={since}", subprotocols=protocols)
        assert refusal == (400, "invalid_request")
    assert (await ledger.balance("alice")).coins == 100


async def test_foreign_origins_are_refused_before_accept(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger)
    server = spawn(redis_server.url, GIFTWIRE_ALLOWED_ORIGINS=f"{GOOD_ORIGIN},https://b.example")
    protocols = [Subprotocol(f"bearer.{token('alice')}")]
    for foreign in ("https://evil.example", "null", "http://good.example", GOOD_ORIGIN + ".evil"):
        refusal = await _refused(server, subprotocols=protocols, origin=foreign)
        assert refusal == (403, "forbidden"), foreign
    allowed = (GOOD_ORIGIN, "https://b.example", f"http://127.0.0.1:{server.port}", None)
    for origin in allowed:
        async with connect(
            server.ws_url(STREAM),
            subprotocols=protocols,
            origin=None if origin is None else Origin(origin),
        ) as ws:
            assert orjson.loads(await ws.recv())["type"] == "welcome"


# Fields a hostile client might add to make someone else pay, pay someone else, or pay less.
SPOOFED_FIELDS: list[dict[str, Any]] = [
    {"sender": "bob"},
    {"sender_id": "bob"},
    {"from": "bob"},
    {"user_id": "bob"},
    {"creator": "mallory"},
    {"creator_id": "mallory"},
    {"stream": "other"},
    {"stream_id": "other"},
    {"price": 0},
    {"price_coins": 0},
    {"coins": 1},
    {"amount": 1},
    {"diamonds": 1_000_000},
]


async def test_only_the_authenticated_viewer_pays_the_catalog_price_to_the_streams_creator(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000), ("bob", 1_000))
    await ledger.start_stream(stream_id="other", creator_id="mallory", title="other")
    server = spawn(redis_server.url)
    alice = await Peer.open(server, token("alice"))
    creator = await Peer.open(server, token(CREATOR, Role.CREATOR))
    try:
        for n, extra in enumerate(SPOOFED_FIELDS):
            message = {"type": "send_gift", "id": f"spoof-{n}", "gift": "perfume", **extra}
            await alice.send(message)
        ids = [f"spoof-{n}" for n in range(len(SPOOFED_FIELDS))]
        await alice.wait_replies(ids)
        assert {alice.errors[i][-1]["code"] for i in ids} == {"invalid_request"}
        # `to` names a recipient among the stream's guests on stage, nobody else.
        await alice.send({"type": "send_gift", "id": "to-1", "gift": "perfume", "to": "mallory"})
        await alice.wait_replies(["to-1"])
        assert alice.errors["to-1"][-1]["code"] == "not_a_guest"
        # The creator cannot gift its own stream; nobody can make another user pay.
        await creator.send_gift("self-1", "perfume")
        await creator.wait_replies(["self-1"])
        assert creator.errors["self-1"][-1]["code"] == "self_gift"

        await alice.send_gift("real-1", "perfume")
        await alice.wait_replies(["real-1"])
        ack = alice.acks["real-1"]
        assert (ack["coins"], ack["balance"]) == (20, 980)
    finally:
        await alice.close()
        await creator.close()
    assert (await ledger.balance("alice")).coins == 980
    assert (await ledger.balance("bob")).coins == 1_000
    assert (await ledger.balance(CREATOR)).diamonds == 10
    assert (await ledger.balance("mallory")).diamonds == 0
    assert (await ledger.stream("other")).last_sequence == 0  # type: ignore[union-attr]
    await assert_books_hold(ledger.redis, keys)


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_no_token_reaches_a_log_line(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn, level: str
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url, GIFTWIRE_LOG_LEVEL=level)
    good = token("alice")
    secrets = [good, *(bad for bad, _ in bad_tokens().values() if bad != "not-a-jwt")]
    for bearer in secrets:
        for kwargs in (
            {"subprotocols": [f"bearer.{bearer}"]},
            {"additional_headers": {"authorization": f"Bearer {bearer}"}},
        ):
            try:
                async with connect(server.ws_url(STREAM), open_timeout=10, **kwargs) as ws:
                    await ws.recv()
            except InvalidStatus:
                pass
        # Clients that put the token where it does not belong: the URL.
        http_json("GET", f"{server.http}/api/me/wallet?token={bearer}", bearer=bearer)
        http_json("GET", f"{server.http}/api/me/wallet?access_token={bearer}&x=1")
        try:
            async with connect(server.ws_url(STREAM) + f"?token={bearer}", open_timeout=10):
                pass
        except InvalidStatus:
            pass
    server.stop()
    text = server.log_path.read_text(errors="replace")
    assert "/api/me/wallet" in text  # the access log is on: the lines were written
    for secret in secrets:
        for part in (secret, *(p for p in secret.split(".")[1:] if len(p) > 8)):
            assert part not in text, f"token material in the {level} log"


async def test_a_gift_after_the_tokens_expiry_is_refused_and_the_socket_closed_4001(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    """Issue #11 item 9: a gift was acked 2 s after ``exp`` on a socket opened before it."""
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 100))
    server = spawn(redis_server.url)
    short = token("alice", ttl_s=4)
    expires_at_s = jwt.decode(short, options={"verify_signature": False})["exp"]
    peer = await Peer.open(server, short)
    try:
        await peer.send_gift("before-exp")
        await peer.wait_replies(["before-exp"])
        assert peer.acks["before-exp"]["coins"] == 1  # the token was good: applied
        # Wait for the expiry itself (not a timing assertion): the socket is still open.
        await asyncio.sleep(max(0.0, expires_at_s - time.time()) + 0.2)
        assert not peer.closed.is_set()
        await peer.send_gift("after-exp")
        await peer.wait_replies(["after-exp"])
        refusal = peer.reply("after-exp")
        assert refusal is not None and refusal["type"] == "error", refusal
        assert refusal["code"] == "token_expired"
        await asyncio.wait_for(peer.closed.wait(), 10)
        assert peer.ws.close_code == 4001
        assert "token expired" in (peer.ws.close_reason or "")
    finally:
        await peer.close()
    # HTTP agrees with the socket, and a fresh token carries on where the client was.
    status, body = http_json("GET", f"{server.http}/api/me/wallet", bearer=short)
    assert (status, body["error"]["code"]) == (401, "token_expired")
    assert await _refused(server, subprotocols=[f"bearer.{short}"]) == (401, "token_expired")
    fresh = await Peer.open(server, token("alice"), since=0)
    try:
        await fresh.send_gift("after-exp")  # the refused gift, retried with its id
        await fresh.wait_replies(["after-exp"])
        assert fresh.acks["after-exp"]["replayed"] is False  # it had not been applied
    finally:
        await fresh.close()
    assert (await ledger.balance("alice")).coins == 98
    await assert_books_hold(ledger.redis, keys)
