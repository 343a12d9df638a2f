"""``giftwire serve`` in cluster mode: gifts in two legs, viewers from sharded pub/sub, on
several processes at once; without a database the record's routes answer ``unavailable``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.broker.cluster_rooms import ClusterRooms
from server.broker.shard_link import LINK_NAME_PREFIX
from server.domain.accounts import Role
from server.domain.limits import Limits
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_reads import ClusterReads
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger
from tests.reliability.helpers import Peer, settle
from tests.support.cluster import RedisCluster
from tests.support.servers import ServerProcess, http_json, running, signed_webhook, token

CLUSTER_MODE = {"GIFTWIRE_REDIS_CLUSTER": "true"}


@pytest.fixture
async def rooms(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterRooms]:
    runner = ClusterScriptRunner(redis_cluster.startup_urls, timeout_s=5.0)
    await runner.prepare()
    yield ClusterRooms(ClusterReads(runner, ClusterKeys(keys.prefix), Limits()), timeout_s=5.0)
    await runner.aclose()


@pytest.fixture
def cluster_servers(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    """Three server processes on the cluster, each given a different startup node."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(running(url, keys.prefix, tmp_path, **CLUSTER_MODE))[0]
            for url in redis_cluster.startup_urls[:3]
        ]
        yield servers
    for server in servers:
        assert "Traceback" not in server.log()


async def test_cluster_mode_serves_gifts_end_to_end(
    cluster_servers: list[ServerProcess], rooms: ClusterRooms, keys: Keys
) -> None:
    server = cluster_servers[0]
    status, body = http_json("GET", server.http + "/readyz")
    assert status == 200
    assert body == {"redis": True, "cluster": True, "ready": True, "gifts": True}
    creator = token("creator1", Role.CREATOR)
    status, body = http_json(
        "POST", server.http + "/api/streams", {"stream_id": "s1"}, bearer=creator
    )
    assert status == 201 and body["creator_id"] == "creator1"
    status, paid = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": "p1", "user_id": "viewer1", "coins": 500},
    )
    assert status == 200 and paid["credited"] == 500
    peer = await Peer.open(cluster_servers[1], token("viewer1"), stream_id="s1")
    watcher = await Peer.open(cluster_servers[2], token("viewer2"), stream_id="s1")
    try:
        assert peer.welcome["stream"]["creator_id"] == "creator1"
        await peer.send_gift("g1", gift="cap")
        await peer.wait_replies(["g1"])
        ack = peer.reply("g1")
        assert ack is not None and ack["type"] == "gift_ack", ack
        assert (ack["seq"], ack["coins"], ack["balance"], ack["replayed"]) == (1, 99, 401, False)
        await peer.send_gift("g1", gift="cap")  # a retry: the same ack, nothing moves
        await watcher.wait_for(lambda: watcher.seqs == [1])
    finally:
        await peer.close()
        await watcher.close()
    status, body = http_json("GET", server.http + "/api/me/wallet", bearer=token("viewer1"))
    assert status == 200 and body["coins"] == 401
    status, body = http_json("GET", server.http + "/api/streams/s1")
    assert status == 200 and (body["last_seq"], body["diamonds"]) == (1, 49)
    status, body = http_json("GET", server.http + "/api/me/transactions", bearer=creator)
    assert status == 503 and body["error"]["code"] == "unavailable"


