"""The terminal client across a change of history (``docs/protocol.md``, *Epochs*).

The clients run in this process (``client_demo.creator.Creator``, ``client_demo.viewer.
Viewer``) against a real server. Redis "goes back in time" the way a restore from an older
copy does: the stream's hash and feed are put back as they were (``DUMP``/``RESTORE``),
and the next paid gifts reuse sequence numbers the clients have already printed. The
server notices, starts a new epoch and says ``history_changed``; the clients must print
the true gifts, and a client that was away must resume with the epoch it held.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

from client_demo.creator import Creator
from client_demo.output import Printer
from client_demo.viewer import Viewer
from client_demo.wire import ConnectOptions, Message
from server.domain.accounts import Role
from server.ledger.keys import Keys
from server.ledger.ledger import Ledger
from tests.integration.helpers import gift as send_gift
from tests.reliability.helpers import Peer
from tests.support.restore import StreamBackup
from tests.support.servers import ServerProcess, token

STREAM = "epochs1"
CREATOR = "star"
WAIT_S = 20.0


class Recorder(Printer):
    """Keeps every server message the client prints, in order."""

    def __init__(self) -> None:
        super().__init__(json_lines=True, out=io.StringIO(), err=io.StringIO())
        self.printed: list[Message] = []
        self.changed = asyncio.Event()

    def message(self, message: Message) -> None:
        if message.get("type") != "gifts":  # printed event by event (super calls us again)
            self.printed.append(message)
            self.changed.set()
        super().message(message)

    def gifts(self) -> list[tuple[int, str]]:
        """(seq, gift id) of each gift printed, in order."""
        return [(m["seq"], m["gift_id"]) for m in self.printed if m["type"] == "gift"]

    def changes(self) -> list[int]:
        return [m["from_seq"] for m in self.printed if m["type"] == "history_changed"]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def _live(ledger: Ledger) -> None:
    await ledger.start_stream(stream_id=STREAM, creator_id=CREATOR, title="Epochs")
    await ledger.top_up(payment_id="pay-bob", user_id="bob", coins=100_000)


async def _gift(ledger: Ledger, client_id: str, gift: str = "rose") -> None:
    await send_gift(ledger, client_id, sender="bob", gift_id=gift, stream=STREAM, creator=CREATOR)


def _options(server: ServerProcess, user: str, role: Role = Role.VIEWER) -> ConnectOptions:
    return ConnectOptions(url=server.ws_url(STREAM), stream_id=STREAM, token=token(user, role))


def _gate(session: Creator | Viewer) -> asyncio.Event:
    """Hold the session's next connection attempts until the returned event is set."""
    gate = asyncio.Event()
    gate.set()
    connect: Callable[[], Awaitable[bool]] = session._connection

    async def gated() -> bool:
        await gate.wait()
        return await connect()

    session._connection = gated  # type: ignore[method-assign]
    return gate


async def _running(session: Creator | Viewer, out: Recorder) -> asyncio.Task[int]:
    task = asyncio.get_running_loop().create_task(session.run())
    await out.wait_for(lambda: any(m["type"] == "welcome" for m in out.printed))
    return task


async def _stop(session: Creator | Viewer, task: asyncio.Task[Any]) -> None:
    session.finish()
    async with asyncio.timeout(WAIT_S):
        await task


async def test_the_creator_feed_prints_the_true_gifts_after_history_changes_live_and_away(
    server: ServerProcess, ledger: Ledger, keys: Keys
) -> None:
    await _live(ledger)
    out = Recorder()
    creator = Creator(_options(server, CREATOR, Role.CREATOR), out, since=None, events_max=None)
    gate = _gate(creator)
    task = await _running(creator, out)
    watcher = await Peer.open(server, token("watcher"), stream_id=STREAM)  # room open when away
    backup = StreamBackup(ledger.redis, keys, STREAM)
    try:
        epoch = watcher.welcome["epoch"]
        for i in range(4):
            await _gift(ledger, f"a{i}")
            if i == 1:
                await backup.take()  # the copy holds gifts 1 and 2
        await out.wait_for(lambda: len(out.gifts()) == 4)

        # Live: Redis is restored to gift 2; the next gift is numbered 3 again.
        await backup.restore()
        await _gift(ledger, "b0", gift="heart")
        await out.wait_for(lambda: (3, "heart") in out.gifts())
        assert out.changes() == [3]
        assert out.gifts() == [(1, "rose"), (2, "rose"), (3, "rose"), (4, "rose"), (3, "heart")]
        assert creator.epoch not in (None, epoch)
        await backup.take()  # the copy holds the new history up to 3
        await _gift(ledger, "b1")
        await out.wait_for(lambda: len(out.gifts()) == 6)

        # Away: the creator's connection drops; meanwhile Redis is restored to the new 3,
        # two gifts are numbered 4 and 5, and the server (which the watcher keeps in the
        # room) starts a third epoch. The creator resumes from 4 with the epoch it held.
        gate.clear()
        assert creator.ws is not None
        await creator.ws.close()
        await backup.restore()
        await _gift(ledger, "c0", gift="doughnut")
        await _gift(ledger, "c1")
        await watcher.wait_for(
            lambda: len([m for m in watcher.other if m["type"] == "history_changed"]) == 2
        )
        await watcher.wait_for(lambda: 5 in watcher.seqs)
        gate.set()
        await out.wait_for(lambda: (5, "rose") in out.gifts())
        assert out.changes() == [3, 4]
        assert out.gifts()[6:] == [(4, "doughnut"), (5, "rose")]
        stream = await ledger.stream(STREAM)
        assert stream is not None and creator.epoch == stream.epoch
    finally:
        await watcher.close()
        gate.set()
        await _stop(creator, task)


async def test_a_viewer_shows_the_gifts_that_reuse_numbers_after_a_history_change(
    server: ServerProcess, ledger: Ledger, keys: Keys
) -> None:
    await _live(ledger)
    out = Recorder()
    viewer = Viewer(
        _options(server, "alice"), out, sends=[], read_stdin=False, follow=True,
        events_max=None, id_prefix=None, gifts_per_s=10.0,
    )  # fmt: skip
    task = await _running(viewer, out)
    backup = StreamBackup(ledger.redis, keys, STREAM)
    try:
        for i in range(4):
            await _gift(ledger, f"a{i}")
            if i == 1:
                await backup.take()
        await out.wait_for(lambda: len(out.gifts()) == 4)
        await backup.restore()
        await _gift(ledger, "b0", gift="heart")
        await out.wait_for(lambda: (3, "heart") in out.gifts())
        assert out.changes() == [3]
        assert viewer.last_seq == 3
    finally:
        await _stop(viewer, task)
