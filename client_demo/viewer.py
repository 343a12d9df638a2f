"""``python -m client_demo viewer``: join a stream, show its events, send gifts.

Gifts come from ``--send`` and then from standard input, one command a line::

    rose 3        (or rose:3, or rose)   send a gift, with a count
    again                                send the last gift again (a combo)
    gifts                                list the catalog
    balance                              show your wallet
    quit

Never a gift twice: each gift gets a client id once, when it is read, and keeps it until
the server acks or refuses it. Gifts that are unanswered when a connection drops (or for a
few seconds) are sent again with the same id after reconnecting; if the first attempt was
applied, the server replays its receipt (``"replayed": true``) and nothing moves again.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import threading
import time
from dataclasses import dataclass

from client_demo.http import call, error_of
from client_demo.output import Printer
from client_demo.wire import (
    EXIT_OK,
    EXIT_REFUSED_GIFTS,
    ConnectOptions,
    Message,
    Session,
    http_url,
)

GIFT_COUNT_MAX = 9_999
RESEND_AFTER_S = 4.0
RETRIES_ON_REFUSAL_MAX = 5
RETRYABLE_CODES = frozenset({"rate_limited", "unavailable"})


@dataclass(slots=True)
class PendingGift:
    client_id: str
    gift: str
    count: int
    sent_at: float | None = None
    refusals: int = 0
    to: str | None = None


@dataclass(frozen=True, slots=True)
class GiftCommand:
    gift: str
    count: int
    to: str | None = None
    """A guest on stage (``@gina``), ``*`` for every guest (``@*``), None: the creator."""


def parse_gift(text: str) -> GiftCommand:
    """``rose``, ``rose 3``, ``rose:3`` or ``rose x3``, each optionally followed by
    ``@GUEST`` or ``@*`` (every guest on stage); raises ValueError."""
    to = None
    if "@" in text:
        text, _, to = text.partition("@")
        to = to.strip()
        if not to or (to != "*" and not all(c.isalnum() or c in "_.:-" for c in to)):
            raise ValueError(f"expected @GUEST or @*, got @{to!r}")
    words = text.replace(":", " ").split()
    if not words or len(words) > 2:
        raise ValueError(f"expected GIFT [COUNT], got {text!r}")
    count = 1
    if len(words) == 2:
        raw = words[1].removeprefix("x").removeprefix("×")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= GIFT_COUNT_MAX:
            raise ValueError(f"count must be 1..{GIFT_COUNT_MAX}, got {words[1]!r}")
        count = int(raw)
    return GiftCommand(words[0], count, to)


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Standard input's lines, read by a daemon thread (works for ttys, pipes and files)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError):
            pass  # no usable standard input
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return queue


class Viewer(Session):
    def __init__(
        self,
        options: ConnectOptions,
        out: Printer,
        *,
        sends: list[GiftCommand],
        read_stdin: bool,
        follow: bool,
        events_max: int | None,
        id_prefix: str | None,
        gifts_per_s: float,
    ) -> None:
        super().__init__(options, out)
        self.sends = sends
        self.read_stdin = read_stdin
        self.follow = follow
        self.events_max = events_max
        self.id_prefix = id_prefix or f"cli-{secrets.token_hex(5)}"
        self.gifts_per_s = gifts_per_s
        self.pending: dict[str, PendingGift] = {}
        self.sent_total = 0
        self.refused = 0
        self.events_seen = 0
        self.last_seq = 0
        self.epoch: str | None = None
        """The history ``last_seq`` counts in."""
        self.last_gift: GiftCommand | None = None
        self.input_done = False
        self.stream_ended = False
        self._next_send_at = 0.0

    # Connection events.

    async def on_welcome(self, welcome: Message) -> None:
        self.out.message(welcome)
        # Viewers watch live: what played while they were away is not replayed. A sequence
        # of another epoch (the server's Redis went back) says nothing about this one.
        epoch = welcome.get("epoch") or None
        if self.epoch is not None and epoch != self.epoch:
            self.last_seq = int(welcome["last_seq"])
        else:
            self.last_seq = max(self.last_seq, int(welcome["last_seq"]))
        self.epoch = epoch
        if welcome["stream"]["state"] == "ended":
            self.stream_ended = True
        if self.welcomes == 1:
            self.spawn(self._input())
            self.spawn(self._resend_unanswered())
        for pending in list(self.pending.values()):
            await self._send_pending(pending)
        self._check_done()

    async def on_message(self, message: Message) -> None:
        kind = message.get("type")
        if kind in ("gift", "gifts"):
            events = message["events"] if kind == "gifts" else [message]
            for event in events:
                if event["seq"] <= self.last_seq:
                    continue  # already shown
                if self.events_max is not None and self.events_seen >= self.events_max:
                    break
                self.last_seq = event["seq"]
                self.epoch = event.get("epoch") or self.epoch
                self.events_seen += 1
                self.out.message(event)
        elif kind == "history_changed":
            # The gifts from from_seq on were not true: the true ones follow, show them.
            self.out.message(message)
            self.epoch = str(message["epoch"])
            self.last_seq = min(self.last_seq, int(message["from_seq"]) - 1)
        elif kind == "gift_ack":
            self.out.message(message)
            self.pending.pop(message["id"], None)
        elif kind == "error" and message.get("id") in self.pending:
            self._refused(message)
        else:
            self.out.message(message)
            if kind == "stream" and message.get("state") == "ended":
                self.stream_ended = True
        self._check_done()

    def _refused(self, error: Message) -> None:
        pending = self.pending[error["id"]]
        self.out.message(error)
        if error["code"] in RETRYABLE_CODES and pending.refusals < RETRIES_ON_REFUSAL_MAX:
            # Refused without a change, or not known yet: the same id again, a little later.
            pending.refusals += 1
            detail = error.get("detail") or {}
            wait_s = detail.get("retry_after_ms", 500 * pending.refusals) / 1000
            pending.sent_at = time.monotonic() + wait_s
            self.spawn(self._send_later(pending, wait_s))
            return
        del self.pending[error["id"]]
        self.refused += 1

    async def _send_later(self, pending: PendingGift, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        if pending.client_id in self.pending:
            await self._send_pending(pending)

    def _check_done(self) -> None:
        if self.pending:
            return
        if self.stream_ended:
            self.finish()  # nothing more will come, and no gift would be accepted
        elif self.input_done:
            if self.events_max is None:
                enough = not self.follow
            else:
                enough = self.events_seen >= self.events_max
            if enough:
                self.finish()

    def exit_code(self) -> int:
        if self.pending:
            self.out.local(
                "unsettled",
                "gifts without an answer (their outcome is unknown; send them again with "
                f"the same ids): {', '.join(self.pending)}",
                ids=list(self.pending),
            )
        return EXIT_REFUSED_GIFTS if self.refused or self.pending else EXIT_OK

    # Sending.

    async def send_gift(self, command: GiftCommand) -> None:
        await self._pace()
        self.sent_total += 1
        pending = PendingGift(
            f"{self.id_prefix}-{self.sent_total}", command.gift, command.count, to=command.to
        )
        self.pending[pending.client_id] = pending
        self.last_gift = command
        await self._send_pending(pending)

    async def _send_pending(self, pending: PendingGift) -> None:
        message = {
            "type": "send_gift",
            "id": pending.client_id,
            "gift": pending.gift,
            "count": pending.count,
        }
        if pending.to is not None:
            message["to"] = pending.to
        if await self.send(message):
            pending.sent_at = time.monotonic()

    async def _pace(self) -> None:
        """Stay under the server's gift rate instead of collecting rate_limited refusals."""
        if self.gifts_per_s <= 0:
            return
        now = time.monotonic()
        wait_s = self._next_send_at - now
        self._next_send_at = max(now, self._next_send_at) + 1 / self.gifts_per_s
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    async def _resend_unanswered(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for pending in list(self.pending.values()):
                # No answer (a dropped message, a stalled server): same id again, never new.
                if pending.sent_at is None or now - pending.sent_at > RESEND_AFTER_S:
                    await self._send_pending(pending)

    # Input.

    async def _input(self) -> None:
        for command in self.sends:
            if self.stream_ended:
                break
            await self.send_gift(command)
        if self.read_stdin and not self.stream_ended:
            if sys.stdin.isatty() and not self.out.json_lines:
                self.out.local(
                    "help",
                    "type: GIFT [COUNT] [@GUEST|@*] | again | gifts | balance | guests | "
                    "join | leave | quit",
                )
            lines = _stdin_lines(asyncio.get_running_loop())
            while (line := await lines.get()) is not None:
                if not await self._command(line.strip()) or self.stream_ended:
                    break
        self.input_done = True
        self._check_done()

    async def _command(self, line: str) -> bool:
        """Run one input line; False to stop reading."""
        if not line or line.startswith("#"):
            return True
        word = line.split()[0].lower()
        if word in ("quit", "exit"):
            return False
        if word in ("again", "combo", "+"):
            if self.last_gift is None:
                self.out.local("usage", "nothing to repeat yet: send a gift first")
            else:
                await self.send_gift(self.last_gift)
        elif word in ("gifts", "catalog"):
            await self._show_catalog()
        elif word in ("balance", "wallet"):
            await self._show_wallet()
        elif word in ("guests", "stage"):
            await self._stage("GET", "")
        elif word in ("join", "leave"):
            await self._stage("POST", "/" + word)
        else:
            try:
                await self.send_gift(parse_gift(line))
            except ValueError as e:
                self.out.local("usage", str(e), line=line)
        return True

    async def _show_catalog(self) -> None:
        status, body = await call("GET", http_url(self.options.url) + "/api/catalog")
        if status != 200:
            self.out.local("catalog_error", code=error_of(body)[0])
            return
        gifts = body["gifts"]
        text = "  ".join(f"{g['id']} {g['price_coins']:,}" for g in gifts)
        self.out.local("catalog", text, answer=True, gifts=gifts)

    async def _stage(self, method: str, action: str) -> None:
        """``guests``: who is on stage; ``join``/``leave``: go on or off it (invited)."""
        url = http_url(self.options.url) + f"/api/streams/{self.options.stream_id}/guests"
        status, body = await call(method, url + action, token=self.options.token)
        if status != 200:
            code, message = error_of(body)
            self.out.local("stage_error", f"refused: {code}: {message}", code=code)
            return
        stage = ", ".join(f"{g['user_id']} ({g['state']})" for g in body["guests"])
        self.out.local("guests", f"on stage: {stage or 'nobody'}", answer=True, **body)

    async def _show_wallet(self) -> None:
        url = http_url(self.options.url) + "/api/me/wallet"
        status, body = await call("GET", url, token=self.options.token)
        if status != 200:
            self.out.local("wallet_error", code=error_of(body)[0])
            return
        text = f"{body['coins']:,} coins, {body['diamonds']:,} diamonds"
        self.out.local("wallet", text, answer=True, **body)
