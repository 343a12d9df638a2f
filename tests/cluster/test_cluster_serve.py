"""``giftwire serve`` in cluster mode: it serves viewers from sharded pub/sub, on several
processes at once, and refuses gifts and the HTTP API with ``unavailable`` and a reason
until the two-leg scripts are wired in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.broker.cluster_rooms import ClusterRooms
from server.domain.accounts import Role
from server.ledger.cluster_keys import ClusterKeys
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.web.cluster_app import NOT_YET_SUPPORTED
from tests.reliability.helpers import Peer
from tests.support.cluster import RedisCluster
from tests.support.cluster_feed import open_stream, publish_gift
from tests.support.servers import ServerProcess, http_json, token


@pytest.fixture
async def rooms(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterRooms]:
    runner = ClusterScriptRunner(redis_cluster.startup_urls, timeout_s=5.0)
    await runner.prepare()
    yield ClusterRooms(runner, ClusterKeys(keys.prefix), timeout_s=5.0)
    await runner.aclose()


@pytest.fixture
def cluster_servers(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    """Three server processes on the cluster, each given a different startup node."""
    servers = [
        ServerProcess(
            redis_cluster.startup_urls[i], keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true"
        )
        for i in range(3)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert "Traceback" not in server.log()


async def test_cluster_mode_serves_viewers_and_refuses_gifts_with_a_reason(
    cluster_servers: list[ServerProcess], rooms: ClusterRooms, keys: Keys
) -> None:
    server = cluster_servers[0]
    status, body = http_json("GET", server.http + "/readyz")
    assert status == 200
    assert body == {
        "redis": True, "cluster": True, "ready": True, "gifts": False,
        "reason": NOT_YET_SUPPORTED,
    }  # fmt: skip
    creator = token("creator1", Role.CREATOR)
    status, body = http_json(
        "POST", server.http + "/api/streams", {"stream_id": "s1"}, bearer=creator
    )
    assert status == 503
    assert body["error"] == {"code": "unavailable", "message": NOT_YET_SUPPORTED}

    await open_stream(rooms, "served", "serving_creator")
    peer = await Peer.open(server, token("viewer1"), stream_id="served")
    try:
        assert peer.welcome["stream"]["creator_id"] == "serving_creator"
        await peer.send_gift("g1")
        await peer.wait_replies(["g1"])
        assert peer.reply("g1") is not None and peer.reply("g1")["code"] == "unavailable"  # type: ignore[index]
    finally:
        await peer.close()
    status, _ = http_json("GET", server.http + "/api/streams/served")
    assert status == 503


async def test_three_processes_serve_one_room_every_viewer_sees_each_seq_once_in_order(
    cluster_servers: list[ServerProcess], rooms: ClusterRooms
) -> None:
    """Viewers on three server processes of one room; gifts credited (as the credit leg
    does: feed entry + SPUBLISH in the creator's slot) while they watch: each viewer on
    each process ends with exactly 1..N."""
    await open_stream(rooms, "big", "big_creator")
    peers = [
        await Peer.open(server, token(f"viewer{i}_{n}"), stream_id="big")
        for i, server in enumerate(cluster_servers)
        for n in range(4)
    ]
    try:
        total = 300
        for _ in range(total):
            await publish_gift(rooms, "big", "big_creator")
        for peer in peers:
            await peer.wait_for(lambda p=peer: len(p.seqs) >= total)  # type: ignore[misc]
        expected = list(range(1, total + 1))
        for peer in peers:
            assert peer.seqs == expected
    finally:
        for peer in peers:
            await peer.close()
