"""The creator dashboard shows this month's earnings from the durable record, and hands
over the CSV statement; without a record it shows nothing of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from redis.asyncio import Redis

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.e2e.conftest import FAST
from tests.e2e.test_record_serve import _recorded
from tests.integration.helpers import gift
from tests.support.browser import STREAM, Pages, needs_chromium
from tests.support.servers import ServerProcess, running

pytestmark = [pytest.mark.browser, needs_chromium]
CREATOR = "maker"


@pytest.fixture
def record_server(
    redis_server: RedisProcess, keys: Keys, database_url: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    env = {"GIFTWIRE_DATABASE_URL": database_url, **FAST}
    with running(redis_server.url, keys.prefix, tmp_path, **env) as (process,):
        yield process


@pytest.fixture
async def record_pages(browser: Browser, record_server: ServerProcess) -> AsyncIterator[Pages]:
    opened = Pages(browser, record_server, STREAM)
    yield opened
    assert opened.errors == []


async def test_the_dashboard_shows_the_months_earnings_and_the_csv(
    record_pages: Pages, redis_server: RedisProcess, keys: Keys, limits: Limits,
    database_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    redis = Redis.from_url(redis_server.url)
    try:
        ledger = Ledger(redis, keys=keys, limits=limits)
        await ledger.prepare(load_catalog())
        await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
        await ledger.top_up(payment_id="p-bob", user_id="bob", coins=100_000)
        ids = {(await gift(ledger, f"g{i}", sender="bob", gift_id="cap", stream=STREAM,
                           creator=CREATOR)).transfer_id for i in range(7)}  # fmt: skip
        deadline = time.monotonic() + 30
        while not ids <= await asyncio.to_thread(_recorded, database_url):
            assert time.monotonic() < deadline, "the gifts were never archived"
            await asyncio.sleep(0.1)
        stream = await ledger.stream(STREAM)
        assert stream is not None
    finally:
        await redis.aclose()
    page = await record_pages.open("creator", CREATOR, Role.CREATOR)
    statement = page.get_by_test_id("statement")
    await expect(statement).to_be_visible()
    await expect(page.locator("#statement-diamonds")).to_have_text(f"{stream.diamonds_total:,}")
    cents = stream.diamonds_total * 50 // 100
    await expect(page.locator("#statement-cash")).to_have_text(f"${cents / 100:.2f}")
    async with page.expect_download() as downloading:
        await page.get_by_test_id("statement-csv").click()
    download = await downloading.value
    saved = tmp_path / "statement.csv"
    await download.save_as(saved)
    rows = {line.split(",")[0]: line.split(",") for line in saved.read_text().splitlines()}
    assert int(rows["total"][4]) == stream.diamonds_total


async def test_without_a_record_the_dashboard_shows_no_statement(
    pages: Pages, ledger: Ledger
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    page = await pages.open("creator", CREATOR, Role.CREATOR)
    await expect(page.get_by_test_id("wallet")).not_to_have_text("…")
    await expect(page.get_by_test_id("statement")).to_be_hidden()
