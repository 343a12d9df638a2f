"""LedgerWatch notices a Redis that lost data: restarted empty, or from an older AOF copy.

Real redis-server processes of the test's own, stopped and started on a data folder that
the test empties or swaps for an older copy, as a restore or a lost disk would.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.errors import UnavailableError
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.ledger.watch import LedgerWatch
from tests.integration.helpers import CREATOR, STREAM, gift


async def _check(watch: LedgerWatch) -> list[str]:
    """One check, retried while the client reconnects to the restarted Redis."""
    for attempt in range(50):
        try:
            return await watch.check()
        except UnavailableError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("Redis stayed unavailable")


async def _send(ledger: Ledger, client_id: str) -> None:
    for attempt in range(50):
        try:
            await gift(ledger, client_id)
            return
        except UnavailableError:
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("Redis stayed unavailable")


async def _watched(server: RedisProcess, keys: Keys) -> tuple[Ledger, LedgerWatch]:
    redis = Redis.from_url(server.url)
    ledger = Ledger(redis, keys=keys, limits=Limits(gifts_per_s_max=1000, gift_burst_max=1000))
    await ledger.prepare(load_catalog())
    watch = LedgerWatch(ledger)
    await watch.prime()
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=1000)
    return ledger, watch


def _restart(server: RedisProcess, *, data_from: Path | None = None, empty: bool = False) -> None:
    server.stop()
    if empty or data_from is not None:
        shutil.rmtree(server.data_dir)
    if data_from is not None:
        shutil.copytree(data_from, server.data_dir)
    server.start()


@pytest.fixture
async def watched(own_redis: RedisProcess, keys: Keys) -> tuple[Ledger, LedgerWatch]:
    ledger, watch = await _watched(own_redis, keys)
    yield ledger, watch  # type: ignore[misc]
    await ledger.redis.aclose()


async def test_a_restart_with_the_data_is_not_a_loss(
    own_redis: RedisProcess, watched: tuple[Ledger, LedgerWatch]
) -> None:
    ledger, watch = watched
    await _send(ledger, "g1")
    assert await _check(watch) == []
    _restart(own_redis)
    await _send(ledger, "g2")
    assert await _check(watch) == []
    # Trimming the log (as an archiver does) deletes entries on purpose: not a loss.
    await ledger.redis.xtrim(ledger.keys.ledger(), maxlen=0)
    assert await _check(watch) == [] and watch.data_loss is None


async def test_a_redis_restarted_empty_is_reported_and_gets_the_catalog_back(
    own_redis: RedisProcess, watched: tuple[Ledger, LedgerWatch], caplog: pytest.LogCaptureFixture
) -> None:
    ledger, watch = watched
    await _send(ledger, "g1")
    assert await _check(watch) == []
    _restart(own_redis, empty=True)
    problems = await _check(watch)
    assert len(problems) == 1 and problems[0].startswith("Redis lost data:")
    assert "generation marker is gone" in problems[0]
    assert "Redis lost data" in caplog.text
    assert await ledger.catalogs.version() == 1  # seeded again, same number
    # Sticky: the loss stays reported after the catalog and the marker are back.
    assert await _check(watch) == problems


async def test_an_older_copy_is_reported_even_after_new_writes(
    own_redis: RedisProcess, watched: tuple[Ledger, LedgerWatch], tmp_path: Path
) -> None:
    ledger, watch = watched
    await _send(ledger, "g1")
    own_redis.stop()  # a consistent copy of the AOF, as a backup would take
    shutil.copytree(own_redis.data_dir, tmp_path / "backup")
    own_redis.start()
    await _send(ledger, "g2")  # acknowledged after the copy
    assert await _check(watch) == []
    _restart(own_redis, data_from=tmp_path / "backup")
    # A new gift gets a newer log id than g2's: the log's last id alone would hide the loss.
    await _send(ledger, "g3")
    problems = await _check(watch)
    assert len(problems) == 1 and "seen by this process, is missing" in problems[0], problems


async def test_a_process_that_only_read_the_log_notices_too(
    own_redis: RedisProcess, keys: Keys, tmp_path: Path
) -> None:
    """A second process that acknowledged nothing itself learns the log's last id from its
    checks, and so notices a rollback of another process' writes."""
    writer, _ = await _watched(own_redis, keys)
    reader_redis = Redis.from_url(own_redis.url)
    reader = Ledger(reader_redis, keys=keys)
    try:
        await reader.prepare(load_catalog())
        watch = LedgerWatch(reader)
        await watch.prime()
        own_redis.stop()
        shutil.copytree(own_redis.data_dir, tmp_path / "backup")
        own_redis.start()
        await _send(writer, "g1")
        assert await _check(watch) == []
        _restart(own_redis, data_from=tmp_path / "backup")
        assert "is missing" in (await _check(watch))[0]
    finally:
        await writer.redis.aclose()
        await reader_redis.aclose()
