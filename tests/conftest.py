"""Shared fixtures: a real redis-server and a real PostgreSQL started by the tests, each on a
free port in a temp dir (never the machine's shared ones on 6379 and 5432)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from server.record.connection import RecordPool, open_record
from server.record.embedded import PostgresProcess
from tests.support.backends import Backend, ClusterBackend, SingleBackend
from tests.support.cluster import RedisCluster
from tests.support.ledgers import AnyLedger, OpenLedger, close, open_cluster, open_single

RERUN_REPORT_CHARS = 4000


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What each rerun test failed with the first time (pytest-rerunfailures lists only
    their names): a flake that passed on its rerun is still a defect to find, and a CI log
    is often all there is of it."""
    for report in terminalreporter.stats.get("rerun", []):
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        terminalreporter.write_sep("-", f"first failure of rerun {report.nodeid}")
        terminalreporter.write_line(text[-RERUN_REPORT_CHARS:])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One redis-server for the whole session; tests isolate themselves by key prefix."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One 3-primary + 3-replica loopback cluster for the session (started on first use).

    No test kills its nodes (they use ``own_cluster``), so its node timeout is long: on two
    busy cores a node that misses heartbeats for 2 s would be failed over for nothing, and
    the next test would meet ``CLUSTERDOWN``."""
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), node_timeout_ms=6000)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(session_cluster: RedisCluster) -> RedisCluster:
    """The session's cluster, healthy (every slot served, replicas in sync) as the test starts."""
    session_cluster.wait_ok()
    return session_cluster


@pytest.fixture(params=["single", "cluster"])
async def backend(request: pytest.FixtureRequest, keys: Keys) -> AsyncIterator[Backend]:
    """The realtime suites' store, both ways: one redis-server (pub/sub) or the loopback
    cluster (sharded pub/sub). ``tests/support/backends.py``."""
    if request.param == "single":
        server: RedisProcess = request.getfixturevalue("redis_server")
        opened: Backend = await SingleBackend.open(server.url, keys)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        opened = await ClusterBackend.open(cluster.startup_urls, keys)
    yield opened
    await opened.aclose()


@pytest.fixture(params=["single", "cluster"])
async def open_any_ledger(request: pytest.FixtureRequest, keys: Keys) -> AsyncIterator[OpenLedger]:
    """The ledger suites' store, both ways: ``await open_any_ledger(limits=None)`` gives a
    started ``Ledger`` on the session's redis-server, or a ``ClusterLedger`` on the session's
    loopback cluster, with the catalog prepared, on this test's key prefix; each call opens
    another one (another process's connections), closed at teardown.
    ``tests/support/ledgers.py``."""
    opened: list[AnyLedger] = []
    if request.param == "single":
        server: RedisProcess = request.getfixturevalue("redis_server")
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")

    async def open_ledger(limits: Limits | None = None) -> AnyLedger:
        if request.param == "single":
            ledger: AnyLedger = await open_single(server.url, keys, limits)
        else:
            ledger = await open_cluster(cluster, keys, limits)
        opened.append(ledger)
        return ledger

    yield open_ledger
    for ledger in opened:
        await close(ledger)


@pytest.fixture
async def any_ledger(open_any_ledger: OpenLedger) -> AnyLedger:
    """One started ledger on each store (``open_any_ledger``)."""
    return await open_any_ledger()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of the test's own, which it may kill, restart or starve of memory."""
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture
def limits() -> Limits:
    # Generous rate limits so that tests of other rules are not throttled, and no payout
    # hold, so that they may cash out what they earn at once (test_hold.py tests the hold).
    return Limits(gifts_per_s_max=100_000, gift_burst_max=100_000, payout_hold_days=0)


@pytest.fixture
async def ledger(redis: Redis, keys: Keys, limits: Limits) -> Ledger:
    ledger = Ledger(redis, keys=keys, limits=limits)
    await ledger.prepare(load_catalog())
    return ledger


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    """One PostgreSQL for the whole session (started on first use); each test that asks
    for ``database_url`` gets a database of its own in it."""
    server = PostgresProcess(tmp_path_factory.mktemp("postgres"), fsync=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres_server: PostgresProcess) -> Iterator[str]:
    """A fresh, empty database of this test's own, dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresProcess]:
    """A PostgreSQL of the test's own, which it may kill and restart."""
    server = PostgresProcess(tmp_path / "postgres", fsync=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def record_pool(database_url: str) -> AsyncIterator[RecordPool]:
    """A pool on this test's own database, its schema migrated."""
    pool = await open_record(database_url)
    yield pool
    await pool.close()
