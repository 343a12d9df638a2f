"""``giftwire serve`` in cluster mode: the goals API, levels and leaderboard names over HTTP
and the WebSocket, as in single-node mode (docs/ledger.md, "Goals and levels")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.domain.accounts import Role
from server.ledger.keys import Keys
from tests.reliability.helpers import Peer
from tests.support.cluster import RedisCluster
from tests.support.servers import (
    ServerProcess,
    http_exchange,
    http_json,
    running,
    signed_webhook,
    token,
)


@contextlib.contextmanager
def _serving(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path, **env: str
) -> Iterator[ServerProcess]:
    url = redis_cluster.startup_urls[0]
    with running(url, keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true", **env) as (process,):
        yield process
    assert "Traceback" not in process.log()


@pytest.fixture
def server(redis_cluster: RedisCluster, keys: Keys, tmp_path: Path) -> Iterator[ServerProcess]:
    with _serving(redis_cluster, keys, tmp_path) as process:
        yield process


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


def test_a_goal_flood_gets_one_burst_on_a_cluster(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> None:
    """The change bucket (change_rate.lua) runs in the creator's slot: past the burst, goal
    calls are 429 rate_limited and set nothing; another creator is unaffected."""
    limits = {"GIFTWIRE_CHANGES_PER_MINUTE_MAX": "1", "GIFTWIRE_CHANGE_BURST_MAX": "2"}
    with _serving(redis_cluster, keys, tmp_path, **limits) as server:
        api = server.http + "/api/streams"
        flooder, other = token("floodcreator", Role.CREATOR), token("calmcreator", Role.CREATOR)
        streams = [f"fs{i}" for i in range(4)]
        for stream in streams:
            status, _ = http_json("POST", api, {"stream_id": stream}, bearer=flooder)
            assert status == 201
        goal = {"goal_id": "g", "kind": "coins", "target": 10}
        answers = [http_exchange("POST", f"{api}/{s}/goals", goal, bearer=flooder) for s in streams]
        assert [status for status, _, _ in answers] == [201, 201, 429, 429]
        for _, headers, body in answers[2:]:
            assert body["error"]["code"] == "rate_limited" and int(headers["retry-after"]) >= 1
        for stream, held in zip(streams, [1, 1, 0, 0], strict=True):
            status, body = http_json("GET", f"{api}/{stream}/goals")
            assert status == 200 and len(body["goals"]) == held, (stream, body)
        status, _, _ = http_exchange("DELETE", f"{api}/fs0/goals/g", bearer=flooder)
        assert status == 429
        status, _ = http_json("POST", api, {"stream_id": "calm"}, bearer=other)
        assert status == 201
        status, body = http_json("POST", f"{api}/calm/goals", goal, bearer=other)
        assert status == 201, body
