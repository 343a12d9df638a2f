"""Take the README's screenshots of the real demo pages in headless Chromium.

    .venv/bin/python docs/img/make_screenshots.py

Starts a private redis-server and a giftwire server, seeds a live stream, opens the viewer
page twice, the creator dashboard and the OBS overlay, sends gifts from the pages, and saves
PNGs next to this file. Needs Debian's ``chromium`` and the ``playwright`` package (never
``playwright install``); emoji need ``fonts-noto-color-emoji``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import Page, async_playwright
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
STREAM = "friday-night"
CREATOR = "maya"
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
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Friday night karaoke")
    for user, coins in [("alice", 120_000), ("bob", 9_000), ("carol", 40_000), ("dan", 3_000)]:
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
    return (
        f"{server.http}/demo/{page}.html?stream={STREAM}{extra}"
        f"#token={token(user, role, name=user.title())}"
    )


async def tap(page: Page, gift: str, times: int = 1) -> None:
    for _ in range(times):
        await page.click(f"[data-testid=gift-{gift}]")
        await page.wait_for_timeout(120)


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
                context = await browser.new_context(
                    viewport={"width": 1280, "height": 760}, device_scale_factor=1
                )
                alice = await context.new_page()
                bob = await context.new_page()
                creator = await context.new_page()
                overlay_context = await browser.new_context(viewport={"width": 1280, "height": 720})
                overlay = await overlay_context.new_page()
                for page in (alice, bob, creator, overlay):
                    page.on("console", lambda m: print("console:", m.type, m.text))
                    page.on("pageerror", lambda e: print("page error:", e))
                await alice.goto(url(server, "viewer", "alice"))
                await bob.goto(url(server, "viewer", "bob"))
                await creator.goto(url(server, "creator", CREATOR, Role.CREATOR))
                await overlay.goto(
                    url(server, "overlay", CREATOR, Role.CREATOR, "&min_coins=5&top=3")
                )
                for page in (alice, bob, creator, overlay):
                    await page.wait_for_selector("[data-testid=status][data-state=live]")
                await alice.wait_for_selector("[data-testid=gift-rose]")
                await bob.wait_for_selector("[data-testid=gift-rose]")
                await tap(alice, "rose", 4)
                await tap(bob, "finger_heart", 3)
                await tap(alice, "heart", 2)
                await bob.click("[data-testid=gift-corgi]")
                await alice.click("[data-testid=gift-universe]")
                await bob.wait_for_selector("[data-testid=big-gift][data-gift=universe]")
                await bob.wait_for_timeout(1100)
                await bob.screenshot(path=str(OUT / "viewer.png"))
                await alice.click("[data-testid=gift-galaxy]")
                await alice.click("[data-testid=combo]")
                await tap(bob, "doughnut", 2)
                await creator.wait_for_timeout(1200)
                await creator.screenshot(path=str(OUT / "creator.png"))
                await overlay.add_style_tag(content=OVERLAY_BACKDROP)
                await tap(bob, "perfume", 3)
                await alice.click("[data-testid=gift-lion]")
                await overlay.wait_for_selector("[data-testid=big-gift][data-gift=lion]")
                await overlay.wait_for_timeout(1100)
                await overlay.screenshot(path=str(OUT / "overlay.png"))
                await bob.click("[data-testid=gift-universe]")  # Bob cannot afford it
                await bob.wait_for_selector("[data-testid=error]:not([hidden])")
                await bob.wait_for_timeout(400)
                await bob.screenshot(path=str(OUT / "viewer-error.png"))
                await browser.close()
        finally:
            server.stop()
            redis.stop()
    print("wrote", *sorted(p.name for p in OUT.glob("*.png")))


if __name__ == "__main__":
    asyncio.run(main())
