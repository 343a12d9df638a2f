"""``giftwire serve`` in cluster mode: the goals API, levels and leaderboard names over HTTP
and the WebSocket, as in single-node mode (docs/ledger.md, "Goals and levels")."""

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


async def test_goals_levels_and_names_over_http_and_the_socket(server: ServerProcess) -> None:
    creator = token("goalcreator", Role.CREATOR)
    api = server.http + "/api/streams"
    status, _ = http_json("POST", api, {"stream_id": "gs"}, bearer=creator)
    assert status == 201
    goal = {"goal_id": "two_caps", "kind": "coins", "target": 150, "title": "Two caps"}
    status, body = http_json("POST", api + "/gs/goals", goal, bearer=creator)
    assert status == 201 and body["progress"] == 0, body
    status, body = http_json("POST", api + "/gs/goals", goal, bearer=token("someone"))
    assert status == 403 and body["error"]["code"] == "not_stream_owner", body
    status, _ = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": "gp1", "user_id": "goalfan", "coins": 500},
    )
    assert status == 200
    fan = token("goalfan", name="Goal Fan")
    peer = await Peer.open(server, fan, stream_id="gs")
    try:
        assert peer.welcome["you"]["level"] == 0
        assert [g["goal_id"] for g in peer.welcome["goals"]] == ["two_caps"]
        await peer.send_gift("c1", gift="cap")
        await peer.send_gift("c2", gift="cap")
        await peer.wait_replies(["c1", "c2"])
        await peer.wait_for(lambda: any(m["type"] == "goal_reached" for m in peer.other))
        assert [g["level"] for g in peer.gifts] == [2, 2]
        assert [m["type"] for m in peer.other if m["type"] in ("level_up", "goal_reached")] == [
            "level_up",
            "goal_reached",
        ]
    finally:
        await peer.close()
    status, body = http_json("GET", api + "/gs/goals")
    assert status == 200 and [(g["goal_id"], g["progress"]) for g in body["goals"]] == [
        ("two_caps", 198)
    ]
    status, body = http_json("GET", api + "/gs/leaderboard")
    assert status == 200, body
    assert body["top"] == [{"user_id": "goalfan", "name": "Goal Fan", "coins": 198, "level": 2}]
    again = await Peer.open(server, fan, stream_id="gs")
    try:
        assert again.welcome["you"]["level"] == 2
        assert again.welcome["goals"][0]["progress"] == 198
    finally:
        await again.close()
    status, body = http_json("DELETE", api + "/gs/goals/two_caps", bearer=creator)
    assert status == 200 and body == {"deleted": True}
    status, body = http_json("GET", api + "/gs/goals")
    assert status == 200 and body["goals"] == []
