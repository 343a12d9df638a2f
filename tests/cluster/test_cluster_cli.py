"""``giftwire reconcile`` and ``giftwire relay --once`` in cluster mode, as processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from server.domain.errors import UnavailableError
from server.ledger.keys import Keys
from tests.cluster.legs import funded, gift, live_stream, open_ledger
from tests.support.cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[2]


def _giftwire(cluster: RedisCluster, keys: Keys, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GIFTWIRE_REDIS_URL": cluster.startup_urls[0],
        "GIFTWIRE_REDIS_CLUSTER": "true",
        "GIFTWIRE_KEY_PREFIX": keys.prefix,
        "GIFTWIRE_JWT_SECRET": "x" * 32,
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_reconcile_reports_pending_then_the_relay_settles_them(
    redis_cluster: RedisCluster, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await open_ledger(redis_cluster, keys.prefix)
    try:
        stream, creator = await live_stream(ledger)
        sender = await funded(ledger, 100)
        await gift(ledger, sender, stream, creator)

        async def died(transfer: object) -> object:
            raise UnavailableError("died between the legs")

        monkeypatch.setattr(ledger.credits, "credit", died)
        with pytest.raises(UnavailableError):
            await gift(ledger, sender, stream, creator, gift_id="cap")
    finally:
        await ledger.aclose()
    done = await asyncio.to_thread(_giftwire, redis_cluster, keys, "reconcile", "--json")
    assert done.returncode == 0, done.stderr
    doc = orjson.loads(done.stdout)
    assert doc["ok"] and [p["coins"] for p in doc["pending"]] == [99]
    assert doc["totals"]["transfers"] == 2
    drained = await asyncio.to_thread(_giftwire, redis_cluster, keys, "relay", "--once")
    assert drained.returncode == 0, drained.stderr
    again = await asyncio.to_thread(_giftwire, redis_cluster, keys, "reconcile", "--json")
    doc = orjson.loads(again.stdout)
    assert again.returncode == 0 and doc["ok"] and doc["pending"] == []
    assert doc["totals"]["coins_credited"] == 100
