"""The viewer page in real Chromium: the spending panel (spent today and this month, the
limits, a pending raise, a refusal in words) and the gift panel following a new catalog
version live (the `catalog` message), without a reload. Screenshots (JPEG) go to
GIFTWIRE_SCREENSHOTS_DIR when set: docs/img/spending.jpg and docs/img/catalog-live.jpg
come from here."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.domain.catalog_edits import parse_changes
from server.ledger.ledger import Ledger
from tests.support.browser import STREAM, Pages, needs_chromium

pytestmark = [pytest.mark.browser, needs_chromium]

CREATOR = "star"
SHOT_BYTES_MAX = 60_000


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _shot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.jpg"
    await page.get_by_test_id("gift-panel").screenshot(path=str(path), type="jpeg", quality=70)
    assert path.stat().st_size < SHOT_BYTES_MAX


async def _live(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Limits")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=5_000)


async def test_the_viewer_sets_limits_sees_the_spend_and_a_refusal_in_words(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger)
    alice = await pages.open("viewer", "alice", viewport=(1280, 900))
    meter = alice.get_by_test_id("spend-meter")
    await expect(meter).to_have_attribute("data-day-spent", "0")
    await alice.get_by_test_id("gift-hand_hearts").click()
    await expect(alice.get_by_test_id("balance")).to_have_attribute("data-coins", "4900")
    await expect(meter).to_have_attribute("data-day-spent", "100")
    await expect(meter).to_contain_text("Month 100")

    # Lower the daily limit: in force at once.
    await meter.click()
    sheet = alice.get_by_test_id("spending")
    await expect(sheet).to_be_visible()
    await alice.get_by_test_id("spend-day-input").fill("150")
    await alice.get_by_test_id("spend-save").click()
    result = alice.get_by_test_id("spend-result")
    await expect(result).to_contain_text("New daily limit: 150 coins, in force now.")
    await expect(alice.get_by_test_id("spend-day")).to_contain_text("100 of 150 coins")
    await alice.locator("#spend-close").click()

    # The next Hand Hearts would pass it: refused, said in words, nothing charged.
    await alice.get_by_test_id("gift-hand_hearts").click()
    error = alice.get_by_test_id("error")
    await expect(error).to_have_attribute("data-code", "spending_limit")
    await expect(error).to_contain_text(
        "100 coins spent in the last 24 hours, your limit is 150 coins"
    )
    await expect(alice.get_by_test_id("balance")).to_have_attribute("data-coins", "4900")

    # Raise it: pending for the cooling-off, the old limit still in force.
    await meter.click()
    await alice.get_by_test_id("spend-day-input").fill("1000")
    await alice.get_by_test_id("spend-month-input").fill("3000")
    await alice.get_by_test_id("spend-save").click()
    await expect(result).to_contain_text("rises to 1,000 coins")
    await expect(result).to_contain_text("New monthly limit: 3,000 coins, in force now.")
    pending = alice.get_by_test_id("spend-day").locator("[data-role=pending]")
    await expect(pending).to_contain_text("Raise to 1,000 coins from")
    await expect(pending).to_contain_text("(in 24 h 0 min)")
    await expect(meter).to_contain_text("raise pending")
    status = await ledger.spending.show("alice")
    assert status.day.limit_coins == 150 and status.day.pending is not None
    await _shot(alice, shots, "spending")

    # A minor's cap, set by the platform: shown, and a limit above it refused in words.
    await ledger.spending.protect("alice", minor=True, day_cap=120, month_cap=600)
    await alice.locator("#spend-close").click()
    await meter.click()
    await expect(alice.get_by_test_id("spend-minor")).to_contain_text("120 coins a day")
    await alice.get_by_test_id("spend-month-input").fill("5000")
    await alice.get_by_test_id("spend-save").click()
    await expect(result).to_contain_text("caps this account's monthly spending at 600 coins")


async def test_the_gift_panel_follows_a_new_catalog_live(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger)
    alice = await pages.open("viewer", "alice", viewport=(1280, 900))
    grid = alice.get_by_test_id("gift-grid")
    await expect(grid).to_have_attribute("data-version", "1")
    await expect(alice.get_by_test_id("gift-rose")).to_contain_text("1")
    changes = parse_changes(
        [
            {"op": "reprice", "id": "rose", "price_coins": 3},
            {"op": "add", "gift": {"id": "comet", "name": "Comet", "price_coins": 42, "tier": 2}},
            {"op": "retire", "id": "heart"},
        ]
    )
    await ledger.catalogs.edit(changes, expected_version=1)  # as an admin's edit would
    # The server follows the version and tells the page: no reload, no tap needed.
    await expect(grid).to_have_attribute("data-version", "2")
    await expect(alice.get_by_test_id("gift-rose")).to_contain_text("3")
    await expect(alice.get_by_test_id("gift-comet")).to_contain_text("42")
    await expect(alice.get_by_test_id("gift-heart")).to_have_count(0)
    await expect(alice.get_by_test_id("error")).to_contain_text("gifts and prices were updated")
    await _shot(alice, shots, "catalog-live")
    # Tapped now, the rose is charged the price shown: 3.
    await alice.get_by_test_id("gift-rose").click()
    await expect(alice.get_by_test_id("balance")).to_have_attribute("data-coins", "4997")


async def test_the_admin_page_reprices_a_gift_and_the_viewer_page_follows(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger)
    alice = await pages.open("viewer", "alice")
    admin = await pages.open("admin", "ops", Role.ADMIN, wait_live=False, viewport=(1280, 720))
    await expect(admin.get_by_test_id("version")).to_have_attribute("data-version", "1")
    await admin.get_by_test_id("price-rose").fill("4")
    await admin.get_by_test_id("reprice-rose").click()
    await expect(admin.get_by_test_id("version")).to_have_attribute("data-version", "2")
    await admin.get_by_test_id("retire-heart").click()
    await expect(admin.get_by_test_id("version")).to_have_attribute("data-version", "3")
    await expect(alice.get_by_test_id("gift-grid")).to_have_attribute("data-version", "3")
    await expect(alice.get_by_test_id("gift-rose")).to_contain_text("4")
    await expect(alice.get_by_test_id("gift-heart")).to_have_count(0)
    # A scheduled edit is listed until its time, and can be cancelled.
    await admin.get_by_test_id("when-mode").select_option("at")
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    await admin.get_by_test_id("when-at").fill(later.strftime("%Y-%m-%dT12:00"))
    await admin.get_by_test_id("reprice-cap").click()
    scheduled = admin.get_by_test_id("scheduled")
    await expect(scheduled).to_contain_text("cap → 99")
    assert len(await ledger.catalogs.scheduled()) == 1
    await admin.get_by_test_id("minor-user").fill("alice")
    await admin.get_by_test_id("minor-day").fill("300")
    await admin.get_by_test_id("minor-mark").click()
    await expect(admin.get_by_test_id("minor-status")).to_contain_text("alice is a minor: caps 300")
    path = shots / "admin.jpg"
    await admin.screenshot(path=str(path), type="jpeg", quality=60)
    assert path.stat().st_size < SHOT_BYTES_MAX * 2
    await scheduled.get_by_role("button", name="Cancel").click()
    await expect(scheduled).to_contain_text("Nothing scheduled.")
    assert await ledger.catalogs.scheduled() == []
    # A token that is not an admin's gets nothing.
    viewer = await pages.open("admin", "bob", wait_live=False)
    await expect(viewer.get_by_test_id("error")).to_contain_text("needs an admin token")
