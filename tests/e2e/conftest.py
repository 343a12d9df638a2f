from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, STREAM, Pages
from tests.support.servers import ServerProcess, running

# Rate limits high enough that tests of other behaviour are never throttled.
FAST = {
    "GIFTWIRE_GIFTS_PER_S_MAX": "10000",
    "GIFTWIRE_GIFT_BURST_MAX": "10000",
    "GIFTWIRE_MESSAGES_PER_S_MAX": "10000",
}


@pytest.fixture
def two_servers(
    redis_server: RedisProcess, keys: Keys, tmp_path: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with running(redis_server.url, keys.prefix, tmp_path, count=2, **FAST) as (a, b):
        yield a, b


@pytest.fixture
def server(redis_server: RedisProcess, keys: Keys, tmp_path: Path) -> Iterator[ServerProcess]:
    with running(redis_server.url, keys.prefix, tmp_path, **FAST) as (process,):
        yield process


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def pages(browser: Browser, server: ServerProcess) -> AsyncIterator[Pages]:
    opened = Pages(browser, server, STREAM)
    yield opened
    assert opened.errors == []
