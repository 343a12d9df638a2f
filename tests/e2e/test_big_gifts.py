"""Big gifts' animations in a real headless Chromium (client_demo/static/show.js).

Each big gift plays in three phases (entrance, loop, exit) on one timeline; the tests hold
it with the page's own hook (``giftwire.big.pause()`` / ``seek(ms)``) and never wait on the
clock to see a moment. The three moments of a Universe are screenshotted (JPEG, into
GIFTWIRE_SCREENSHOTS_DIR when set: the ones in docs/img/anim-*.jpg come from here).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.domain.catalog import load_catalog
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.browser import PHONE, STREAM, WIDE, Pages, needs_chromium

CREATOR = "maya"
BIG = [gift_id for gift_id, gift in load_catalog().gifts.items() if gift.tier >= 3]
PARTICLES_MAX = 240  # particles.js
MOMENTS = ("entrance", "loop", "exit")
SCENE = "[data-testid=big-gift]"

pytestmark = [pytest.mark.browser, needs_chromium]

# Counts the page's pending requestAnimationFrame callbacks: a loop that keeps running always
# has one pending, so zero once a show is over means no loop was left behind.
COUNT_FRAMES = """
(() => {
  const request = window.requestAnimationFrame.bind(window);
  const cancel = window.cancelAnimationFrame.bind(window);
  const pending = new Set();
  window.__frames = { pending, ran: 0 };
  window.requestAnimationFrame = (callback) => {
    const id = request((time) => { pending.delete(id); window.__frames.ran += 1; callback(time); });
    pending.add(id);
    return id;
  };
  window.cancelAnimationFrame = (id) => { pending.delete(id); cancel(id); };
})();
"""

# What the current show animates, and where it stands.
SHOW_STATE = """
() => {
  const TIMING = ["offset", "computedOffset", "easing", "composite"];
  const scene = document.querySelector("[data-testid=big-gift]");
  const keys = new Set();
  for (const animation of scene.getAnimations({ subtree: true })) {
    for (const frame of animation.effect.getKeyframes()) {
      for (const key of Object.keys(frame)) keys.add(key);
    }
  }
  const canvas = scene.querySelector("canvas");
  const hero = scene.querySelector(".hero");
  const box = hero.getBoundingClientRect();
  return {
    animation: scene.dataset.animation,
    motion: scene.dataset.motion,
    properties: [...keys].filter((k) => !TIMING.includes(k)).sort(),
    particles: canvas ? Number(canvas.dataset.particles) : null,
    layers: scene.querySelectorAll(".layer").length,
    hero: [box.x, box.y, box.width, box.height].map(Math.round),
    actorOpacity: Number(getComputedStyle(scene.querySelector(".actor")).opacity),
    art: { src: hero.src, complete: hero.complete, width: hero.naturalWidth },
  };
}
"""

# Left behind by a finished show: pending frames, and animations still attached to it.
LEFTOVERS = """
() => {
  const big = document.getElementById("big");
  const stale = document.getAnimations().filter((a) => {
    const target = a.effect && a.effect.target;
    return target && (!target.isConnected || big.contains(target));
  });
  return { pending: window.__frames.pending.size, animations: stale.length,
           scenes: big.children.length };
}
"""

# The share of pixels that differ clearly between two PNG screenshots (decoded in the page).
PIXELS_CHANGED = """
async ([a, b]) => {
  const load = async (data) => {
    const image = new Image();
    image.src = "data:image/png;base64," + data;
    await image.decode();
    return image;
  };
  const [x, y] = await Promise.all([load(a), load(b)]);
  const canvas = new OffscreenCanvas(x.width, x.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const read = (image) => {
    context.clearRect(0, 0, x.width, x.height);
    context.drawImage(image, 0, 0);
    return context.getImageData(0, 0, x.width, x.height).data;
  };
  const [p, q] = [read(x), read(y)];
  let changed = 0;
  for (let i = 0; i < p.length; i += 4) {
    const d = Math.abs(p[i] - q[i]) + Math.abs(p[i + 1] - q[i + 1]) + Math.abs(p[i + 2] - q[i + 2]);
    if (d > 60) changed += 1;
  }
  return changed / (p.length / 4);
}
"""


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _live(ledger: Ledger, coins: int = 500_000) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Big gifts")
    await ledger.top_up(payment_id="pay-alice", user_id="alice", coins=coins)


async def _gift(ledger: Ledger, client_id: str, gift: str) -> None:
    await send_gift(ledger, client_id, sender="alice", gift_id=gift, stream=STREAM, creator=CREATOR)


async def _hold(page: Page, gift: str) -> dict[str, list[float]]:
    """Wait for `gift`'s show, hold it, and return its phases."""
    await expect(page.locator(f"{SCENE}[data-gift={gift}]")).to_be_visible()
    await page.evaluate("() => giftwire.big.pause()")
    phases: dict[str, list[float]] = await page.evaluate("() => giftwire.big.phases()")
    assert phases["entrance"][1] == phases["loop"][0] and phases["loop"][1] == phases["exit"][0]
    return phases


async def _at(page: Page, ms: float) -> dict[str, Any]:
    """Seek the held show to `ms`, let the page paint it, and read its state."""
    await page.evaluate("ms => giftwire.big.seek(ms)", ms)
    await page.evaluate(
        "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
    )
    state: dict[str, Any] = await page.evaluate(SHOW_STATE)
    return state


def _moment(phases: dict[str, list[float]], name: str) -> float:
    start, end = phases[name]
    return start + (end - start) * 0.5


async def _finish(page: Page) -> None:
    """End the held show: seek to its end and resume (the queue then starts the next)."""
    await page.evaluate(
        "() => { giftwire.big.seek(giftwire.big.phases().exit[1]); giftwire.big.resume(); }"
    )


async def test_a_universe_enters_orbits_and_leaves_in_three_distinct_frames(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger)
    viewer = await pages.open("viewer", "bob", viewport=WIDE, init_script=COUNT_FRAMES)
    await _gift(ledger, "u", "universe")
    phases = await _hold(viewer, "universe")
    stage = viewer.get_by_test_id("stage")
    frames: dict[str, str] = {}
    for name in MOMENTS:
        state = await _at(viewer, _moment(phases, name))
        assert state["animation"] == "orbit" and state["motion"] == "full"
        assert state["art"]["src"].endswith("/gifts/universe.svg")
        assert state["art"]["complete"] and state["art"]["width"] > 0, state["art"]
        assert state["layers"] >= 5  # halo, three orbits, the flash
        assert 0 < state["particles"] <= PARTICLES_MAX
        png = await stage.screenshot(type="png")
        frames[name] = base64.b64encode(png).decode()
        jpeg = shots / f"anim-{name}.jpg"
        await stage.screenshot(path=str(jpeg), type="jpeg", quality=72)
        assert jpeg.stat().st_size < 100_000
    # A moment is a function of time alone: seeking away and back draws the same particles.
    canvas = "() => document.querySelector('[data-testid=particles]').toDataURL()"
    loop = _moment(phases, "loop")
    await _at(viewer, loop)
    before = await viewer.evaluate(canvas)
    await _at(viewer, _moment(phases, "exit"))
    assert await viewer.evaluate(canvas) != before
    await _at(viewer, loop)
    assert await viewer.evaluate(canvas) == before
    # Each moment looks different from the others: the show really moves.
    for a, b in (("entrance", "loop"), ("loop", "exit"), ("entrance", "exit")):
        changed = await viewer.evaluate(PIXELS_CHANGED, [frames[a], frames[b]])
        assert changed > 0.03, (a, b, changed)


async def test_every_big_gift_animates_only_transform_and_opacity_and_leaves_nothing_running(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger)
    viewer = await pages.open("viewer", "bob", viewport=PHONE, init_script=COUNT_FRAMES)
    seen = set()
    for i, gift in enumerate(BIG):
        await _gift(ledger, f"big-{i}", gift)
        phases = await _hold(viewer, gift)
        state = await _at(viewer, _moment(phases, "loop"))
        seen.add(state["animation"])
        assert set(state["properties"]) <= {"opacity", "transform"}, (gift, state["properties"])
        assert state["particles"] is not None and 0 < state["particles"] <= PARTICLES_MAX, gift
        assert state["actorOpacity"] == 1, gift
        await _finish(viewer)
        await expect(viewer.locator(f"{SCENE}[data-gift={gift}]")).to_have_count(0)
    # The top gifts have shows of their own, and nothing is left once the last one is over.
    assert {"roar", "orbit", "fireworks", "dive", "dash", "flight", "swirl"} <= seen
    assert await viewer.evaluate(LEFTOVERS) == {"pending": 0, "animations": 0, "scenes": 0}
    ran = await viewer.evaluate("() => window.__frames.ran")
    assert ran > 0  # the particles were drawn by the page's frame loop
    # All the artwork ships with the pages: nothing was fetched from anywhere else.
    fetched = await viewer.evaluate(
        "() => performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert any("/gifts/universe.svg" in url for url in fetched), fetched
    assert all(url.startswith(f"{pages.server.http}/") for url in fetched), fetched


async def test_with_reduced_motion_a_big_gift_stays_still_and_only_fades(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger)
    viewer = await pages.open(
        "viewer", "bob", viewport=PHONE, reduced_motion="reduce", init_script=COUNT_FRAMES
    )
    await _gift(ledger, "lion", "lion")
    phases = await _hold(viewer, "lion")
    states = [await _at(viewer, _moment(phases, name)) for name in MOMENTS]
    for state in states:
        assert state["motion"] == "reduced" and state["animation"] == "still"
        assert state["properties"] == ["opacity"], state
        assert state["particles"] is None and state["layers"] == 0
    assert states[0]["hero"] == states[1]["hero"] == states[2]["hero"]  # it never moves
    assert states[1]["actorOpacity"] == 1
    faded_in = await _at(viewer, 0)
    assert faded_in["actorOpacity"] == 0
    assert await viewer.evaluate("() => window.__frames.pending.size") == 0  # no frame loop
    await _finish(viewer)
    await expect(viewer.locator(SCENE)).to_have_count(0)


async def test_on_the_overlay_a_universe_plays_before_the_gifts_that_came_first(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger)
    overlay = await pages.open("overlay", CREATOR, Role.CREATOR, viewport=WIDE)
    await _gift(ledger, "g", "galaxy")
    await _hold(overlay, "galaxy")  # held while the others arrive
    for i, gift in enumerate(["whale", "lion", "fireworks", "universe", "nebula"]):
        await _gift(ledger, f"q-{i}", gift)
    await expect(overlay.get_by_test_id("big-waiting")).to_have_text("+5 waiting")
    assert await overlay.evaluate("() => giftwire.big.show.rate") == 1
    # Most valuable first; with more than 3 waiting a show plays at twice the speed.
    order = [
        ("universe", "orbit", 4, 2),
        ("lion", "roar", 3, 1),
        ("nebula", "swirl", 2, 1),
        ("whale", "dive", 1, 1),
        ("fireworks", "fireworks", 0, 1),
    ]
    for gift, animation, waiting, rate in order:
        await _finish(overlay)
        await _hold(overlay, gift)
        # The overlay plays the same shows as the viewer page.
        await expect(overlay.locator(SCENE)).to_have_attribute("data-animation", animation)
        text = f"+{waiting} waiting" if waiting else ""
        await expect(overlay.get_by_test_id("big-waiting")).to_have_text(text)
        assert await overlay.evaluate("() => giftwire.big.show.rate") == rate, gift
    await _finish(overlay)
    await expect(overlay.locator(SCENE)).to_have_count(0)
