"""One catalog for every process: two real servers started with different catalog files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from playwright.async_api import expect
from redis.asyncio import Redis

from server.domain.catalog import parse_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.e2e.conftest import FAST
from tests.e2e.test_redis_fitness import _serve_once
from tests.support.browser import STREAM as BROWSER_STREAM
from tests.support.browser import Pages, needs_chromium
from tests.support.servers import REPO, ServerProcess, client, http_json, token

STREAM = "cat1"
CREATOR = "star"


@pytest.fixture
def server(redis_server: RedisProcess, keys: Keys, tmp_path: Path) -> Iterator[ServerProcess]:
    """The page's server, checking Redis seldom: it must not follow the test's push (and
    send the page a `catalog` message) before the tap that the test wants refused. The
    live message has its own test (test_spending_pages.py)."""
    process = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, **FAST, GIFTWIRE_REDIS_CHECK_INTERVAL_S="60"
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


def _file(tmp_path: Path, name: str, rose_coins: int, rose_name: str) -> Path:
    path = tmp_path / f"{name}.json"
    gifts = [
        {"id": "rose", "name": rose_name, "price_coins": rose_coins, "tier": 1},
        {"id": "lion", "name": "Lion", "price_coins": 29999, "tier": 4},
    ]
    path.write_bytes(orjson.dumps({"version": 1, "gifts": gifts}))
    return path


def _push(redis_url: str, prefix: str, path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "catalog", "push", str(path)],
        cwd=REPO,
        env={**os.environ, "GIFTWIRE_REDIS_URL": redis_url, "GIFTWIRE_KEY_PREFIX": prefix},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _catalog(server: ServerProcess) -> tuple[int, dict[str, int]]:
    status, body = http_json("GET", server.http + "/api/catalog")
    assert status == 200
    return body["version"], {g["id"]: g["price_coins"] for g in body["gifts"]}


async def test_two_processes_with_different_files_serve_and_charge_one_catalog(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> None:
    cheap = _file(tmp_path, "cheap", 1, "Rose")
    dear = _file(tmp_path, "dear", 500, "Red Rose")
    env = {**FAST, "GIFTWIRE_REDIS_CHECK_INTERVAL_S": "0.2"}
    first = ServerProcess(
        redis_server.url, keys.prefix, tmp_path, GIFTWIRE_CATALOG_PATH=str(cheap), **env
    )
    second = ServerProcess(redis_server.url, keys.prefix, tmp_path, **env)
    redis = Redis.from_url(redis_server.url)
    try:
        first.start()  # the first writer: its file becomes version 1
        # A process started with another file does not overwrite it: it refuses, in one line.
        code, output = _serve_once(redis_server.url, keys.prefix, GIFTWIRE_CATALOG_PATH=str(dear))
        assert code == 4 and "Traceback" not in output, output
        refusal = [line for line in output.splitlines() if "refusing to start" in line]
        assert len(refusal) == 1 and "giftwire catalog push" in refusal[0], output
        second.start()  # no file: it serves what Redis holds
        assert _catalog(first) == _catalog(second) == (1, {"rose": 1, "lion": 29999})

        ledger = Ledger(redis, keys=keys, limits=Limits())
        await ledger.runner.prepare()
        await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
        await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=10_000)

        async with (
            client(first, STREAM, token("alice")) as sender,
            client(first, STREAM, token("viewer")) as viewer,
        ):
            await sender.send(
                {"type": "send_gift", "id": "g1", "gift": "rose", "catalog_version": 1}
            )
            assert (await sender.recv_type("gift_ack"))["coins"] == 1

            # The operator's explicit change: both processes follow it.
            assert "version 2 is current" in _push(redis_server.url, keys.prefix, dear)
            assert _catalog(first) == _catalog(second) == (2, {"rose": 500, "lion": 29999})

            # A client still showing version 1 is refused, not charged 500.
            await sender.send(
                {"type": "send_gift", "id": "g2", "gift": "rose", "catalog_version": 1}
            )
            error = await sender.recv_type("error")
            assert error["id"] == "g2" and error["code"] == "catalog_changed"
            assert error["detail"] == {"catalog_version": 2}
            assert (await ledger.balance("alice")).coins == 9_999
            await sender.send(
                {"type": "send_gift", "id": "g2", "gift": "rose", "catalog_version": 2}
            )
            ack = await sender.recv_type("gift_ack")
            assert (ack["coins"], ack["balance"]) == (500, 9_499)
            # The room's display names follow the new version too.
            events = await viewer.gifts(2)
            assert [e["gift_name"] for e in events] == ["Rose", "Red Rose"]
        await asyncio.to_thread(first.stop)
        # The first process' file is no longer current: started again with it, it refuses.
        code, output = _serve_once(redis_server.url, keys.prefix, GIFTWIRE_CATALOG_PATH=str(cheap))
        assert code == 4 and "version 2" in output, output
    finally:
        await redis.aclose()
        first.stop()
        second.stop()


@pytest.mark.browser
@needs_chromium
async def test_the_viewer_page_is_never_charged_a_price_it_did_not_show(
    pages: Pages, ledger: Ledger
) -> None:
    await ledger.start_stream(stream_id=BROWSER_STREAM, creator_id=CREATOR, title="prices")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=2000)
    alice = await pages.open("viewer", "alice")
    balance = alice.get_by_test_id("balance")
    await expect(balance).to_have_attribute("data-coins", "2000")
    rose = alice.get_by_test_id("gift-rose")
    await expect(rose).to_contain_text("1")
    dear = parse_catalog(
        orjson.dumps({"gifts": [{"id": "rose", "name": "Rose", "price_coins": 7}]})
    )
    assert (await ledger.catalogs.push(dear)).version == 2
    await rose.click()  # the page still shows 1 coin: refused, not charged 7
    await expect(alice.get_by_test_id("error")).to_contain_text("Prices changed")
    await expect(rose).to_contain_text("7")  # the page fetched the new catalog
    await expect(balance).to_have_attribute("data-coins", "2000")
    await rose.click()
    await expect(balance).to_have_attribute("data-coins", "1993")
