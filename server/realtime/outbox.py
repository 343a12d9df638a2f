"""A connection's bounded outgoing queue and how it is written.

The room never awaits a viewer: it hands a frame here and moves on. Everything a connection
can make the server hold is bounded here, whatever kind of frame it is:

- droppable frames (live gifts, stats, leaderboards) are dropped and counted once
  ``frames_max`` frames or ``bytes_max`` bytes wait; the viewer is told how many with a
  ``lag`` message once it has drained half of its queue;
- frames that must not be lost (welcome, acks, errors, resumed and repaired gifts) are
  queued past that bound, up to twice it (plus the acks of the gifts in flight); a frame
  beyond that closes the connection at once with 4008 (``CloseCode.SLOW_CONSUMER``). The
  owner stops reading the socket while the queue is at its bound (a client cannot make it
  answer more), and resumes and repairs ask ``has_room`` before each frame and wait in
  ``wait_room``, so only a broken owner gets there;
- a connection that stays behind (full, or waited for) for ``lagging_s_max`` without
  draining half its queue is closed with 4008.

Writing. With a ``FrameSink`` (giftwire's own uvicorn protocol provides one), a frame
pushed while the queue is empty and the socket's buffer is below its high-water mark is
"corked": its bytes (framed once for the whole room) are kept, and every connection's
corked bytes are written in one call at the end of the event loop's turn. No task switch,
no event, no per-viewer framing, and one system call for all the frames one connection got
in that turn (a burst of acks from one pipeline reply, an ack and the gift it caused).
Only when the socket backs up do frames wait in the queue, and only then does a writer task
exist: it sends them, several per write, as soon as the buffer drains, and ends when the
queue is empty (an idle connection costs no task here). Without a sink (any other ASGI
server) every frame goes through the writer task and the ASGI ``send``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable

from server.domain.limits import IN_FLIGHT_GIFTS_MAX, SEND_QUEUE_BYTES_MAX_DEFAULT, WRITE_BYTES_MAX
from server.protocol.close_codes import CloseCode
from server.protocol.codec import OutFrame
from server.realtime.ports import FrameSink as FrameSink  # the port, kept importable here

SendFrame = Callable[[OutFrame], Awaitable[None]]
MakeLagNotice = Callable[[int], OutFrame]


class _Corks:
    """The outboxes of one event loop with corked bytes; written once per loop turn."""

    __slots__ = ("_loop", "_scheduled", "dirty")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.dirty: list[Outbox] = []
        self._scheduled = False

    def add(self, outbox: Outbox) -> None:
        self.dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self.dirty = self.dirty, []
        for outbox in dirty:
            outbox.uncork()


_CORKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Corks] = weakref.WeakKeyDictionary()


def _corks() -> _Corks:
    loop = asyncio.get_running_loop()
    corks = _CORKS.get(loop)
    if corks is None:
        corks = _CORKS[loop] = _Corks(loop)
    return corks


class Outbox:
    __slots__ = (
        "_bytes", "_bytes_max", "_corked", "_corks", "_deadline", "_frames", "_frames_max",
        "_full_since", "_lagging_s_max", "_on_drop", "_room_waiter", "_send", "_sink",
        "_writer", "close_code", "close_reason", "dropped", "lag_notice", "on_close",
    )  # fmt: skip

    def __init__(
        self,
        send: SendFrame,
        *,
        frames_max: int,
        bytes_max: int = SEND_QUEUE_BYTES_MAX_DEFAULT,
        lagging_s_max: float,
        lag_notice: MakeLagNotice | None = None,
        on_drop: Callable[[int], None] | None = None,
        sink: FrameSink | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``on_close`` is called once when the owner must close the socket: ``close`` was
        called (see ``close_code``), or the writer found the connection gone.
        ``lag_notice`` makes the ``lag`` frame (set by the connection that owns this)."""
        self._send = send
        self._sink = sink
        self._corked: list[bytes] = []
        self._corks = _corks()
        # A list, not a deque: it is empty nearly always, and an empty deque costs about
        # 600 bytes per connection against 56 (popping the front of at most
        # 2 * frames_max entries is cheap).
        self._frames: list[OutFrame] = []
        self._bytes = 0
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._lagging_s_max = lagging_s_max
        self.lag_notice = lag_notice
        self._on_drop = on_drop
        self.on_close = on_close
        self._writer: asyncio.Task[None] | None = None
        self._full_since: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._room_waiter: asyncio.Future[bool] | None = None
        self.dropped = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def has_room(self) -> bool:
        """True while a droppable frame would be queued (the queue is below its bounds)."""
        return (
            self.close_code is None
            and len(self._frames) < self._frames_max
            and self._bytes < self._bytes_max
        )

    def _hard_frames_max(self) -> int:
        # Twice the bound, and room for the acks of every gift in flight when the owner
        # stopped reading the socket at the bound.
        return 2 * self._frames_max + IN_FLIGHT_GIFTS_MAX

    def _drained(self) -> bool:
        return len(self._frames) < self._frames_max // 2 and self._bytes < self._bytes_max // 2

    async def wait_room(self) -> bool:
        """Wait until the queue has drained below half its bounds: True, or False once
        the connection is closing. Waiting counts as lagging (closed with 4008 after
        ``lagging_s_max``)."""
        if self.close_code is not None:
            return False
        if self._drained():
            return True
        self._behind()
        if self._room_waiter is None:
            self._room_waiter = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._room_waiter)

    def push(self, frame: OutFrame, *, droppable: bool = True, cork: bool = True) -> bool:
        """Queue (or write) a frame; False when it was dropped: the queue is full.

        ``cork=False`` writes at once when nothing is corked or queued: a broadcast sends
        one frame to each connection per turn, which corking would only delay. A frame
        that must not be dropped, pushed past twice the bounds, closes the connection.
        """
        if self.close_code is not None:
            return False
        frames = self._frames
        if not frames:
            corked = self._corked
            if corked:
                corked.append(frame.wire)
                return True
            sink = self._sink
            if sink is not None:
                if not cork:
                    if sink.try_write(frame.wire):
                        if self.dropped:
                            self._caught_up(sink)
                        return True
                elif sink.writable():
                    corked.append(frame.wire)
                    self._corks.add(self)
                    return True
        elif len(frames) >= self._frames_max or self._bytes >= self._bytes_max:
            if droppable:
                self._drop()
                return False
            if len(frames) >= self._hard_frames_max() or self._bytes >= 2 * self._bytes_max:
                self.close(CloseCode.SLOW_CONSUMER, "too slow: send queue over its bound")
                return False
            self._behind()
        frames.append(frame)
        self._bytes += len(frame)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def uncork(self) -> None:
        """Write the corked frames (called once per loop turn); report drops caught up."""
        corked, self._corked = self._corked, []
        sink = self._sink
        if not corked or sink is None or self.close_code is not None:
            return
        sink.write(corked[0] if len(corked) == 1 else b"".join(corked))
        if self.dropped and self._drained():
            self._caught_up(sink)

    def _behind(self) -> None:
        """The connection is at its bound: start the clock that closes it with 4008."""
        if self._full_since is None:
            self._full_since = time.monotonic()
            self._deadline = asyncio.get_running_loop().call_later(
                self._lagging_s_max, self._check_lagging
            )

    def _drop(self) -> None:
        self._behind()
        self.dropped += 1
        if self._on_drop:
            self._on_drop(1)

    def _caught_up(self, sink: FrameSink | None) -> None:
        """Half the queue drained: stop the clock, say how much was missed, wake a resume."""
        self._full_since = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            if self.lag_notice is not None:
                notice = self.lag_notice(dropped)
                if sink is not None:
                    sink.write(notice.wire)
                else:
                    self._frames.insert(0, notice)
                    self._bytes += len(notice)
        self._wake(True)

    def _wake(self, result: bool) -> None:
        waiter, self._room_waiter = self._room_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def _check_lagging(self) -> None:
        self._deadline = None
        if self._full_since is not None:
            self.close(CloseCode.SLOW_CONSUMER, "too slow: reconnect and resume")

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the writer to stop; the owner closes the socket with ``close_code``."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._frames.clear()
            self._bytes = 0
            self._corked.clear()
            if self._deadline is not None:
                self._deadline.cancel()
            self._wake(False)
            self._notify_close()

    def _notify_close(self) -> None:
        self._wake(False)
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def stop(self) -> None:
        """The connection is over: stop the writer task, if one is running."""
        self.on_close = None
        self._wake(False)
        if self._writer is not None:
            self._writer.cancel()

    async def _drain(self) -> None:
        """Write the queued frames, then end; a later backlog starts a new writer."""
        try:
            if self._sink is not None:
                await self._drain_sink(self._sink)
            else:
                await self._drain_send()
        finally:
            self._writer = None

    async def _drain_send(self) -> None:
        frames = self._frames
        try:
            while frames and self.close_code is None:
                frame = frames.pop(0)
                self._bytes -= len(frame)
                await self._send(frame)
                if (self.dropped or self._full_since is not None) and self._drained():
                    self._caught_up(None)
            self._wake(True)  # (the loop caught up already when it had dropped or waited)
        except Exception:
            self._notify_close()  # the peer went away while we wrote

    async def _drain_sink(self, sink: FrameSink) -> None:
        frames = self._frames
        while frames and self.close_code is None:
            if not sink.writable():
                if not await sink.wait_writable():
                    self._notify_close()  # the connection is gone
                    return
                continue
            if self._corked:
                self.uncork()  # corked frames were pushed before the queued ones
            batch: list[bytes] = []
            size = 0
            for frame in frames:
                if size >= WRITE_BYTES_MAX:
                    break
                wire = frame.wire
                batch.append(wire)
                size += len(wire)
            for frame in frames[: len(batch)]:
                self._bytes -= len(frame)
            del frames[: len(batch)]
            sink.write(b"".join(batch))
            if (self.dropped or self._full_since is not None) and self._drained():
                self._caught_up(sink)
        if self._room_waiter is not None and self.close_code is None:
            self._caught_up(sink)
