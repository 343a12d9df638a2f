"""The demo pages in a real headless Chromium (Debian's ``chromium``), against a real server.

Driven by Playwright's async API with ``executable_path``: Playwright's own browser
downloads are never used. Skipped, with the reason, where no Chromium is installed;
``.ci/run`` installs it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.servers import ServerProcess, token

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STREAM = "web1"
CREATOR = "star"
WAIT_MS = 15_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium installed (apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Pages:
    """Opens demo pages, and fails the test on any uncaught JavaScript error in them."""

    def __init__(self, browser: Browser, server: ServerProcess) -> None:
        self.browser = browser
        self.server = server
        self.errors: list[str] = []

    async def open(
        self,
        name: str,
        user: str,
        role: Role = Role.VIEWER,
        *,
        stream: str = STREAM,
        query: str = "",
        wait_live: bool = True,
    ) -> Page:
        context = await self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: self.errors.append(f"{name}/{user}: {error}"))
        bearer = token(user, role, name=user.title())
        await page.goto(
            f"{self.server.http}/demo/{name}.html?stream={stream}{query}#token={bearer}"
        )
        if wait_live:
            await live(page)
        return page


@pytest.fixture
async def pages(browser: Browser, server: ServerProcess) -> AsyncIterator[Pages]:
    opened = Pages(browser, server)
    yield opened
    assert opened.errors == []


async def live(page: Page) -> None:
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")


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

    # Alice taps the Cap (99 coins), then the combo button sends it again.
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
    await expect(first).to_contain_text("Alice sent Cap")
    await expect(creator.get_by_test_id("diamonds")).to_have_attribute("data-value", "98")

    # A big gift plays full screen for the others.
    await alice.get_by_test_id("gift-galaxy").click()
    await coins(alice, 802)
    await expect(bob.locator("[data-testid=big-gift][data-gift=galaxy]")).to_be_visible()
    await expect(creator.get_by_test_id("feed-row")).to_have_count(3)

    # Bob cannot afford a Corgi (299): the error shows and nothing moves.
    await bob.get_by_test_id("gift-corgi").click()
    error = bob.get_by_test_id("error")
    await expect(error).to_be_visible()
    await expect(error).to_have_attribute("data-code", "insufficient_funds")
    await expect(error).to_contain_text("Not enough coins")
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
    # A gift tapped while the server is down waits, and is sent once it is back.
    server.stop()
    await expect(alice.get_by_test_id("status")).not_to_have_attribute("data-state", "live")
    await alice.get_by_test_id("gift-heart").click()
    await expect(alice.get_by_test_id("pending")).to_have_attribute("data-count", "1")
    server.start()
    await live(alice)
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
