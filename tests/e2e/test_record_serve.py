"""The record inside `giftwire serve` and `giftwire demo`: the archiver runs in the server,
with GIFTWIRE_DATABASE_URL or, when Redis is embedded too, an embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
from redis.asyncio import Redis

from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess, free_port
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.record_helpers import mixed_transfers
from tests.support.servers import REPO, ServerProcess


def _recorded(database_url: str) -> set[str]:
    try:
        with psycopg.connect(database_url, connect_timeout=2) as conn:
            rows = conn.execute("SELECT log_ms, log_seq FROM transfers").fetchall()
    except psycopg.errors.UndefinedTable:
        return set()
    return {f"{ms}-{seq}" for ms, seq in rows}


async def _until_recorded(database_url: str, want: set[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := await asyncio.to_thread(_recorded, database_url)) != want:
        assert time.monotonic() < deadline, f"recorded {len(got)} of {len(want)}"
        await asyncio.sleep(0.1)


async def test_serve_archives_into_the_database_it_is_given(
    redis_server: RedisProcess, keys: Keys, limits: Limits, database_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, GIFTWIRE_DATABASE_URL=database_url
    )
    server.start()
    try:
        redis = Redis.from_url(redis_server.url)
        ledger = Ledger(redis, keys=keys, limits=limits)
        await ledger.prepare(load_catalog())
        ids = await mixed_transfers(ledger, 300, gifters=2, concurrency=20)
        await _until_recorded(database_url, ids)
        await redis.aclose()
    finally:
        server.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_demo_starts_an_embedded_postgresql_and_archives_into_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIFTWIRE_")}
    env["GIFTWIRE_DATA_DIR"] = str(tmp_path / "data")
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "demo", "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        pg_port = int((tmp_path / "data" / "postgres" / "postgres.port").read_text())
        url = f"postgresql://giftwire@127.0.0.1:{pg_port}/giftwire"
        # The demo's seed is three top-ups: each in the record.
        deadline = time.monotonic() + 30
        while len(_recorded(url)) < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "embedded PostgreSQL at" in log.read_text()
    finally:
        process.terminate()
        process.wait(30)
    assert not (tmp_path / "data" / "postgres" / "postgres.port").exists()
    assert not _accepts(pg_port)
