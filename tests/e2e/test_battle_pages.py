"""The battle bar, the guest picker and the creator's battle and stage panels, in a real
headless Chromium. Screenshots go to GIFTWIRE_SCREENSHOTS_DIR when set (the committed
docs/img/battle-*.jpg come from there), else a temp dir."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.ledger.ledger import Ledger
from tests.support.browser import STREAM, Pages, needs_chromium
from tests.support.servers import ServerProcess, http_json, token

RIVAL, HOST, RIVAL_HOST = "rival1", "maya", "omar"

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GIFTWIRE_SCREENSHOTS_DIR") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _jpeg(page: Page, folder: Path, name: str, selector: str | None = None) -> None:
    path = folder / f"battle-{name}.jpg"
    target = page.locator(selector) if selector else page
    await target.screenshot(path=str(path), type="jpeg", quality=70)
    assert 2_000 < path.stat().st_size < 120_000  # rendered, and small enough to commit


def _post(server: ServerProcess, path: str, body: object, bearer: str) -> object:
    status, reply = http_json("POST", f"{server.http}{path}", body, bearer=bearer)
    assert status in (200, 201), reply
    return reply


async def test_viewer_battle_bar_guest_picker_and_creator_panels(
    pages: Pages, server: ServerProcess, ledger: Ledger, shots: Path
) -> None:
    host, rival = token(HOST, Role.CREATOR, name="Maya"), token(RIVAL_HOST, Role.CREATOR)
    _post(server, "/api/streams", {"stream_id": STREAM, "title": "Battle night"}, host)
    _post(server, "/api/streams", {"stream_id": RIVAL, "title": "Rival"}, rival)
    await ledger.top_up(payment_id="pay-ann", user_id="ann", coins=10_000)
    # A guest on stage: invited by the host, joined with their own token.
    _post(server, f"/api/streams/{STREAM}/guests", {"user_id": "gina"}, host)
    _post(server, f"/api/streams/{STREAM}/guests/join", {}, token("gina", name="Gina"))

    dashboard = await pages.open("creator", HOST, Role.CREATOR)
    await expect(dashboard.get_by_test_id("stage-guest")).to_have_attribute("data-state", "on")
    await dashboard.get_by_test_id("battle-rival").fill(RIVAL)
    await dashboard.get_by_test_id("battle-invite").click()
    await expect(dashboard.get_by_test_id("invite-outgoing")).to_be_visible()

    rival_page = await pages.open("creator", RIVAL_HOST, Role.CREATOR, stream=RIVAL)
    await rival_page.get_by_test_id("battle-accept").click()
    for page in (dashboard, rival_page):
        await expect(page.get_by_test_id("battle-bar")).to_have_attribute("data-state", "running")

    viewer = await pages.open("viewer", "ann")
    bar = viewer.get_by_test_id("battle-bar")
    await expect(bar).to_be_visible()
    countdown = viewer.get_by_test_id("battle-countdown")
    await expect(countdown).to_have_text(re.compile(r"^(5:00|4:[0-5]\d)$"))  # from 5 min down
    picker = viewer.get_by_test_id("guest-picker")
    await expect(picker).to_be_visible()
    await viewer.get_by_test_id("guest-select").select_option("gina")
    await viewer.get_by_test_id("gift-corgi").click()
    # The gift scores for this room and pays the guest: the bar and the stage show it.
    await expect(viewer.get_by_test_id("battle-score-ours")).to_have_attribute("data-score", "299")
    await expect(viewer.get_by_test_id("battle-score-theirs")).to_have_attribute("data-score", "0")
    assert (await ledger.balance("gina")).diamonds == 149
    status, board = http_json("GET", f"{server.http}/api/streams/{STREAM}/leaderboard")
    assert status == 200 and [(r["user_id"], r["coins"]) for r in board["top"]] == [("ann", 299)]
    assert board["received"] == [
        {"user_id": "gina", "name": "Gina", "state": "on", "coins": 299, "diamonds": 149}
    ]
    await expect(rival_page.get_by_test_id("battle-score-theirs")).to_have_attribute(
        "data-score", "299"
    )
    await expect(dashboard.get_by_test_id("stage-guest")).to_contain_text("299 coins")
    # Who received what: the strip and the creator's feed name the guest.
    await expect(viewer.get_by_test_id("strip")).to_contain_text("sent Corgi to Gina")
    await expect(dashboard.get_by_test_id("feed-row")).to_contain_text("sent Corgi to Gina")
    assert int(await countdown.get_attribute("data-left-ms") or 0) < 300_000
    await _jpeg(viewer, shots, "viewer")

    overlay = await pages.open("overlay", HOST, Role.CREATOR, query="&battle_position=bottom")
    await expect(overlay.get_by_test_id("battle-bar")).to_have_attribute("data-state", "running")
    await expect(overlay.get_by_test_id("battle-score-ours")).to_have_attribute("data-score", "299")
    hidden = await pages.open("overlay", HOST, Role.CREATOR, query="&battle=0")
    await expect(hidden.get_by_test_id("battle-bar")).to_be_hidden()

    await dashboard.get_by_test_id("battle-end").click()
    for page in (viewer, dashboard, rival_page, overlay):
        await expect(page.get_by_test_id("battle-bar")).to_have_attribute("data-state", "ended")
    await expect(viewer.get_by_test_id("battle-result")).to_have_text("Victory! · MVP Ann")
    await expect(rival_page.get_by_test_id("battle-result")).to_have_text("Defeat")
    await expect(dashboard.get_by_test_id("battle-last")).to_contain_text("you won")
    await _jpeg(dashboard, shots, "creator")
    assert pages.errors == []
