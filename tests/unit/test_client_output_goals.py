"""The terminal client's text for goals, levels and named leaderboards."""

from __future__ import annotations

from client_demo.output import describe
from server.domain.goals import Goal, GoalKind
from server.domain.levels import TopGifter
from server.protocol import events

ROSES = Goal("roses", GoalKind.GIFT, "rose", 100, "100 Roses", progress=40)


def test_leaderboard_rows_show_names_and_levels() -> None:
    line = describe(events.leaderboard([TopGifter("u1", "Alice", 1200, 4)]))
    assert line == "top gifters: Alice [Lv 4] 1,200"


def test_goal_messages_read_as_text() -> None:
    assert describe(events.goals("s", [ROSES])) == "goals: roses «100 Roses» 40/100 rose"
    reached = {
        "type": "goal_reached", "goal_id": "roses", "title": "100 Roses", "progress": 101,
        "target": 100, "sender_name": "Bob",
    }  # fmt: skip
    assert describe(reached) == "goal reached: 100 Roses (101/100), by Bob"
    level_up = {"type": "level_up", "user_name": "Bob", "level": 3, "seq": 9}
    assert describe(level_up) == "Bob reached level 3 (gift #9)"


def test_a_gift_shows_its_senders_level_and_the_goals_it_moved() -> None:
    gift = {
        "type": "gift", "seq": 2, "sender_name": "Bob", "gift_id": "rose", "count": 1,
        "combo": 1, "coins": 1, "diamonds": 0, "level": 2,
        "goals": [{"goal_id": "roses", "progress": 41}],
    }  # fmt: skip
    assert describe(gift) == "#2 Bob [Lv 2] sent rose: 1 coins, +0 diamonds; goal roses 41"
