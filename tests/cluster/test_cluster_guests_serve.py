"""``giftwire serve`` in cluster mode: guests on stage over HTTP and the WebSocket, as in
single-node mode (docs/ledger.md, "Guests on stage"): the stage routes, the ``guests``
events on the room's shard channel, gifts to one guest and to every guest, a refusal, the
guests' wallets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.domain.accounts import Role
from server.ledger.keys import Keys
from tests.reliability.helpers import Peer
from tests.support.cluster import RedisCluster
from tests.support.servers import ServerProcess, http_json, signed_webhook, token


@pytest.fixture
def server(redis_cluster: RedisCluster, keys: Keys, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        redis_cluster.startup_urls[0], keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log()


async def test_guests_on_stage_over_http_and_the_socket(server: ServerProcess) -> None:
    creator = token("stagehost", Role.CREATOR)
    api = server.http + "/api/streams"
    status, _ = http_json("POST", api, {"stream_id": "gst"}, bearer=creator)
    assert status == 201
    status, _ = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": "sp1", "user_id": "stagefan", "coins": 500},
    )
    assert status == 200
    peer = await Peer.open(server, token("stagefan"), stream_id="gst")
    try:
        for guest in ("gina", "gus"):
            status, body = http_json(
                "POST", api + "/gst/guests", {"user_id": guest}, bearer=creator
            )
            assert status == 200, body
            status, body = http_json(
                "POST", api + "/gst/guests/join", {}, bearer=token(guest, name=guest.title())
            )
            assert status == 200 and guest in [g["user_id"] for g in body["guests"]], body
        # The stage's changes reach the room through its shard channel (SPUBLISH).
        await peer.wait_for(
            lambda: any(
                m["type"] == "guests" and len([g for g in m["guests"] if g["state"] == "on"]) == 2
                for m in peer.other
            )
        )
        # One at a time: gifts in flight together may be debited in any order.
        for client_id, to in (("c1", "gina"), ("c2", "*"), ("c3", "bo")):
            await peer.send(
                {"type": "send_gift", "id": client_id, "gift": "cap", "count": 1, "to": to}
            )
            await peer.wait_replies([client_id])
        assert peer.acks["c1"]["balance"] == 401 and peer.acks["c2"]["balance"] == 302
        assert peer.reply("c3")["code"] == "not_a_guest"  # type: ignore[index]
        await peer.wait_for(lambda: len(peer.gifts) == 2)
        assert [g["recipients"] for g in peer.gifts] == [
            [{"user_id": "gina", "coins": 99}],
            [{"user_id": "gina", "coins": 50}, {"user_id": "gus", "coins": 49}],
        ]
    finally:
        await peer.close()
    status, body = http_json("GET", api + "/gst/guests")
    assert status == 200 and [
        (g["user_id"], g["coins"], g["diamonds"]) for g in body["guests"]
    ] == [
        ("gina", 149, 74),
        ("gus", 49, 24),
    ]
    # Each guest's diamonds, with their own carry: 49.5 + 25 -> 74, 24.5 -> 24.
    for guest, diamonds in (("gina", 74), ("gus", 24)):
        status, body = http_json("GET", server.http + "/api/me/wallet", bearer=token(guest))
        assert status == 200 and body["diamonds"] == diamonds, body
    status, body = http_json(
        "POST", api + "/gst/guests/leave", {"user_id": "gus"}, bearer=token("gus")
    )
    assert status == 200 and [g["user_id"] for g in body["guests"]] == ["gina"]
