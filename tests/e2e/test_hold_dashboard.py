"""The creator dashboard shows held vs withdrawable diamonds (the payout hold) and the
month's statement per stream and day, with what chargebacks clawed back, in Chromium.

The screenshot goes to GIFTWIRE_SCREENSHOTS_DIR when set (``docs/img/creator-hold.png`` was
made that way), else to a temp dir.
"""

from __future__ import annotations

import asyncio
import os
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
from tests.integration.test_hold import _age
from tests.support.browser import STREAM, Pages, needs_chromium
from tests.support.servers import ServerProcess, running

pytestmark = [pytest.mark.browser, needs_chromium]
CREATOR = "maker"
HOLD_DAYS = 7


@pytest.fixture
def hold_server(
    redis_server: RedisProcess, keys: Keys, database_url: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    env = {"GIFTWIRE_DATABASE_URL": database_url, "GIFTWIRE_PAYOUT_HOLD_DAYS": str(HOLD_DAYS)}
    with running(redis_server.url, keys.prefix, tmp_path, **env, **FAST) as (process,):
        yield process


@pytest.fixture
async def hold_pages(browser: Browser, hold_server: ServerProcess) -> AsyncIterator[Pages]:
    opened = Pages(browser, hold_server, STREAM)
    yield opened
    assert opened.errors == []


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _books(redis: Redis, keys: Keys, database_url: str) -> None:
    """10,000 diamonds past the hold, 5,000 held, and a chargeback that clawed 5,000 back."""
    ledger = Ledger(redis, keys=keys, limits=Limits(gifts_per_s_max=1000, gift_burst_max=1000))
    await ledger.prepare(load_catalog())
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="t")
    ids = {(await ledger.top_up(payment_id="p-bob", user_id="bob", coins=30_000)).transfer_id}
    ids.add((await ledger.top_up(payment_id="p-eve", user_id="eve", coins=10_000)).transfer_id)
    for n in range(2):
        ids.add((await gift(ledger, f"b{n}", sender="bob", gift_id="interstellar",
                            stream=STREAM, creator=CREATOR)).transfer_id)  # fmt: skip
    await _age(redis, keys, HOLD_DAYS + 1)
    ids.add((await gift(ledger, "e0", sender="eve", gift_id="interstellar", stream=STREAM,
                        creator=CREATOR)).transfer_id)  # fmt: skip
    ids.add((await gift(ledger, "b2", sender="bob", gift_id="interstellar", stream=STREAM,
                        creator=CREATOR)).transfer_id)  # fmt: skip
    refund = await ledger.refund(payment_id="p-eve", user_id="eve", refund_id="r1", coins=10_000)
    assert refund.reversed == 10_000
    deadline = time.monotonic() + 30
    while len(ids - await asyncio.to_thread(_recorded, database_url)) > 0:
        assert time.monotonic() < deadline, "the transfers were never archived"
        await asyncio.sleep(0.1)
    for _ in range(300):  # the refund and its clawback: two entries after the last id
        if len(await asyncio.to_thread(_recorded, database_url)) >= len(ids) + 2:
            break
        await asyncio.sleep(0.1)


async def test_the_dashboard_shows_held_withdrawable_and_the_statement(
    hold_pages: Pages, redis_server: RedisProcess, keys: Keys, database_url: str, shots: Path,
) -> None:  # fmt: skip
    redis = Redis.from_url(redis_server.url)
    try:
        await _books(redis, keys, database_url)
    finally:
        await redis.aclose()
    page = await hold_pages.open("creator", CREATOR, Role.CREATOR)
    await expect(page.get_by_test_id("hold")).to_be_visible()
    await expect(page.get_by_test_id("wallet")).to_have_text("15,000")
    await expect(page.get_by_test_id("wallet-withdrawable")).to_have_text("10,000")
    await expect(page.get_by_test_id("wallet-held")).to_have_text("5,000")
    await expect(page.get_by_test_id("wallet-release")).to_contain_text("next release")
    await expect(page.get_by_test_id("statement")).to_be_visible()
    rows = page.get_by_test_id("statement-rows").locator("tbody tr")
    await expect(rows).to_have_count(1)  # one stream, one day
    await expect(rows.first.locator("td").nth(1)).to_have_text(STREAM)
    await expect(rows.first.locator("td").nth(2)).to_have_text("4")
    await expect(rows.first.locator("td").nth(3)).to_have_text("20,000")
    await expect(page.get_by_test_id("statement-clawbacks")).to_contain_text("5,000")
    shot = shots / "creator-hold.png"
    await page.locator(".controls").screenshot(path=str(shot))
    assert shot.stat().st_size > 5_000  # a rendered panel, not an empty box
