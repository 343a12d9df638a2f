"""Demo pages in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

Playwright's own browser downloads are never used: the browser is launched by
``executable_path``. Test modules skip, with the reason, where no Chromium is installed;
``.ci/run`` installs it. No emoji font is needed (CI installs none): the pages ship their
artwork, and ``assert_no_emoji`` checks that no text on a page would need one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from server.domain.accounts import Role
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
WAIT_MS = 15_000
STREAM = "web1"
WIDE = (1280, 720)
PHONE = (390, 844)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (apt-get install chromium; .ci/run installs it)",
)


@dataclass(frozen=True, slots=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @property
    def bottom(self) -> float:
        return self.y + self.height

    @property
    def right(self) -> float:
        return self.x + self.width

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.right
            and other.x < self.right
            and self.y < other.bottom
            and other.y < self.bottom
        )


class Pages:
    """Opens demo pages, and fails the test on any uncaught JavaScript error in them."""

    def __init__(self, browser: Browser, server: ServerProcess, stream: str) -> None:
        self.browser = browser
        self.server = server
        self.stream = stream
        self.errors: list[str] = []

    async def open(
        self,
        name: str,
        user: str,
        role: Role = Role.VIEWER,
        *,
        stream: str | None = None,
        query: str = "",
        wait_live: bool = True,
        viewport: tuple[int, int] = (1280, 800),
        reduced_motion: Literal["reduce", "no-preference"] | None = None,
        init_script: str | None = None,
    ) -> Page:
        width, height = viewport
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, reduced_motion=reduced_motion
        )
        if init_script is not None:  # runs in every document before the page's own scripts
            await context.add_init_script(init_script)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: self.errors.append(f"{name}/{user}: {error}"))
        bearer = token(user, role, name=user.title())
        await page.goto(
            f"{self.server.http}/demo/{name}.html?stream={stream or self.stream}{query}"
            f"#token={bearer}"
        )
        if wait_live:
            await live(page)
        return page


async def live(page: Page) -> None:
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")


async def box(locator: Locator) -> Box:
    found = await locator.bounding_box()
    assert found is not None, f"{locator} is not rendered"
    return Box(found["x"], found["y"], found["width"], found["height"])


async def settled(locator: Locator) -> None:
    """Wait until the element's own CSS animations have finished (where it comes to rest)."""
    await locator.evaluate("el => Promise.all(el.getAnimations().map(a => a.finished))")


async def assert_in_first_viewport(page: Page, locator: Locator) -> None:
    """The whole element is on screen without scrolling."""
    size = page.viewport_size
    assert size is not None
    found = await box(locator)
    assert found.x >= 0 and found.y >= 0, found
    assert found.right <= size["width"] and found.bottom <= size["height"], (found, size)


async def assert_no_emoji(page: Page) -> None:
    """No text on the page (pseudo-elements included) needs an emoji font to render."""
    found = await page.evaluate(
        r"""() => {
            const emoji = /\p{Extended_Pictographic}/u;
            const hits = [];
            for (const el of document.querySelectorAll("body, body *")) {
                for (const pseudo of ["::before", "::after"]) {
                    const content = getComputedStyle(el, pseudo).content;
                    if (emoji.test(content)) hits.push(`${el.className}${pseudo}: ${content}`);
                }
                for (const node of el.childNodes) {
                    if (node.nodeType === 3 && emoji.test(node.textContent)) {
                        hits.push(node.textContent.trim());
                    }
                }
            }
            return hits;
        }"""
    )
    assert found == []


async def assert_art_loaded(page: Page, images: Locator, count: int) -> None:
    """Each of ``count`` images is its gift's own SVG, loaded (non-zero natural size)."""
    await expect(images).to_have_count(count)
    # Wait for the loads, then read every image's state at once.
    await page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(i => i.complete)",
        arg="img.gift-art",
    )
    states = await images.evaluate_all(
        "imgs => imgs.map(i => ({art: i.dataset.art, src: i.src, w: i.naturalWidth,"
        " h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
    )
    for state in states:
        assert state["src"].endswith(f"/gifts/{state['art']}.svg"), state
        assert state["w"] > 0 and state["h"] > 0 and state["shown"] > 0, state
