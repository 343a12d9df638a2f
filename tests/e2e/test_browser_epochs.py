"""The creator dashboard (``giftwire.js`` in ordered mode) across a change of history.

Redis goes back in time for the stream (``tests.support.restore``): the next gifts reuse
numbers the page has shown. Live, the server says ``history_changed`` and the page must
replace those rows with the true gifts; away (its connection dropped meanwhile), the page
must resume with the epoch it held, or it would skip the reused numbers.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from server.domain.accounts import Role
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.reliability.helpers import Peer
from tests.support.browser import STREAM, Pages, live, needs_chromium
from tests.support.restore import StreamBackup
from tests.support.servers import ServerProcess, token

CREATOR = "star"

pytestmark = [pytest.mark.browser, needs_chromium]


async def _gift(ledger: Ledger, client_id: str, gift: str = "rose") -> None:
    await send_gift(ledger, client_id, sender="bob", gift_id=gift, stream=STREAM, creator=CREATOR)


async def _feed(page: Page) -> list[str]:
    """``seq:gift`` of each row of the dashboard's feed, newest first."""
    rows = page.get_by_test_id("feed-row")
    return list(await rows.evaluate_all("rs => rs.map(r => `${r.dataset.seq}:${r.dataset.gift}`)"))


async def _feed_is(page: Page, expected: list[str]) -> None:
    rows = page.get_by_test_id("feed-row")
    await expect(rows).to_have_count(len(expected))
    assert await _feed(page) == expected


async def test_the_dashboard_shows_the_true_gifts_after_history_changes_live_and_away(
    pages: Pages, ledger: Ledger, keys: Keys, server: ServerProcess
) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Epochs")
    await ledger.top_up(payment_id="pay-bob", user_id="bob", coins=100_000)
    creator = await pages.open("creator", CREATOR, Role.CREATOR)
    await live(creator)
    watcher = await Peer.open(server, token("watcher"), stream_id=STREAM)  # the room stays
    backup = StreamBackup(ledger.redis, keys, STREAM)
    try:
        for i in range(4):
            await _gift(ledger, f"a{i}")
            if i == 1:
                await backup.take()  # the copy holds gifts 1 and 2
        await _feed_is(creator, ["4:rose", "3:rose", "2:rose", "1:rose"])

        # Live: restored to gift 2, the next gift is numbered 3 again.
        await backup.restore()
        await _gift(ledger, "b0", gift="heart")
        await _feed_is(creator, ["3:heart", "2:rose", "1:rose"])
        await expect(creator.get_by_test_id("feed-history-changed")).to_have_count(1)
        await backup.take()  # the new history up to 3
        await _gift(ledger, "b1")
        await _feed_is(creator, ["4:rose", "3:heart", "2:rose", "1:rose"])

        # Away: the page's connection drops and its reconnect waits; Redis is restored to
        # the new 3 and two gifts are numbered 4 and 5 (the server, whose room the watcher
        # keeps open, starts a third epoch). Back, the page resumes from 4 in its epoch.
        await creator.evaluate(
            """() => {
              const s = giftwire.socket;
              s.realConnect = s._connect;
              s._connect = () => { s.connectWanted = true; };
              s.ws.close();
            }"""
        )
        await expect(creator.get_by_test_id("status")).to_have_attribute(
            "data-state", "reconnecting"
        )
        await backup.restore()
        await _gift(ledger, "c0", gift="doughnut")
        await _gift(ledger, "c1")
        await watcher.wait_for(lambda: 5 in watcher.seqs)
        await creator.evaluate(
            """() => {
              const s = giftwire.socket;
              s._connect = s.realConnect;
              if (s.connectWanted) s._connect();
            }"""
        )
        await live(creator)
        await _feed_is(creator, ["5:rose", "4:doughnut", "3:heart", "2:rose", "1:rose"])
        stream = await ledger.stream(STREAM)
        assert stream is not None
        assert await creator.evaluate("() => giftwire.socket.epoch") == stream.epoch
    finally:
        await watcher.close()
