"""The demo pages' behaviour in a real headless Chromium, against a real server.

How they look (artwork, the phone layout, screenshots) is in test_pages_look.py.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.browser import STREAM, Pages, live, needs_chromium
from tests.support.servers import ServerProcess

CREATOR = "star"

pytestmark = [pytest.mark.browser, needs_chromium]


async def coins(page: Page, expected: int) -> None:
    await expect(page.get_by_test_id("balance")).to_have_attribute("data-coins", str(expected))


async def _live(ledger: Ledger, *viewers: tuple[str, int]) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Live on the web")
    for user, amount in viewers:
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=amount)


async def _gift(ledger: Ledger, client_id: str, gift: str = "rose", sender: str = "bob") -> None:
    await send_gift(ledger, client_id, sender=sender, gift_id=gift, stream=STREAM, creator=CREATOR)


async def feed_seqs(page: Page) -> list[int]:
    rows = page.get_by_test_id("feed-row")
    return [int(seq or 0) for seq in await rows.evaluate_all("rs => rs.map(r => r.dataset.seq)")]


async def test_a_gift_from_one_viewer_shows_everywhere_and_a_refused_one_moves_nothing(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger, ("alice", 2000), ("bob", 50))
    alice = await pages.open("viewer", "alice")
    bob = await pages.open("viewer", "bob")
    creator = await pages.open("creator", CREATOR, Role.CREATOR)
    await coins(alice, 2000)
    await coins(bob, 50)

    # Alice taps the Cap (99 coins), then the combo button sends it again: 198 coins at a
    # 50 % share pay the creator 99 diamonds (the half diamond of the first is carried).
    await alice.get_by_test_id("gift-cap").click()
    await coins(alice, 1901)
    await alice.get_by_test_id("combo").click()
    await coins(alice, 1802)
    await expect(alice.get_by_test_id("combo")).to_contain_text("combo ×2")
    strip_row = bob.locator("[data-testid=strip-row][data-gift=cap]")
    await expect(strip_row).to_contain_text("Alice")
    await expect(strip_row).to_contain_text("×2")
    await expect(creator.get_by_test_id("feed-row")).to_have_count(2)
    first = creator.locator("[data-testid=feed-row][data-seq='1']")
    await expect(first).to_have_attribute("data-gift", "cap")
    await expect(first).to_contain_text("Alice Lv 2 sent Cap")  # 99 coins: gifter level 2
    await expect(creator.get_by_test_id("diamonds")).to_have_attribute("data-value", "99")

    # A big gift plays full screen for the others.
    await alice.get_by_test_id("gift-galaxy").click()
    await coins(alice, 802)
    await expect(bob.locator("[data-testid=big-gift][data-gift=galaxy]")).to_be_visible()
    await expect(creator.get_by_test_id("feed-row")).to_have_count(3)

    # Bob cannot afford a Corgi (299): the tile offers coins instead of sending.
    corgi = bob.get_by_test_id("gift-corgi")
    await expect(corgi).to_have_attribute("data-affordable", "false")
    await corgi.click()
    sheet = bob.get_by_test_id("get-coins")
    await expect(sheet).to_be_visible()
    await expect(bob.get_by_test_id("coins-need")).to_have_text(
        "Corgi costs 299 coins; you have 50 coins."
    )
    await expect(sheet).to_contain_text("POST /api/webhooks/payments")
    await expect(bob.get_by_test_id("coins-buy")).to_be_hidden()  # no checkout configured
    await expect(bob.get_by_test_id("pending")).to_have_attribute("data-count", "0")
    await expect(bob.get_by_test_id("error")).to_be_hidden()
    # Sent anyway (an old tab, a script): the server refuses, the error shows, nothing moves.
    await bob.evaluate("() => giftwire.socket.sendGift('corgi', 1)")
    error = bob.get_by_test_id("error")
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("data-code", "insufficient_funds")
    await expect(error).to_have_text("Not enough coins: Corgi costs 299 coins, you have 50 coins.")
    await expect(bob.get_by_test_id("pending")).to_have_attribute("data-count", "0")
    await coins(bob, 50)
    assert (await ledger.balance("bob")).coins == 50
    assert (await ledger.balance("alice")).coins == 802
    assert (await ledger.stream(STREAM)).last_sequence == 3  # type: ignore[union-attr]
    await expect(creator.get_by_test_id("feed-row")).to_have_count(3)
    assert await feed_seqs(creator) == [3, 2, 1]


async def test_the_viewer_page_never_sends_a_gift_twice_across_reconnects(
    pages: Pages, ledger: Ledger, server: ServerProcess
) -> None:
    await _live(ledger, ("alice", 1000))
    alice = await pages.open("viewer", "alice")
    await alice.get_by_test_id("gift-rose").wait_for()
    # The connection drops right after the gift leaves: the page cannot know whether it
    # was applied, sends it again with the same id, and the server applies it once.
    for expected in (999, 998, 997):
        await alice.evaluate(
            "() => { giftwire.socket.sendGift('rose', 1); giftwire.socket.ws.close(); }"
        )
        await live(alice)
        await expect(alice.get_by_test_id("pending")).to_have_attribute("data-count", "0")
        await coins(alice, expected)
    # While the server is down the panel says so and no gift can be tapped; a gift sent
    # anyway (by a script) waits, and is sent once the connection is back.
    server.stop()
    await expect(alice.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
    await expect(alice.get_by_test_id("offline")).to_be_visible()
    await expect(alice.get_by_test_id("offline")).to_contain_text("Gifts are paused")
    await expect(alice.get_by_test_id("gift-heart")).to_be_disabled()
    await expect(alice.get_by_test_id("combo")).to_be_disabled()
    await expect(alice.locator(".gift-card:enabled")).to_have_count(0)
    await alice.evaluate("() => giftwire.socket.sendGift('heart', 1)")
    assert await alice.evaluate("() => giftwire.socket.pending.size") == 1
    server.start()
    await live(alice)
    await expect(alice.get_by_test_id("offline")).to_be_hidden()
    await expect(alice.get_by_test_id("gift-heart")).to_be_enabled()
    await expect(alice.get_by_test_id("pending")).to_have_attribute("data-count", "0")
    await coins(alice, 996)
    assert (await ledger.balance("alice")).coins == 996
    assert (await ledger.stream(STREAM)).last_sequence == 4  # type: ignore[union-attr]


async def test_the_dashboard_resumes_after_a_server_restart_without_gap_or_duplicate(
    pages: Pages, ledger: Ledger, server: ServerProcess
) -> None:
    await _live(ledger, ("bob", 1000))
    for i in range(2):
        await _gift(ledger, f"early-{i}")  # history: the dashboard shows recent gifts too
    creator = await pages.open("creator", CREATOR, Role.CREATOR)
    await expect(creator.get_by_test_id("feed-row")).to_have_count(2)
    await _gift(ledger, "live-0", gift="cap")
    await expect(creator.get_by_test_id("feed-row")).to_have_count(3)
    server.stop()
    await expect(creator.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
    for i in range(3):
        await _gift(ledger, f"away-{i}", gift="heart")  # sent while the dashboard is away
    server.start()
    await live(creator)
    await _gift(ledger, "back-0", gift="doughnut")
    await expect(creator.get_by_test_id("feed-row")).to_have_count(7)
    assert await feed_seqs(creator) == [7, 6, 5, 4, 3, 2, 1]
    diamonds = (await ledger.stream(STREAM)).diamonds_total  # type: ignore[union-attr]
    await expect(creator.get_by_test_id("diamonds")).to_have_attribute("data-value", str(diamonds))


async def test_the_creator_goes_live_and_ends_the_stream_from_the_dashboard(
    pages: Pages, ledger: Ledger
) -> None:
    await ledger.top_up(payment_id="pay-bob", user_id="bob", coins=100)
    creator = await pages.open("creator", CREATOR, Role.CREATOR, wait_live=False)
    await expect(creator.get_by_test_id("status")).to_have_attribute("data-state", "no-stream")
    await creator.get_by_test_id("stream-title").fill("Cooking live")
    await creator.get_by_test_id("start").click()
    await live(creator)
    await expect(creator.get_by_test_id("live")).to_have_text("live")
    bob = await pages.open("viewer", "bob")
    await bob.get_by_test_id("gift-rose").click()
    await expect(creator.get_by_test_id("feed-row")).to_have_count(1)

    end = creator.get_by_test_id("end")
    await end.click()
    await expect(end).to_have_text("Click again to end")
    await end.click()
    await expect(creator.get_by_test_id("live")).to_have_text("ended")
    await expect(bob.locator("#ended")).to_be_visible()
    await expect(bob.get_by_test_id("gift-rose")).to_be_disabled()
    # A gift sent anyway (an old tab, a script) is refused and shown plainly.
    await bob.evaluate("() => giftwire.socket.sendGift('rose', 1)")
    await expect(bob.get_by_test_id("error")).to_have_attribute("data-code", "stream_not_live")
    stream = await ledger.stream(STREAM)
    assert stream is not None and stream.state == "ended" and stream.title == "Cooking live"
    assert (await ledger.balance("bob")).coins == 99


async def test_the_overlay_alerts_only_for_gifts_worth_its_minimum(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger, ("bob", 1000))
    overlay = await pages.open(
        "overlay", CREATOR, Role.CREATOR, query="&min_coins=50&position=bottom-right&top=3"
    )
    await expect(overlay.get_by_test_id("alerts")).to_have_attribute("data-pos", "bottom-right")
    await _gift(ledger, "small", gift="rose")
    await _gift(ledger, "big-enough", gift="cap")
    alerts = overlay.get_by_test_id("alert")
    await expect(alerts).to_have_count(1)
    await expect(alerts).to_have_attribute("data-gift", "cap")
    await expect(alerts).to_contain_text("Bob")
    await expect(overlay.get_by_test_id("top")).to_contain_text("Bob")
    assert await overlay.evaluate("getComputedStyle(document.body).backgroundColor") in (
        "rgba(0, 0, 0, 0)",
        "transparent",
    )
