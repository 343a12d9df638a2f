"""``python -m client_demo creator``: print a stream's gift feed, gapless, in order.

The feed resumes: ``--since SEQ`` prints every gift after SEQ first (the ones the feed still
holds; older ones are announced as a ``gap``), and after a dropped connection the client
sends ``resume`` from the last sequence it printed, with the ``epoch`` that sequence
belongs to. Events are printed strictly in sequence, each once: duplicates are skipped, and
events after a hole wait until the resume fills it. A ``history_changed`` (the server's
Redis lost its last writes) rewinds the order to before ``from_seq``: the true gifts from
there follow and are printed, though their numbers were printed before.
"""

from __future__ import annotations

import asyncio

from client_demo.http import call, error_of
from client_demo.output import Printer
from client_demo.wire import ConnectOptions, Message, Session, http_url

HOLE_WAIT_S = 1.5
HELD_EVENTS_MAX = 10_000


class InOrder:
    """Hands gift events over strictly by sequence, each once.

    ``last_seq`` is the last sequence handed over. Events at or below it are duplicates;
    events beyond ``last_seq + 1`` are held (bounded) until the events before them arrive.
    """

    def __init__(self, last_seq: int) -> None:
        self.last_seq = last_seq
        self.held: dict[int, Message] = {}

    def offer(self, events: list[Message]) -> list[Message]:
        """The events now ready, in order."""
        for event in events:
            seq = int(event["seq"])
            if seq > self.last_seq and len(self.held) < HELD_EVENTS_MAX:
                self.held[seq] = event
        return self._drain()

    def rewind(self, seq: int) -> None:
        """The gifts after ``seq`` that were handed over are no longer true (a
        ``history_changed``): accept those numbers again, and forget what is held."""
        self.last_seq = min(self.last_seq, seq)
        self.held = {s: e for s, e in self.held.items() if s <= seq}

    def skip_to(self, seq: int) -> list[Message]:
        """Events up to ``seq`` will never come (a ``gap``): stop waiting for them."""
        self.last_seq = max(self.last_seq, seq)
        return self._drain()

    def waiting(self) -> bool:
        """Events are held after a hole."""
        return bool(self.held)

    def _drain(self) -> list[Message]:
        ready = []
        while (event := self.held.pop(self.last_seq + 1, None)) is not None:
            ready.append(event)
            self.last_seq += 1
        for seq in [s for s in self.held if s <= self.last_seq]:
            del self.held[seq]
        return ready


class Creator(Session):
    def __init__(
        self,
        options: ConnectOptions,
        out: Printer,
        *,
        since: int | None,
        events_max: int | None,
    ) -> None:
        super().__init__(options, out)
        self.order: InOrder | None = None if since is None else InOrder(since)
        self.epoch: str | None = None
        """The history ``order.last_seq`` counts in (None: the stream's current one)."""
        self.events_max = events_max
        self.events_seen = 0
        self.ended_at_seq: int | None = None
        self._hole_check: asyncio.TimerHandle | None = None

    async def on_welcome(self, welcome: Message) -> None:
        self.out.message(welcome)
        last_seq = int(welcome["last_seq"])
        if self.order is None:
            self.order = InOrder(last_seq)  # no --since: from now on
            self.epoch = welcome.get("epoch") or None
        other_history = self.epoch is not None and welcome.get("epoch") != self.epoch
        if self.order.last_seq < last_seq or other_history:
            # After --since, or a reconnect: fill in from the feed. Live events arriving
            # meanwhile are held by InOrder until the resumed ones before them are in. In
            # another epoch, the server says whether what was printed is still true.
            await self.send(self._resume())
        if welcome["stream"]["state"] == "ended":
            self.ended_at_seq = last_seq
        self._check_done()

    async def on_message(self, message: Message) -> None:
        order = self.order
        if order is None:
            return  # on_welcome always runs first
        kind = message.get("type")
        if kind in ("gift", "gifts"):
            events = message["events"] if kind == "gifts" else [message]
            ready = order.offer(events)
            if ready and ready[-1].get("epoch"):
                self.epoch = str(ready[-1]["epoch"])
            self._print(ready)
            self._watch_hole()
        elif kind == "history_changed":
            self.out.message(message)
            self.epoch = str(message["epoch"])
            order.rewind(int(message["from_seq"]) - 1)
        elif kind == "gap":
            self.out.message(message)
            self._print(order.skip_to(int(message["to_seq"])))
        elif kind == "lag":
            self.out.message(message)  # frames were dropped for us: fill the hole
            await self.send(self._resume())
        else:
            self.out.message(message)
            if kind == "stream" and message.get("state") == "ended":
                self.ended_at_seq = int(message.get("seq", order.last_seq))
        self._check_done()

    def _resume(self) -> Message:
        """A ``resume`` from the last sequence printed, in the epoch it belongs to."""
        assert self.order is not None
        resume: Message = {"type": "resume", "since": self.order.last_seq}
        if self.epoch is not None:
            resume["epoch"] = self.epoch
        return resume

    def _print(self, events: list[Message]) -> None:
        for event in events:
            if self.events_max is not None and self.events_seen >= self.events_max:
                return
            self.events_seen += 1
            self.out.message(event)

    def _watch_hole(self) -> None:
        """Events after a hole that no resume fills for a while: ask for it again."""
        if self.order is None or not self.order.waiting() or self._hole_check is not None:
            return
        loop = asyncio.get_running_loop()
        self._hole_check = loop.call_later(HOLE_WAIT_S, self._hole_timeout)

    def _hole_timeout(self) -> None:
        self._hole_check = None
        if self.order is not None and self.order.waiting():
            self.spawn(self.send(self._resume()))
            self._watch_hole()

    def _check_done(self) -> None:
        if self.events_max is not None and self.events_seen >= self.events_max:
            self.finish()
        elif (
            self.ended_at_seq is not None
            and self.order is not None
            and self.order.last_seq >= self.ended_at_seq
        ):
            self.finish()  # the stream ended and every gift of it was printed


