"""How the demo pages look, in a real headless Chromium, needing no emoji font.

Every gift tile shows its own shipped SVG; on a phone (390×844) the stage and the gift panel
share the first screen and a big gift's caption stays off the strip; the pages are
screenshotted (into GIFTWIRE_SCREENSHOTS_DIR when set, for a look by eye, else a temp dir).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.browser import (
    PHONE,
    STREAM,
    WIDE,
    Pages,
    assert_art_loaded,
    assert_in_first_viewport,
    assert_no_emoji,
    box,
    needs_chromium,
    settled,
)
from tests.support.servers import ServerProcess, http_json, token

CREATOR = "maya"
CREATOR_NAME = "Maya Lin"
GIFTS = len(load_catalog().gifts)  # every tile, one per catalog gift

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def screenshot(page: Page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not an empty canvas


async def _go_live(server: ServerProcess, ledger: Ledger, *viewers: tuple[str, int]) -> None:
    """Start the stream as the creator would (HTTP, a token whose name is CREATOR_NAME)."""
    status, body = http_json(
        "POST",
        f"{server.http}/api/streams",
        {"stream_id": STREAM, "title": "Friday night karaoke"},
        bearer=token(CREATOR, Role.CREATOR, name=CREATOR_NAME),
    )
    assert status == 201, body
    for user, amount in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=amount)


async def _gift(ledger: Ledger, client_id: str, gift: str, sender: str, count: int = 1) -> None:
    await send_gift(
        ledger, client_id, sender=sender, gift_id=gift, stream=STREAM, creator=CREATOR, count=count
    )


async def test_on_a_phone_the_stage_the_panel_and_a_big_gift_share_the_first_screen(
    pages: Pages, ledger: Ledger, server: ServerProcess, shots: Path
) -> None:
    await _go_live(server, ledger, ("alice", 100_000), ("bob", 40))
    status, stream = http_json("GET", f"{server.http}/api/streams/{STREAM}")
    assert status == 200 and stream["creator_name"] == CREATOR_NAME
    bob = await pages.open("viewer", "bob", viewport=PHONE)
    await assert_art_loaded(bob, bob.locator("#gifts .gift-art"), GIFTS)

    # The host is named by its display name, and the top gifters never cover it.
    await expect(bob.get_by_test_id("host-name")).to_have_text(CREATOR_NAME)
    for i, gift in enumerate(["rose", "heart", "cap"]):
        await _gift(ledger, f"small-{i}", gift, "alice")
    await expect(bob.get_by_test_id("strip-row")).to_have_count(3)
    await expect(bob.get_by_test_id("top")).to_contain_text("Alice")
    assert not (await box(bob.get_by_test_id("host"))).overlaps(
        await box(bob.get_by_test_id("top-box"))
    )

    # A big gift plays on the stage, its caption clear of the strip.
    await _gift(ledger, "big", "lion", "alice")
    caption = bob.locator("[data-testid=big-gift][data-gift=lion] .caption")
    await expect(caption).to_be_visible()
    await assert_in_first_viewport(bob, bob.get_by_test_id("stage"))
    await assert_in_first_viewport(bob, bob.get_by_test_id("gift-panel"))
    await assert_in_first_viewport(bob, caption)
    for row in await bob.get_by_test_id("strip-row").all():
        assert not (await box(caption)).overlaps(await box(row))
    await assert_no_emoji(bob)
    await screenshot(bob, shots, "viewer-phone")

    # An error banner leaves the combo button on screen.
    await bob.get_by_test_id("gift-rose").click()
    await expect(bob.get_by_test_id("balance")).to_have_attribute("data-coins", "39")
    await bob.evaluate("() => giftwire.socket.sendGift('corgi', 1)")
    await expect(bob.get_by_test_id("error")).to_have_attribute("data-code", "insufficient_funds")
    await expect(bob.get_by_test_id("error")).to_be_visible()
    await assert_in_first_viewport(bob, bob.get_by_test_id("combo"))
    await assert_in_first_viewport(bob, bob.get_by_test_id("gift-panel"))
    await screenshot(bob, shots, "viewer-phone-error")

    # Tapping a gift Bob cannot afford opens "get coins", on screen.
    await bob.get_by_test_id("gift-corgi").click()
    await expect(bob.get_by_test_id("get-coins")).to_be_visible()
    await settled(bob.get_by_test_id("get-coins"))
    await assert_in_first_viewport(bob, bob.get_by_test_id("get-coins"))
    await screenshot(bob, shots, "viewer-phone-get-coins")
    await bob.locator("#coins-close").click()

    # Disconnected: the banner over the panel is on screen and the tiles are off.
    server.stop()
    await expect(bob.get_by_test_id("offline")).to_be_visible()
    await assert_in_first_viewport(bob, bob.get_by_test_id("offline"))
    await expect(bob.get_by_test_id("gift-rose")).to_be_disabled()
    await screenshot(bob, shots, "viewer-phone-reconnecting")


async def test_on_a_wide_screen_every_page_shows_its_artwork(
    pages: Pages, ledger: Ledger, server: ServerProcess, shots: Path
) -> None:
    await _go_live(server, ledger, ("alice", 200_000), ("carol", 1))
    viewer = await pages.open(
        "viewer", "carol", viewport=WIDE, query="&coins_url=https://pay.example/coins"
    )
    creator = await pages.open("creator", CREATOR, Role.CREATOR, viewport=WIDE)
    overlay = await pages.open("overlay", CREATOR, Role.CREATOR, query="&top=3", viewport=WIDE)
    phone_creator = await pages.open("creator", CREATOR, Role.CREATOR, viewport=PHONE)
    await assert_art_loaded(viewer, viewer.locator("#gifts .gift-art"), GIFTS)
    await expect(viewer.get_by_test_id("host-name")).to_have_text(CREATOR_NAME)
    # One coin is "1 coin"; a tile that costs more offers coins instead.
    await expect(viewer.get_by_test_id("balance")).to_have_attribute("data-coins", "1")
    await expect(viewer.locator(".wallet-sub")).to_have_text("coin · Carol")
    await expect(viewer.get_by_test_id("gift-rose")).to_have_attribute("title", "Rose: 1 coin each")
    await expect(viewer.get_by_test_id("gift-heart")).to_have_attribute("data-affordable", "true")
    await expect(viewer.get_by_test_id("gift-cap")).to_have_attribute("data-affordable", "false")
    await viewer.get_by_test_id("gift-cap").click()  # the platform's checkout, not a send
    await expect(viewer.get_by_test_id("coins-buy")).to_have_attribute(
        "href", "https://pay.example/coins"
    )
    await expect(viewer.get_by_test_id("coins-need")).to_have_text(
        "Cap costs 99 coins; you have 1 coin."
    )
    await viewer.locator("#coins-close").click()
    await viewer.evaluate("() => giftwire.socket.sendGift('cap', 1)")  # refused: 1 coin
    await expect(viewer.get_by_test_id("error")).to_have_attribute(
        "data-code", "insufficient_funds"
    )
    await assert_in_first_viewport(viewer, viewer.get_by_test_id("combo"))
    await assert_in_first_viewport(viewer, viewer.get_by_test_id("gift-panel"))

    # Six-digit coins spent: 3 Universes are 104,997 coins.
    await _gift(ledger, "u", "universe", "alice", count=3)
    await _gift(ledger, "r", "rose", "alice")
    await _gift(ledger, "w", "whale", "alice")
    for page in (creator, phone_creator):
        await expect(page.get_by_test_id("feed-row")).to_have_count(3)
        await expect(page.get_by_test_id("coins-total")).to_have_text("107,148")
        await assert_one_line(page, "coins-total")
        await assert_art_loaded(page, page.locator("#feed .gift-art"), 3)
    await expect(overlay.get_by_test_id("alert")).to_have_count(3)
    await assert_art_loaded(overlay, overlay.locator("#alerts .gift-art"), 3)
    await expect(viewer.locator("[data-testid=big-gift]")).to_be_visible()
    for page in (viewer, creator, phone_creator, overlay):
        await assert_no_emoji(page)
    await screenshot(viewer, shots, "viewer-wide")
    await screenshot(creator, shots, "creator")
    await screenshot(phone_creator, shots, "creator-phone")
    await screenshot(overlay, shots, "overlay")


async def assert_one_line(page: Page, test_id: str) -> None:
    """The element's text is on one line and not cut short."""
    lines, clipped = await page.get_by_test_id(test_id).evaluate(
        """el => {
            const range = document.createRange();
            range.selectNodeContents(el);
            const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            return [tops.size, el.scrollWidth > el.clientWidth];
        }"""
    )
    assert (lines, clipped) == (1, False)


async def test_with_reduced_motion_a_big_gift_shows_still_and_a_script_checkout_is_ignored(
    pages: Pages, ledger: Ledger, server: ServerProcess
) -> None:
    await _go_live(server, ledger, ("alice", 5_000))
    viewer = await pages.open(
        "viewer",
        "bob",
        viewport=PHONE,
        reduced_motion="reduce",
        query="&coins_url=javascript:alert(1)",
    )
    await _gift(ledger, "big", "galaxy", "alice")
    scene = viewer.locator("[data-testid=big-gift][data-gift=galaxy]")
    await expect(scene).to_be_visible()
    # Played still (no layers, no particles); frame by frame in test_big_gifts.py.
    await expect(scene).to_have_attribute("data-motion", "reduced")
    await expect(scene.locator("canvas, .layer")).to_have_count(0)
    # Only an http(s) checkout is linked: a script URL in the page's address is ignored.
    await viewer.get_by_test_id("get-coins-button").click()
    await expect(viewer.get_by_test_id("get-coins")).to_be_visible()
    await expect(viewer.get_by_test_id("coins-buy")).to_be_hidden()
