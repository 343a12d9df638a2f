"""A script that cannot run, or fails partway, while a live server uses it (issue item 4).

The ledger-level proofs are in the integration tests: every script under a starved Redis
(``tests/integration/test_runner.py::test_out_of_memory_refuses_the_whole_script``) and
every key a script writes corrupted so that the script errors before its first write
(``test_corrupt_key_fails_before_any_write`` in ``test_send_gift.py``, ``test_top_up.py``,
``test_refund.py``, ``test_cash_out.py``, ``test_streams.py``). These add what a client of a
running server sees: the error code on the wire, the connection's fate, and a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.integration.helpers import snapshot
from tests.reliability.conftest import Books, Spawn
from tests.reliability.helpers import (
    Peer,
    assert_books_hold,
    open_stream,
    settle,
)
from tests.support.servers import token


@pytest.fixture
def starved_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "starved", maxmemory="64mb")
    server.start()
    yield server
    server.stop()


async def _written(redis: Redis, keys: Keys) -> dict[bytes, object]:
    """What the scripts write: every key but presence (``…:viewers``), which the server
    updates as connections come, refresh and go, a closed one included."""
    return {k: v for k, v in (await snapshot(redis, keys)).items() if not k.endswith(b":viewers")}


async def test_out_of_memory_is_unavailable_on_the_wire_and_the_retry_applies_once(
    books: Books, starved_redis: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(starved_redis.url)
    await open_stream(ledger, ("alice", 1_000))
    server = spawn(starved_redis.url)
    alice = await Peer.open(server, token("alice"))
    viewer = await Peer.open(server, token("viewer"))
    try:
        # Below what Redis holds already: every write is refused, whatever it frees meanwhile.
        await ledger.redis.config_set("maxmemory", "1mb")
        with pytest.raises(redis_errors.OutOfMemoryError):
            await ledger.redis.set("probe", "x")
        before = await _written(ledger.redis, keys)
        ids = [f"oom-{i}" for i in range(5)]
        for client_id in ids:
            await alice.send_gift(client_id, "perfume")
        await alice.wait_replies(ids)
        # Redis refused to run the script at all: nothing written, and the client is told
        # to retry rather than that the gift failed.
        assert {alice.errors[i][-1]["code"] for i in ids} == {"unavailable"}
        assert await _written(ledger.redis, keys) == before
        await asyncio.sleep(1.5)  # three stats ticks while Redis refuses writes
        assert not alice.closed.is_set() and not viewer.closed.is_set()
        await ledger.redis.config_set("maxmemory", "64mb")

        await settle(alice, ids, gift="perfume")
        assert not any(alice.acks[i]["replayed"] for i in ids)
        await viewer.wait_for(lambda: len(viewer.seqs) == 5)
        assert viewer.seqs == [1, 2, 3, 4, 5]
        # The stats loop outlived the refusals: the totals of the new gifts still come.
        await viewer.wait_for(lambda: viewer.last_stats.get("gifts") == 5, timeout_s=5)
    finally:
        await alice.close()
        await viewer.close()
    assert (await ledger.balance("alice")).coins == 1_000 - 5 * 20
    await assert_books_hold(ledger.redis, keys)


async def test_a_script_error_partway_is_internal_closes_1011_and_writes_nothing(
    books: Books, redis_server: RedisProcess, keys: Keys, spawn: Spawn
) -> None:
    ledger = await books(redis_server.url)
    await open_stream(ledger, ("alice", 1_000))
    # The invariant error is logged with its traceback, as it should be.
    server = spawn(redis_server.url, traceback_expected=True)
    alice = await Peer.open(server, token("alice"))
    try:
        await alice.send_gift("ok-1", "perfume")
        await alice.wait_replies(["ok-1"])
        # A hand edit that only the write halfway through the script would trip over.
        await ledger.redis.hset(keys.account("rel_creator"), "diamonds", "1e3")
        before = await _written(ledger.redis, keys)
        await alice.send_gift("broken-1", "perfume")
        await alice.wait_for(alice.closed.is_set)
        assert alice.ws.close_code == 1011
        # The outbox drops queued frames when it closes, the `internal` error included, so
        # the close is what the client gets (reported; the realtime code owns that choice).
        assert {e["code"] for e in alice.errors.get("broken-1", [])} <= {"internal"}
        assert "broken-1" not in alice.acks
        assert await _written(ledger.redis, keys) == before
    finally:
        await alice.close()
    log = server.log()
    assert "broken-1" in log and "send_gift failed" in log  # logged with the gift id
    await ledger.redis.hset(keys.account("rel_creator"), "diamonds", "10")
    await assert_books_hold(ledger.redis, keys)
