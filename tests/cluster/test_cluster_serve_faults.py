"""Faults of real server processes in cluster mode: a server killed between the two legs.

50 concurrent retries of one gift id over three processes run on both stores in
``tests/reliability/test_unknown_outcome.py`` (``backend``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.domain.accounts import Role
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_reconcile import ClusterReport, reconcile_cluster
from server.ledger.keys import Keys
from tests.cluster.legs import open_ledger
from tests.reliability.helpers import Peer
from tests.support.cluster import RedisCluster
from tests.support.servers import ServerProcess, http_json, signed_webhook, token


@pytest.fixture
async def books(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


def _server(cluster: RedisCluster, keys: Keys, tmp_path: Path, n: int, **env: str) -> ServerProcess:
    return ServerProcess(
        cluster.startup_urls[n], keys.prefix, tmp_path, GIFTWIRE_REDIS_CLUSTER="true", **env
    )


def _open_paid_stream(server: ServerProcess, stream: str, viewer: str, coins: int) -> None:
    status, _ = http_json(
        "POST", server.http + "/api/streams", {"stream_id": stream},
        bearer=token(f"{stream}_creator", Role.CREATOR),
    )  # fmt: skip
    assert status == 201
    status, _ = signed_webhook(
        server,
        {"type": "payment.succeeded", "payment_id": f"p_{viewer}", "user_id": viewer,
         "coins": coins},
    )  # fmt: skip
    assert status == 200


async def _until(predicate: object, timeout_s: float = 30.0) -> None:
    """Poll another process's state (no event of ours can say when it changed)."""
    async with asyncio.timeout(timeout_s):
        for _ in iter(int, 1):
            if await predicate():  # type: ignore[operator]
                return
            await asyncio.sleep(0.2)


async def _reconciled(books: ClusterLedger) -> ClusterReport:
    report = await reconcile_cluster(books)
    assert report.problems == []
    return report


@pytest.mark.slow
async def test_kill_9_of_the_server_between_the_legs(
    redis_cluster: RedisCluster, keys: Keys, tmp_path: Path, books: ClusterLedger
) -> None:
    doomed = _server(redis_cluster, keys, tmp_path, 0, GIFTWIRE_TEST_CRASH_AFTER_DEBIT="1")
    survivor = _server(redis_cluster, keys, tmp_path, 1)
    doomed.start()
    survivor.start()
    try:
        _open_paid_stream(survivor, "k9", "viewer_k9", 500)
        peer = await Peer.open(doomed, token("viewer_k9"), stream_id="k9")
        await peer.send_gift("g1", gift="cap")
        await asyncio.wait_for(peer.closed.wait(), 20)  # the server died after the debit
        assert doomed.process is not None and doomed.process.wait(10) == -9
        assert peer.reply("g1") is None  # no answer: the outcome is unknown to the client
        assert (await books.balance("viewer_k9")).coins == 401

        async def credited() -> bool:
            return (await books.balance("k9_creator")).diamonds == 49

        await _until(credited)  # the survivor's relay settled it
        # The client's retry on another process: the original receipt, nothing moves.
        retry = await Peer.open(survivor, token("viewer_k9"), stream_id="k9")
        try:
            await retry.send_gift("g1", gift="cap")
            await retry.wait_replies(["g1"])
            ack = retry.reply("g1")
            assert ack is not None and ack["type"] == "gift_ack", ack
            assert (ack["replayed"], ack["seq"], ack["balance"]) == (True, 1, 401)
        finally:
            await retry.close()
            await peer.close()
        report = await _reconciled(books)
        assert report.pending == [] and report.totals["transfers"] == 1
    finally:
        doomed.stop()
        survivor.stop()
    assert "Traceback" not in survivor.log()
