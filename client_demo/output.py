"""What the terminal client prints: one JSON object per line (``--json``), or text.

With ``--json`` every server message is printed as it came (a coalesced ``gifts`` frame as
one ``gift`` line per event), and the client's own notices carry ``"local": true``
(``disconnected``, ``refused``, ``gave_up``, ``usage``, ``catalog``, ``wallet``). Scripts
read stdout line by line; every line is flushed at once. When the reader goes away
(``| head``), the printer goes quiet and tells the session to finish: no traceback, no
reconnecting.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson

Message = dict[str, Any]

QUIET_TYPES = frozenset({"stats", "leaderboard", "pong"})
"""Printed as text only with ``--verbose`` (always with ``--json``)."""


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _level(row: Message) -> str:
    return f" [Lv {row['level']}]" if row.get("level") else ""


def _goal(goal: Message) -> str:
    what = "coins" if goal["kind"] == "coins" else goal["gift_id"]
    done = " reached" if goal["reached"] else ""
    title = f" «{goal['title']}»" if goal["title"] else ""
    return f"{goal['goal_id']}{title} {_n(goal['progress'])}/{_n(goal['target'])} {what}{done}"


def describe(message: Message) -> str:
    """One line of text for a server message."""
    kind = message.get("type")
    if kind == "welcome":
        stream, you, balance = message["stream"], message["you"], message["balance"]
        return (
            f"joined {stream['id']} ({stream['state']}) «{stream['title']}» as "
            f"{you['display_name']} ({you['role']}): {_n(balance['coins'])} coins, "
            f"{_n(balance['diamonds'])} diamonds, {_n(message['viewers'])} watching, "
            f"last gift #{message['last_seq']}, level {you.get('level', 0)}"
            + "".join(f"\n  goal {_goal(goal)}" for goal in message.get("goals", []))
        )
    if kind == "gift":
        count = f" ×{_n(message['count'])}" if message["count"] > 1 else ""
        combo = f" (combo {_n(message['combo'])})" if message["combo"] > message["count"] else ""
        to = ""
        if message.get("recipients"):
            # On a Redis Cluster a recipient's row has its coins only: each guest's
            # diamonds are decided in their own slot, after the event (docs/protocol.md).
            to = " to " + ", ".join(
                f"{r['user_id']} (+{_n(r['diamonds'])})"
                if "diamonds" in r
                else f"{r['user_id']} ({_n(r['coins'])} coins)"
                for r in message["recipients"]
            )
        battle = " [battle]" if message.get("battle_id") else ""
        return (
            f"#{message['seq']} {message['sender_name']}{_level(message)} sent "
            f"{message.get('gift_name', message['gift_id'])}{count}{combo}{to}: "
            f"{_n(message['coins'])} coins, +{_n(message['diamonds'])} diamonds{battle}"
            + "".join(
                f"; goal {g['goal_id']} {_n(g['progress'])}" for g in message.get("goals", [])
            )
        )
    if kind in ("battle", "battle_score"):
        score = " vs ".join(f"{s['stream_id']} {_n(s['score'])}" for s in message["sides"])
        return f"battle {message['battle_id']}: {score} (ends at {message['ends_at']} ms)"
    if kind == "battle_end":
        score = " vs ".join(
            f"{s['stream_id']} {_n(s['score'])}"
            + (f" (MVP {s['mvp']['user_id']})" if s.get("mvp") else "")
            for s in message["sides"]
        )
        outcome = "a draw" if message["draw"] else f"{message['winner']} wins"
        return f"battle {message['battle_id']} over ({message['reason']}): {score}: {outcome}"
    if kind == "battle_invite":
        invite = message["invite"]
        return (
            f"battle invitation {invite['battle_id']} {message['state']}: "
            f"{invite['from_stream']} → {invite['to_stream']}, {invite['duration_s']} s"
        )
    if kind == "guests":
        stage = ", ".join(
            f"{g['name']} ({g['state']}, {_n(g['coins'])} coins)" for g in message["guests"]
        )
        return f"on stage: {stage or 'nobody'}"
    if kind == "gift_ack":
        replayed = " (replayed: it was already sent)" if message["replayed"] else ""
        return (
            f"sent {message['gift']} ×{message['count']} for {_n(message['coins'])} coins: "
            f"balance {_n(message['balance'])}, combo {message['combo']}, "
            f"#{message['seq']}{replayed}"
        )
    if kind == "error":
        about = f" [{message['id']}]" if message.get("id") else ""
        detail = f" {message['detail']}" if message.get("detail") else ""
        return f"refused{about}: {message['code']}: {message['message']}{detail}"
    if kind == "stream":
        return f"the stream is {message['state']}"
    if kind == "gap":
        return f"gifts #{message['from_seq']}-#{message['to_seq']} are no longer in the feed"
    if kind == "history_changed":
        return (
            f"the server lost gifts #{message['from_seq']} on (its history changed):"
            " they are sent again as they really are"
        )
    if kind == "lag":
        return f"fell behind: {message['dropped']} frames dropped; catching up"
    if kind == "stats":
        return (
            f"{_n(message['viewers'])} watching, {_n(message['gifts'])} gifts, "
            f"{_n(message['diamonds'])} diamonds (#{message['last_seq']})"
        )
    if kind == "catalog":
        prices = ", ".join(f"{g['id']} {_n(g['price_coins'])}" for g in message["gifts"][:8])
        more = len(message["gifts"]) - 8
        return f"gift catalog version {message['version']}: {prices}" + (
            f" and {more} more" if more > 0 else ""
        )
    if kind == "leaderboard":
        top = ", ".join(
            f"{row.get('name', row['user_id'])}{_level(row)} {_n(row['coins'])}"
            for row in message["top"][:5]
        )
        return f"top gifters: {top or 'none yet'}"
    if kind == "level_up":
        return f"{message['user_name']} reached level {message['level']} (gift #{message['seq']})"
    if kind == "goal_reached":
        return (
            f"goal reached: {message['title'] or message['goal_id']} "
            f"({_n(message['progress'])}/{_n(message['target'])}), by {message['sender_name']}"
        )
    if kind == "goals":
        return "goals: " + ("; ".join(_goal(goal) for goal in message["goals"]) or "none")
    return orjson.dumps(message).decode()


class Printer:
    def __init__(
        self,
        *,
        json_lines: bool,
        verbose: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.verbose = verbose
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.closed = False
        """True once a reader went away; nothing is printed after that."""
        self.on_closed: Callable[[], None] | None = None

    def message(self, message: Message) -> None:
        """A message from the server."""
        if message.get("type") == "gifts":
            for event in message.get("events", []):
                self.message(event)
            return
        if self.json_lines:
            self._line(orjson.dumps(message).decode())
        elif self.verbose or message.get("type") not in QUIET_TYPES:
            self._line(describe(message))

    def local(
        self, kind: str, text: str | None = None, *, answer: bool = False, **fields: Any
    ) -> None:
        """A line from the client itself: a notice (to stderr in text mode), or the
        ``answer`` to a command the user typed (to stdout)."""
        if self.json_lines:
            self._line(orjson.dumps({"type": kind, "local": True, **fields}).decode())
            return
        if text is None:
            text = kind.replace("_", " ")
            if fields:
                text += ": " + ", ".join(f"{k}={v}" for k, v in fields.items())
        self._write(text, self.out if answer else self.err)

    def _line(self, line: str) -> None:
        self._write(line, self.out)

    def _write(self, line: str, stream: TextIO) -> None:
        if self.closed:
            return
        try:
            print(line, file=stream, flush=True)
        except BrokenPipeError:
            self.closed = True
            _silence(stream)
            if self.on_closed is not None:
                self.on_closed()


def _silence(stream: TextIO) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so that the interpreter's last
    flush at exit does not fail on it again."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
