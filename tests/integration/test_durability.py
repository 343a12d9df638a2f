"""GIFTWIRE_DURABILITY=always+replica: no reply before WAIT counted the replicas; and what
asynchronous replication loses in a failover is noticed.

A real primary (appendfsync always) and a real replica; the replica is paused with SIGSTOP
to play a replica that has not got the last writes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.redis_config import Durability
from server.ledger.watch import LedgerWatch
from tests.integration.helpers import CREATOR, STREAM, assert_books_reconcile, gift
from tests.support.proxy import CuttableProxy

LIMITS = Limits(gifts_per_s_max=1000, gift_burst_max=1000, redis_timeout_s=5.0)


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    # Redis 7 waits 5 s for more replicas before a first full sync, and up to 10 s at
    # shutdown for a lagging replica: neither is what these tests are about.
    primary = RedisProcess(
        tmp_path / "primary",
        appendfsync="always",
        extra_args=("--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0"),
    )
    primary.start()
    replica = RedisProcess(
        tmp_path / "replica",
        appendfsync="always",
        # Without AOF: a replica refuses SIGTERM while it writes its first AOF after a sync.
        extra_args=("--replicaof", "127.0.0.1", str(primary.port), "--appendonly", "no"),
    )
    replica.start()
    try:
        yield primary, replica
    finally:
        if replica.process is not None:
            replica.process.send_signal(signal.SIGCONT)
        replica.stop()
        primary.stop()


async def _in_sync(primary: Redis, replica: Redis) -> None:
    for _ in range(200):
        info = cast(dict[str, object], await replica.info("replication"))
        if info.get("master_link_status") == "up":
            await primary.set("sync-probe", "1")
            if await primary.wait(1, 200) >= 1:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica never caught up")


@pytest.fixture
async def clients(
    primary_and_replica: tuple[RedisProcess, RedisProcess],
) -> AsyncIterator[tuple[Redis, Redis]]:
    primary, replica = primary_and_replica
    on_primary, on_replica = Redis.from_url(primary.url), Redis.from_url(replica.url)
    await _in_sync(on_primary, on_replica)
    yield on_primary, on_replica
    await on_primary.aclose()
    await on_replica.aclose()


async def _ledger(redis: Redis, keys: Keys, replicas: int) -> Ledger:
    setup = Ledger(redis, keys=keys, limits=LIMITS)
    await setup.prepare(load_catalog())
    await setup.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await setup.top_up(payment_id="pay-alice", user_id="alice", coins=100)
    ledger = Ledger(redis, keys=keys, limits=LIMITS, wait_replicas=replicas, wait_timeout_ms=1000)
    await ledger.prepare(load_catalog())
    return ledger


async def test_an_ack_means_the_replica_has_the_gift(
    primary_and_replica: tuple[RedisProcess, RedisProcess],
    clients: tuple[Redis, Redis],
    keys: Keys,
) -> None:
    on_primary, on_replica = clients
    _, replica = primary_and_replica
    ledger = await _ledger(on_primary, keys, replicas=1)
    receipt_key = keys.gift_receipt("alice", "g1")
    assert (await gift(ledger, "g1")).balance == 99
    assert await on_replica.exists(receipt_key)  # WAIT returned: the replica has it

    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # a replica that falls behind
    with pytest.raises(UnavailableError):
        await gift(ledger, "g2")
    assert await on_primary.exists(keys.gift_receipt("alice", "g2"))  # applied, not acked
    with pytest.raises(UnavailableError):
        await gift(ledger, "g2")  # the replay is not acked either: the replica still lacks it
    replica.process.send_signal(signal.SIGCONT)
    replay = await gift(ledger, "g2")
    assert replay.replayed and replay.balance == 98
    assert await on_replica.exists(keys.gift_receipt("alice", "g2"))
    assert (await ledger.balance("alice")).coins == 98  # applied once
    await assert_books_reconcile(ledger)


async def test_more_replicas_than_connected_answer_unavailable_and_fail_readiness(
    clients: tuple[Redis, Redis], keys: Keys
) -> None:
    on_primary, _ = clients
    ledger = await _ledger(on_primary, keys, replicas=2)
    with pytest.raises(UnavailableError):
        await gift(ledger, "g1")
    watch = LedgerWatch(ledger, durability=Durability.ALWAYS_REPLICA, replicas=2)
    await watch.prime()
    problems = await watch.check()
    assert problems == [
        "GIFTWIRE_DURABILITY=always+replica needs 2 connected replica(s), Redis has 1"
    ]
    watch.replicas = 1
    assert await watch.check() == []


async def test_without_replicas_asked_for_nothing_waits(
    clients: tuple[Redis, Redis], keys: Keys
) -> None:
    on_primary, _ = clients
    ledger = await _ledger(on_primary, keys, replicas=0)
    assert ledger.runner._wait == b""
    assert (await gift(ledger, "g1")).balance == 99


async def test_a_failover_to_a_replica_that_lacked_writes_is_noticed(
    primary_and_replica: tuple[RedisProcess, RedisProcess],
    clients: tuple[Redis, Redis],
    keys: Keys,
) -> None:
    """The ledger talks to "Redis" through a proxy; the failover points the proxy at the
    replica, which had stopped replicating before the last acknowledged gift."""
    on_primary, on_replica = clients
    _, replica = primary_and_replica
    proxy = CuttableProxy(on_primary.connection_pool.connection_kwargs["port"])
    await proxy.start()
    through = Redis.from_url(proxy.url)
    try:
        ledger = await _ledger(through, keys, replicas=0)  # asynchronous replication
        watch = LedgerWatch(ledger)
        await watch.prime()
        await gift(ledger, "g1")
        await on_primary.set("sync-probe", "2")
        assert await on_primary.wait(1, 5000) == 1  # the replica has g1
        await on_replica.replicaof("NO", "ONE")  # the replica falls behind for good
        lost = await gift(ledger, "g2")  # acknowledged by the primary only
        assert await watch.check() == []
        proxy.target_port = replica.port  # the failover
        proxy.cut_all()
        for attempt in range(50):  # the promoted replica takes new gifts at once
            try:
                await gift(ledger, "g3")
                break
            except UnavailableError:  # the connections the failover cut
                await asyncio.sleep(0.05 * (attempt + 1))
        problems = await _check_until_reachable(watch)
        assert len(problems) == 1 and f"ledger entry {lost.transfer_id}" in problems[0]
        assert "is missing" in problems[0]
    finally:
        await through.aclose()
        await proxy.stop()


async def _check_until_reachable(watch: LedgerWatch) -> list[str]:
    for attempt in range(50):
        try:
            return await watch.check()
        except UnavailableError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("Redis stayed unavailable")
