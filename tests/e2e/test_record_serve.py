"""The record inside `giftwire serve` and `giftwire demo`: the archiver runs in the server,
with GIFTWIRE_DATABASE_URL or, when Redis is embedded too, an embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import psycopg
from redis.asyncio import Redis

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess, free_port
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import CREATOR, STREAM
from tests.integration.record_helpers import mixed_transfers
from tests.support.servers import REPO, ServerProcess, token


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


def _get(url: str, bearer: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


async def test_history_and_statements_over_http_and_the_cli(
    redis_server: RedisProcess, keys: Keys, limits: Limits, database_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, GIFTWIRE_DATABASE_URL=database_url
    )
    server.start()
    redis = Redis.from_url(redis_server.url)
    try:
        ledger = Ledger(redis, keys=keys, limits=limits)
        await ledger.prepare(load_catalog())
        ids = await mixed_transfers(ledger, 120, gifters=2, concurrency=10)
        await _until_recorded(database_url, ids)
        viewer, creator = token("g1-0"), token(CREATOR, Role.CREATOR)

        seen: list[str] = []
        before = ""
        while True:
            status, _, body = await asyncio.to_thread(
                _get, f"{server.http}/api/me/transactions?limit=25{before}", viewer
            )
            assert status == 200, body
            page = orjson.loads(body)
            seen += [item["transfer_id"] for item in page["transactions"]]
            if page["next_before"] is None:
                break
            before = f"&before={page['next_before']}"
        mine = [i for i in ids if i in set(seen)]
        assert len(seen) == len(set(seen)) == len(mine) > 25
        assert seen == sorted(seen, key=lambda i: tuple(int(p) for p in i.split("-")))[::-1]

        month = time.strftime("%Y-%m", time.gmtime())
        url = f"{server.http}/api/creators/me/statements?month={month}"
        status, _, body = await asyncio.to_thread(_get, url, creator)
        doc = orjson.loads(body)
        stream = await ledger.stream(STREAM)
        assert stream is not None
        assert (status, doc["totals"]["diamonds"]) == (200, stream.diamonds_total)
        status, kind, csv_body = await asyncio.to_thread(_get, url + "&format=csv", creator)
        assert (status, kind.split(";")[0]) == (200, "text/csv")
        total = csv_body.decode().splitlines()[-4].split(",")
        assert total[0] == "total" and int(total[4]) == stream.diamonds_total
        for bad, code in [("?month=2026-13", 400), ("?year=26", 400), ("", 400)]:
            status, _, body = await asyncio.to_thread(
                _get, f"{server.http}/api/creators/me/statements{bad}", creator
            )
            assert (status, orjson.loads(body)["error"]["code"]) == (code, "invalid_request"), body
        status, _, body = await asyncio.to_thread(_get, url, viewer)
        assert (status, orjson.loads(body)["error"]["code"]) == (403, "forbidden")
        status, _, body = await asyncio.to_thread(
            _get, f"{server.http}/api/me/transactions?before=nope", viewer
        )
        assert (status, orjson.loads(body)["error"]["code"]) == (400, "invalid_request")

        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "server.cli", "statement", "--creator", CREATOR,
             "--month", month, "--csv"],
            cwd=REPO, env={**server.env}, capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        assert cli.stdout == csv_body
    finally:
        await redis.aclose()
        server.stop()


def test_without_a_record_the_endpoints_are_unavailable(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> None:
    server = ServerProcess(redis_server.url, keys.prefix, tmp_path)
    server.start()
    try:
        status, _, body = _get(f"{server.http}/api/me/transactions", token("alice"))
        assert (status, orjson.loads(body)["error"]["code"]) == (503, "unavailable")
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _archiver_of(server: ServerProcess) -> int:
    assert server.process is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for child in _children(server.process.pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"archive" in cmdline:
                return child
        time.sleep(0.05)
    raise AssertionError("serve started no archiver")


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def test_serves_archiver_is_restarted_after_kill_9_and_dies_with_serve(
    redis_server: RedisProcess, keys: Keys, limits: Limits, database_url: str, tmp_path: Path
) -> None:
    server = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, GIFTWIRE_DATABASE_URL=database_url
    )
    server.start()
    redis = Redis.from_url(redis_server.url)
    try:
        ledger = Ledger(redis, keys=keys, limits=limits)
        await ledger.prepare(load_catalog())
        first = _archiver_of(server)
        os.kill(first, signal.SIGKILL)
        ids = await mixed_transfers(ledger, 100, gifters=2, concurrency=10)
        # The restarted archiver waits out the dead one's lease (10 s), then takes over.
        await _until_recorded(database_url, ids, timeout_s=60)
        second = _archiver_of(server)
        assert second != first
        server.kill()
        deadline = time.monotonic() + 20
        while not _gone(second):
            assert time.monotonic() < deadline, "the archiver outlived serve"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
        server.stop()
