"""Stream goals and gifter level badges on the demo pages, in a real headless Chromium.

Saves small JPEGs (into GIFTWIRE_SCREENSHOTS_DIR when set: the ones in docs/img/goals-*.jpg
come from here, else a temp dir).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.domain.goals import Goal, GoalKind
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.support.browser import STREAM, WIDE, Pages, needs_chromium

CREATOR = "star"
ROSES = Goal("roses", GoalKind.GIFT, "rose", 100, "100 Roses")
COINS = Goal("coins", GoalKind.COINS, "", 1_000, "1,000 coins")

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _live(ledger: Ledger, *goals: Goal) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Goal night")
    for user in ("alice", "bob"):
        await ledger.top_up(payment_id=f"pay-{user}", user_id=user, coins=100_000)
    for goal in goals:
        await ledger.set_goal(stream_id=STREAM, actor_id=CREATOR, goal=goal)


async def _gift(ledger: Ledger, client_id: str, gift: str, sender: str, count: int = 1) -> None:
    await send_gift(
        ledger, client_id, sender=sender, gift_id=gift, stream=STREAM, creator=CREATOR, count=count
    )


async def _progress(page: Page, goal_id: str, progress: int) -> None:
    goal = page.locator(f"[data-testid=goal][data-goal={goal_id}]")
    await expect(goal).to_have_attribute("data-progress", str(progress))


async def _jpeg(page: Page, folder: Path, name: str) -> None:
    path = folder / f"goals-{name}.jpg"
    await page.screenshot(path=str(path), type="jpeg", quality=70)
    assert 5_000 < path.stat().st_size < 120_000


async def test_the_viewer_page_shows_goals_levels_and_names(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger, ROSES, COINS)
    await _gift(ledger, "a1", "rose", "alice", count=40)
    viewer = await pages.open("viewer", "bob", viewport=WIDE)
    goals = viewer.get_by_test_id("goals")
    await expect(goals).to_be_visible()
    await expect(goals.get_by_test_id("goal")).to_have_count(2)
    await _progress(viewer, "roses", 40)  # from the welcome
    await expect(viewer.locator("[data-goal=roses] [data-testid=goal-count]")).to_have_text(
        "40 / 100 Rose"
    )
    # Live gifts move the bars; the coins goal counts a Money Gun's 500 coins too.
    await _gift(ledger, "a2", "rose", "alice", count=70)
    await _gift(ledger, "b1", "money_gun", "bob")
    await _progress(viewer, "roses", 110)
    await _progress(viewer, "coins", 610)
    await expect(viewer.locator("[data-goal=roses]")).to_have_class("goal reached just-reached")
    await expect(viewer.get_by_test_id("notice-goal")).to_contain_text("100 Roses")
    # Leaderboard rows: display names with level badges (500 coins: level 3; 110: level 2).
    top = viewer.get_by_test_id("top")
    await expect(top.locator("li").first).to_contain_text("Bob")
    await expect(top.locator("li").first.get_by_test_id("level-badge")).to_have_text("Lv 3")
    await expect(top.locator("li").nth(1).get_by_test_id("level-badge")).to_have_text("Lv 2")
    # The strip shows the sender's badge; alice's climb past 50 coins was a level_up, and
    # bob sees his own level beside his name.
    await expect(
        viewer.get_by_test_id("strip-row").first.get_by_test_id("level-badge")
    ).to_be_visible()
    await expect(viewer.get_by_test_id("notice-level").first).to_contain_text("level")
    await expect(viewer.get_by_test_id("my-level")).to_have_attribute("data-level", "3")
    await _jpeg(viewer, shots, "viewer")
    assert pages.errors == []


async def test_the_dashboard_adds_and_deletes_goals_that_viewers_see(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger)
    creator = await pages.open("creator", CREATOR, Role.CREATOR, viewport=WIDE)
    viewer = await pages.open("viewer", "bob", viewport=WIDE)
    await creator.get_by_test_id("goal-kind").select_option("gift")
    await expect(creator.locator("#goal-gift option")).not_to_have_count(0)
    await creator.get_by_test_id("goal-gift").select_option("heart")
    await creator.get_by_test_id("goal-target").fill("30")
    await creator.get_by_test_id("goal-title").fill("30 Hearts")
    await creator.get_by_test_id("goal-add").click()
    await creator.get_by_test_id("goal-kind").select_option("coins")
    await expect(creator.get_by_test_id("goal-gift")).to_be_hidden()
    await creator.get_by_test_id("goal-target").fill("5000")
    await creator.get_by_test_id("goal-add").click()
    for page in (creator, viewer):
        await expect(page.get_by_test_id("goal")).to_have_count(2)
    await _gift(ledger, "b1", "heart", "bob", count=12)
    heart_goal = viewer.get_by_test_id("goal").first
    await expect(heart_goal).to_have_attribute("data-progress", "12")
    await expect(creator.get_by_test_id("goal").first).to_have_attribute("data-progress", "12")
    await expect(
        creator.get_by_test_id("feed-row").first.get_by_test_id("level-badge")
    ).to_have_text("Lv 1")
    await expect(creator.get_by_test_id("top")).to_contain_text("Bob")
    await _jpeg(creator, shots, "creator")
    goal_ids = [g.goal_id for g in await ledger.stream_goals(STREAM)]
    assert len(goal_ids) == 2
    await creator.get_by_test_id("goal-delete").first.click()
    for page in (creator, viewer):
        await expect(page.get_by_test_id("goal")).to_have_count(1)
    assert [g.goal_id for g in await ledger.stream_goals(STREAM)] == goal_ids[1:]
    assert pages.errors == []


async def test_the_overlay_shows_the_goals_its_query_string_asks_for(
    pages: Pages, ledger: Ledger, shots: Path
) -> None:
    await _live(ledger, ROSES, COINS)
    overlay = await pages.open(
        "overlay",
        CREATOR,
        Role.CREATOR,
        query="&goal_ids=roses&goals_position=top-left&position=bottom-right&top=3",
        viewport=WIDE,
    )
    goals = overlay.get_by_test_id("goals")
    await expect(goals).to_have_attribute("data-pos", "top-left")
    await expect(goals.get_by_test_id("goal")).to_have_count(1)  # only the roses
    await _gift(ledger, "a1", "rose", "alice", count=64)
    await _progress(overlay, "roses", 64)
    await expect(overlay.get_by_test_id("top").locator("li").first).to_contain_text("Alice")
    await _jpeg(overlay, shots, "overlay")
    hidden = await pages.open("overlay", CREATOR, Role.CREATOR, query="&goals=0", viewport=WIDE)
    await expect(hidden.get_by_test_id("goals")).to_be_hidden()
    assert pages.errors == []


async def test_with_reduced_motion_the_bars_jump_and_nothing_pulses(
    pages: Pages, ledger: Ledger
) -> None:
    await _live(ledger, ROSES)
    viewer = await pages.open("viewer", "bob", viewport=WIDE, reduced_motion="reduce")
    await _gift(ledger, "a1", "rose", "alice", count=100)
    await _progress(viewer, "roses", 100)
    styles = await viewer.locator("[data-goal=roses]").evaluate(
        """goal => ({
          transition: getComputedStyle(goal.querySelector('.goal-fill')).transitionDuration,
          animation: getComputedStyle(goal).animationName,
          width: goal.querySelector('.goal-fill').style.width,
        })"""
    )
    assert styles["transition"] in ("0s", "1e-05s") and styles["animation"] == "none"
    assert styles["width"] == "100%"
    assert pages.errors == []