async def test_three_processes_serve_one_room_every_viewer_sees_each_seq_once_in_order(
    cluster_servers: list[ServerProcess], redis_cluster: RedisCluster, keys: Keys
) -> None:
    """Viewers on three server processes of one room; 300 real gifts (debit leg, then the
    credit leg's SPUBLISH) from 20 senders at once while they watch: each viewer on each
    process ends with exactly 1..300."""
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        peers = [
            await Peer.open(server, token(f"viewer{i}_{n}"), stream_id=stream)
            for i, server in enumerate(cluster_servers)
            for n in range(4)
        ]
        senders = [await funded(ledger, 1_000) for _ in range(20)]
        total = 300

        async def send(sender: str) -> None:
            for _ in range(total // len(senders)):
                await gift(ledger, sender, stream, creator)

        await asyncio.gather(*(send(s) for s in senders))
        try:
            for peer in peers:
                await peer.wait_for(lambda p=peer: len(p.seqs) >= total)  # type: ignore[misc]
            expected = list(range(1, total + 1))
            for peer in peers:
                assert peer.seqs == expected
        finally:
            for peer in peers:
                await peer.close()
    finally:
        await ledger.aclose()


async def test_spending_limits_over_http_bind_gifts_in_cluster_mode(
    cluster_servers: list[ServerProcess],
) -> None:
    server = cluster_servers[0]
    creator = token("creator2", Role.CREATOR)
    status, _ = http_json("POST", server.http + "/api/streams", {"stream_id": "s2"}, bearer=creator)
    assert status == 201
    status, _ = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": "p2", "user_id": "viewer3", "coins": 500},
    )
    assert status == 200
    viewer = token("viewer3")
    status, body = http_json("PUT", server.http + "/api/me/spending", {"day": 150}, bearer=viewer)
    assert status == 200 and body["day"]["limit"] == 150, body
    peer = await Peer.open(cluster_servers[1], viewer, stream_id="s2")
    try:
        # One after the other, each retried with its id while `unavailable` (the outcome of
        # a leg that timed out on a loaded machine is unknown: the client's contract).
        await settle(peer, ["c1"], gift="hand_hearts")
        await settle(peer, ["c2"], gift="hand_hearts")
        accepted = peer.reply("c1") or {}
        assert accepted.get("type") == "gift_ack", accepted
        refused = peer.reply("c2") or {}
        assert refused.get("code") == "spending_limit", refused
        assert refused["detail"]["limit"] == 150 and refused["detail"]["spent"] == 100
    finally:
        await peer.close()
    status, body = http_json("GET", server.http + "/api/me/spending", bearer=viewer)
    assert status == 200 and body["day"]["spent"] == 100


async def test_a_server_subscribing_on_replicas_serves_a_viewer(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path
) -> None:
    """``GIFTWIRE_CLUSTER_SUBSCRIBE=replica``: the room's shard channel is held by the
    server's link on a replica of the stream's shard (``CLIENT LIST`` there), none on its
    primary, and a viewer sees the gifts sent through the two legs."""
    replica_mode = {**CLUSTER_MODE, "GIFTWIRE_CLUSTER_SUBSCRIBE": "replica"}
    with running(redis_cluster.startup_urls[0], keys.prefix, tmp_path, **replica_mode) as [server]:
        creator = token("creator_r", Role.CREATOR)
        status, _ = http_json(
            "POST", server.http + "/api/streams", {"stream_id": "s_r"}, bearer=creator
        )
        assert status == 201
        status, _ = signed_webhook(
            server,
            {"type": "payment.succeeded", "payment_id": "p_r", "user_id": "viewer_r",
             "coins": 500},
        )  # fmt: skip
        assert status == 200
        slot = slot_of(ClusterKeys(keys.prefix).room_channel("creator_r", "s_r"))
        primary = redis_cluster.primary_for_slot(slot)
        replicas = {n.port for n in redis_cluster.topology() if n.primary_id == primary.node_id}
        watcher = await Peer.open(server, token("watcher_r"), stream_id="s_r")
        peer = await Peer.open(server, token("viewer_r"), stream_id="s_r")
        try:
            for _ in range(300):  # the map lists a replica once it gossiped a write
                held = redis_cluster.shard_channels(LINK_NAME_PREFIX)
                if set(held) & replicas and primary.port not in held:
                    break
                await asyncio.sleep(0.05)
            assert set(held) & replicas and primary.port not in held, (held, replicas)
            await settle(peer, ["r1"], gift="cap")
            await watcher.wait_for(lambda: watcher.seqs == [1])
        finally:
            await peer.close()
            await watcher.close()
    assert "Traceback" not in server.log()
