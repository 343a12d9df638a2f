"""GIFTWIRE_DURABILITY on a cluster: WAIT after every per-primary pipeline, a fence key per
primary, ``unavailable`` when a primary's replica is gone; the preflight of every primary
(eviction policy, fsync), at start and by the watch."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.ledger.cluster_config import ClusterWatch, check_cluster
from server.ledger.cluster_keys import ClusterKeys, slot_of
from server.ledger.cluster_ledger import ClusterLedger
from server.ledger.cluster_runner import ClusterScriptRunner
from server.ledger.keys import Keys
from server.ledger.redis_config import Durability
from tests.cluster.legs import GENEROUS, funded, gift, live_stream, uid
from tests.support.cluster import RedisCluster
from tests.support.servers import REPO


async def replicated_ledger(cluster: RedisCluster, prefix: str) -> ClusterLedger:
    """A ledger whose runner runs as ``always+replica`` makes it: WAIT 1 after each
    pipeline, 300 ms at most."""
    runner = ClusterScriptRunner(
        cluster.startup_urls[:1],
        timeout_s=5.0,
        pool_max=16,
        wait_replicas=1,
        wait_timeout_ms=300,
        fence_keys=ClusterKeys(prefix),
    )
    ledger = ClusterLedger(runner, keys=ClusterKeys(prefix), limits=GENEROUS)
    await ledger.prepare(load_catalog())
    return ledger


def serve_once(node_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``giftwire serve`` in cluster mode, to its preflight (and no further, on a refusal)."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"],
        env={
            **os.environ,
            "GIFTWIRE_REDIS_URL": node_url,
            "GIFTWIRE_REDIS_CLUSTER": "true",
            "GIFTWIRE_JWT_SECRET": "x" * 32,
            "GIFTWIRE_DATA_DIR": str(data_dir),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def node_client(port: int) -> SyncRedis:
    return SyncRedis(port=port, socket_timeout=5, decode_responses=True)


def wait_calls(port: int) -> int:
    stats = node_client(port).info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


@pytest.fixture
async def ledger(redis_cluster: RedisCluster, keys: Keys) -> AsyncIterator[ClusterLedger]:
    ledger = await replicated_ledger(redis_cluster, keys.prefix)
    yield ledger
    await ledger.aclose()


def senders_on_every_primary(cluster: RedisCluster, ledger: ClusterLedger) -> dict[int, str]:
    """A user id whose account lives on each primary (by port)."""
    found: dict[int, str] = {}
    while len(found) < cluster.primary_count:
        user = uid("viewer")
        found.setdefault(cluster.primary_for_slot(slot_of(ledger.keys.account(user))).port, user)
    return found


async def test_every_primary_gets_a_fence_and_a_wait_after_its_pipelines(
    redis_cluster: RedisCluster, ledger: ClusterLedger
) -> None:
    stream, creator = await live_stream(ledger)
    senders = senders_on_every_primary(redis_cluster, ledger)
    before = {port: wait_calls(port) for port in senders}
    for sender in senders.values():
        await ledger.top_up(payment_id=uid("pay"), user_id=sender, coins=10)
        receipt = await gift(ledger, sender, stream, creator)
        assert receipt.balance == 9
    for port in senders:
        # A top-up and a debit on each; the credits on the creator's primary besides.
        assert wait_calls(port) >= before[port] + 2
        slot = ledger.runner.slots.fence_slot(("127.0.0.1", port))
        fence = ledger.keys.fence_shard(slot)
        assert node_client(port).get(fence) == "1"  # on the primary that serves its slot


async def test_a_replica_gone_makes_its_primarys_gifts_unavailable_until_it_is_back(
    own_cluster: RedisCluster, keys: Keys
) -> None:
    ledger = await replicated_ledger(own_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        sender = await funded(ledger, 100)
        primary = own_cluster.primary_for_slot(slot_of(ledger.keys.account(sender)))
        replica = next(n for n in own_cluster.topology() if n.primary_id == primary.node_id)
        own_cluster.kill(replica.port)
        with pytest.raises(UnavailableError, match="replicas in time"):
            await gift(ledger, sender, stream, creator, client_id="g1")
        # Applied on the primary and not acknowledged: the retry with the same id, once
        # the replica is back, replays the debit (never a second one) and is acknowledged.
        own_cluster.restart(replica.port)
        again = await gift(ledger, sender, stream, creator, client_id="g1")
        assert again.replayed and again.balance == 99
        assert (await ledger.balance(sender)).coins == 99
        assert (await ledger.balance(creator)).diamonds == again.diamonds
    finally:
        await ledger.aclose()


async def test_the_preflight_refuses_a_primary_that_evicts(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    primary = redis_cluster.primaries()[1]
    client = node_client(primary.port)
    slots = ClusterScriptRunner(redis_cluster.startup_urls[:1], timeout_s=5.0).slots
    watch = ClusterWatch(slots, durability=Durability.EVERYSEC, replicas=1, interval_s=1)
    try:
        assert await watch.check() == []
        client.config_set("maxmemory-policy", "allkeys-lru")
        found = await check_cluster(slots, Durability.EVERYSEC, 1)
        assert len(found.problems) == 1
        assert f"cluster primary 127.0.0.1:{primary.port}: " in found.problems[0]
        assert "maxmemory-policy is allkeys-lru" in found.problems[0]
        assert await watch.check() == found.problems  # and /readyz with it
        serve = await asyncio.to_thread(serve_once, redis_cluster.startup_urls[0], tmp_path)
        assert serve.returncode == 4, serve.stdout + serve.stderr
        output = (serve.stdout + serve.stderr).splitlines()
        refusals = [line for line in output if "refusing to start" in line]
        assert len(refusals) == 1 and "maxmemory-policy" in refusals[0]
        assert "Traceback" not in serve.stderr
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    assert await watch.check() == []
    await slots.aclose()


async def test_always_needs_every_primary_to_fsync_every_write(
    redis_cluster: RedisCluster,
) -> None:
    slots = ClusterScriptRunner(redis_cluster.startup_urls[:1], timeout_s=5.0).slots
    try:
        everysec = await check_cluster(slots, Durability.EVERYSEC, 1)
        assert everysec.problems == [] and everysec.unready == []
        # The test cluster runs appendfsync everysec: each primary is refused under always.
        always = await check_cluster(slots, Durability.ALWAYS_REPLICA, 1)
        assert len(always.problems) == redis_cluster.primary_count
        assert all("appendfsync everysec" in line for line in always.problems)
        assert always.unready == []  # each primary has its replica
    finally:
        await slots.aclose()
