"""Take the README's screenshots of the real demo pages in headless Chromium.

    .venv/bin/python docs/img/make_screenshots.py

Starts a private redis-server and a giftwire server, seeds a live stream, opens the viewer
page on a wide screen and on a phone (390×844), the creator dashboard and the OBS overlay,
sends gifts from the pages, and saves JPEGs next to this file (the four together well under
1 MB). Needs Debian's ``chromium`` and the ``playwright`` package (never ``playwright
install``). No emoji font is needed: the gift artwork ships with the pages.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright
from redis.asyncio import Redis

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from server.domain.accounts import Role  # noqa: E402
from server.domain.catalog import load_catalog  # noqa: E402
from server.domain.limits import Limits  # noqa: E402
from server.ledger.embedded import RedisProcess  # noqa: E402
from server.ledger.keys import Keys  # noqa: E402
from server.ledger.ledger import Ledger  # noqa: E402
from tests.support.servers import ServerProcess, token  # noqa: E402

OUT = Path(__file__).resolve().parent
SHOTS = ("viewer.jpg", "viewer-phone.jpg", "creator.jpg", "overlay.jpg")
JPEG_QUALITY = 78
STREAM = "friday-night"
CREATOR = "maya"
CREATOR_NAME = "Maya Lin"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The overlay is transparent; for the picture, a stand-in for the creator's video behind it.
OVERLAY_BACKDROP = """
html { background: radial-gradient(circle at 30% 30%, #3b6d8f, #1d2b3a 55%, #0d1117); }
body::before { content: "your stream"; position: absolute; left: 50%; top: 50%;
  transform: translate(-50%, -50%); font-size: 120px; font-weight: 900;
  color: rgba(255, 255, 255, 0.06); }
"""
FAST = {
    "GIFTWIRE_GIFTS_PER_S_MAX": "10000",
    "GIFTWIRE_GIFT_BURST_MAX": "10000",
    "GIFTWIRE_MESSAGES_PER_S_MAX": "10000",
}


async def seed(redis_url: str, prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    ledger = Ledger(redis, keys=Keys(prefix), limits=Limits(gifts_per_s_max=10_000))
    await ledger.prepare(load_catalog())
    await ledger.start_stream(
        stream_id=STREAM,
        creator_id=CREATOR,
        title="Friday night karaoke",
        creator_name=CREATOR_NAME,
    )
    for user, coins in [("alice", 220_000), ("bob", 9_000), ("carol", 40_000), ("dan", 3_000)]:
        await ledger.top_up(payment_id=f"seed-{user}", user_id=user, coins=coins)
    # Some history for the creator's feed and the leaderboard.
    history = [
        ("carol", "Carol", "lion", 1),
        ("dan", "Dan", "rose", 5),
        ("bob", "Bob", "corgi", 1),
        ("dan", "Dan", "doughnut", 2),
        ("carol", "Carol", "heart", 3),
        ("bob", "Bob", "perfume", 1),
    ]
    for i, (user, name, gift, count) in enumerate(history):
        await ledger.send_gift(
            client_id=f"seed-{i}",
            sender_id=user,
            sender_name=name,
            stream_id=STREAM,
            creator_id=CREATOR,
            gift_id=gift,
            count=count,
        )
    await redis.aclose()


def url(
    server: ServerProcess, page: str, user: str, role: Role = Role.VIEWER, extra: str = ""
) -> str:
    name = CREATOR_NAME if user == CREATOR else user.title()
    return f"{server.http}/demo/{page}.html?stream={STREAM}{extra}#token={token(user, role, name=name)}"


async def open_page(
    browser: Browser, address: str, width: int, height: int, scale: float = 1
) -> Page:
    context = await browser.new_context(
        viewport={"width": width, "height": height}, device_scale_factor=scale
    )
    page = await context.new_page()
    page.on("console", lambda m: print("console:", m.type, m.text))
    page.on("pageerror", lambda e: print("page error:", e))
    await page.goto(address)
    await page.wait_for_selector("[data-testid=status][data-state=live]")
    return page


async def tap(page: Page, gift: str, times: int = 1) -> None:
    for _ in range(times):
        await page.click(f"[data-testid=gift-{gift}]")
        await page.wait_for_timeout(120)


async def hold(page: Page, gift: str) -> None:
    """Hold a big gift's show at the middle of its loop with the page's hook, not by waiting."""
    await page.wait_for_selector(f"[data-testid=big-gift][data-gift={gift}]")
    await page.evaluate(
        "() => { const [start, end] = giftwire.big.phases().loop;"
        " giftwire.big.pause(); giftwire.big.seek((start + end) / 2); }"
    )
    await page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
    )


async def resume(page: Page) -> None:
    await page.evaluate("() => giftwire.big.resume()")


async def shoot(page: Page, name: str) -> None:
    await page.screenshot(path=str(OUT / name), type="jpeg", quality=JPEG_QUALITY)


async def take(browser: Browser, server: ServerProcess) -> None:
    alice = await open_page(browser, url(server, "viewer", "alice"), 1280, 720)
    bob = await open_page(browser, url(server, "viewer", "bob"), 1280, 720)
    phone = await open_page(browser, url(server, "viewer", "carol"), 390, 844, scale=2)
    creator = await open_page(browser, url(server, "creator", CREATOR, Role.CREATOR), 1280, 720)
    overlay = await open_page(
        browser, url(server, "overlay", CREATOR, Role.CREATOR, "&min_coins=5&top=3"), 1280, 720
    )
    await alice.wait_for_selector("[data-testid=gift-rose]")
    await bob.wait_for_selector("[data-testid=gift-rose]")
    await tap(alice, "rose", 4)
    await tap(bob, "finger_heart", 3)
    await tap(alice, "heart", 2)
    await bob.click("[data-testid=gift-corgi]")
    await alice.click("[data-testid=gift-universe]")
    await hold(bob, "universe")
    await shoot(bob, SHOTS[0])
    await resume(bob)
    await phone.wait_for_selector("[data-testid=strip-row]")
    await tap(bob, "doughnut", 2)
    await alice.click("[data-testid=gift-lion]")
    await hold(phone, "lion")
    await shoot(phone, SHOTS[1])
    await resume(phone)
    await alice.click("[data-testid=gift-galaxy]")
    await alice.click("[data-testid=combo]")
    await creator.wait_for_timeout(1200)
    await shoot(creator, SHOTS[2])
    await overlay.add_style_tag(content=OVERLAY_BACKDROP)
    await tap(bob, "perfume", 3)
    await alice.click("[data-testid=gift-whale]")
    await hold(overlay, "whale")
    await shoot(overlay, SHOTS[3])


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisProcess(Path(tmp) / "redis")
        redis.start()
        server = ServerProcess(redis.url, "shots:", Path(tmp), **FAST)
        try:
            await seed(redis.url, "shots:")
            server.start()
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
                )
                await take(browser, server)
                await browser.close()
        finally:
            server.stop()
            redis.stop()
    sizes = {name: (OUT / name).stat().st_size for name in SHOTS}
    print("wrote", ", ".join(f"{n} ({s // 1024} KiB)" for n, s in sizes.items()))
    print(f"together {sum(sizes.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    asyncio.run(main())