async def start_stream(url: str, token: str, stream_id: str, title: str, out: Printer) -> bool:
    status, body = await call(
        "POST",
        http_url(url) + "/api/streams",
        token=token,
        body={"stream_id": stream_id, "title": title},
    )
    if status in (200, 201):
        out.local("started", f"stream {stream_id} is live", **body)
        return True
    code, message = error_of(body)
    out.local("start_refused", f"cannot start {stream_id}: {code}: {message}", code=code)
    return False


async def end_stream(url: str, token: str, stream_id: str, out: Printer) -> bool:
    status, body = await call("POST", http_url(url) + f"/api/streams/{stream_id}/end", token=token)
    if status == 200:
        out.local("ended", f"stream {stream_id} has ended", **body)
        return True
    code, message = error_of(body)
    out.local("end_refused", f"cannot end {stream_id}: {code}: {message}", code=code)
    return False


async def _post(url: str, token: str, path: str, body: object, out: Printer, what: str) -> bool:
    status, reply = await call("POST", http_url(url) + path, token=token, body=body)
    if status in (200, 201):
        if isinstance(reply, dict) and "type" in reply:
            out.message(reply)  # the battle's start or result, as the rooms get it
        else:
            out.local(what, None, **(reply if isinstance(reply, dict) else {"reply": reply}))
        return True
    code, message = error_of(reply)
    out.local(f"{what}_refused", f"{what} refused: {code}: {message}", code=code)
    return False


async def battle_invite(
    url: str, token: str, stream_id: str, to_stream: str, seconds: int | None, out: Printer
) -> bool:
    """Invite ``to_stream`` to a battle with our stream."""
    body: dict[str, object] = {"from_stream": stream_id, "to_stream": to_stream}
    if seconds is not None:
        body["duration_s"] = seconds
    return await _post(url, token, "/api/battles", body, out, "battle_invited")


async def battle_answer(
    url: str, token: str, stream_id: str, from_stream: str, accept: bool, out: Printer
) -> bool:
    """Accept or decline ``from_stream``'s pending invitation to our stream."""
    status, state = await call("GET", http_url(url) + f"/api/streams/{stream_id}/battle")
    if status != 200:
        out.local("battle_refused", f"cannot read invitations: {error_of(state)[1]}")
        return False
    invites = [i for i in state["incoming"] if i["from_stream"] == from_stream]
    if not invites:
        out.local("battle_refused", f"no pending invitation from {from_stream}")
        return False
    action = "accept" if accept else "decline"
    body = {"from_stream": from_stream, "to_stream": stream_id}
    path = f"/api/battles/{invites[0]['battle_id']}/{action}"
    return await _post(url, token, path, body, out, f"battle_{action}ed")


async def battle_end(url: str, token: str, stream_id: str, out: Printer) -> bool:
    return await _post(url, token, f"/api/streams/{stream_id}/battle/end", {}, out, "battle_end")


async def stage_change(
    url: str, token: str, stream_id: str, guest: str, invite: bool, out: Printer
) -> bool:
    """Invite ``guest`` on stage, or take them off."""
    path = f"/api/streams/{stream_id}/guests" + ("" if invite else "/leave")
    return await _post(url, token, path, {"user_id": guest}, out, "guests")
