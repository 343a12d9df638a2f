"""Server messages are spelled once, in ``server/protocol/events.py``."""

from __future__ import annotations

import re
from pathlib import Path

from server.domain.catalog import load_catalog
from server.domain.errors import ErrorCode
from server.domain.goals import Goal, GoalKind
from server.domain.levels import TopGifter
from server.protocol import events

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_no_module_but_events_builds_a_server_message() -> None:
    # ASGI events ({"type": "websocket.send"}) are not messages of ours.
    pattern = re.compile(r"""["']type["']\s*:\s*["'](?!websocket\.)""")
    offenders = [
        str(path.relative_to(SERVER))
        for path in SERVER.rglob("*.py")
        if path.name != "events.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_every_builder_makes_a_listed_type() -> None:
    built = [
        events.error(ErrorCode.INTERNAL),
        events.gift_batch([]),
        events.welcome(
            stream={},
            you={},
            balance={},
            viewers=0,
            top=[],
            goals=[],
            last_seq=0,
            epoch="",
            fmt="json",
        ),
        events.gift_ack(
            client_id="a",
            transfer_id="1-0",
            gift_id="rose",
            count=1,
            coins=1,
            balance=0,
            combo=1,
            seq=1,
            replayed=False,
        ),
        events.stats(viewers=0, coins=0, diamonds=0, gifts=0, last_seq=0),
        events.leaderboard([TopGifter("a", "A", 1, 1)]),
        events.goals("s", [Goal("g", GoalKind.COINS, "", 10, "Ten")]),
        events.lag(1, 0),
        events.stream_state("s1", "ended", 3),
        events.gap(1, 2),
        events.history_changed("e", 1),
        events.pong(None),
    ]
    assert {m["type"] for m in built} <= set(events.SERVER_MESSAGE_TYPES)


def test_display_fields_come_from_the_catalog() -> None:
    event = events.enrich_gift({"type": "gift", "gift_id": "rose"}, load_catalog())
    assert event.keys() >= events.GIFT_DISPLAY_FIELDS
