"""Fixtures of the Redis Cluster tests: a loopback 3-primary + 3-replica cluster.

``redis_cluster`` (in ``tests/conftest.py``, as the backend-parametrised suites use it too) is
shared by the whole session (forming one takes a few seconds); tests isolate themselves by
key prefix (the shared ``keys`` fixture) and must leave it healthy.
A test that kills nodes takes ``own_cluster`` instead, so the shared one stays intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import RedisCluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of the test's own, which it may kill nodes of."""
    cluster = RedisCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()
