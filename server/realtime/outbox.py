"""A connection's bounded outgoing queue and how it is written.

The room never awaits a viewer: it hands a frame here and moves on. When the queue is
full, further droppable frames (gift broadcasts, stats) are dropped and counted; the viewer
is told how many with a ``lag`` message once it catches up. A viewer that stays at its
limit for ``lagging_s_max`` (it has not drained half its queue since the first drop) is
closed with 4008. Frames that must not be lost (acks,
errors, welcome) are never dropped; their number is bounded by the per-connection message
rate limit.

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
from typing import Protocol

from server.protocol.close_codes import CloseCode
from server.protocol.codec import OutFrame

Frame = OutFrame
SendFrame = Callable[[OutFrame], Awaitable[None]]
MakeLagNotice = Callable[[int], OutFrame]

WRITE_BYTES_MAX = 64 * 1024
"""Most bytes the writer task joins into one write when frames have queued up."""


class FrameSink(Protocol):
    """Writes complete WebSocket frames to one connection without awaiting.

    ``write`` takes one or more whole frames (``OutFrame.wire``) and hands them to the
    transport in order; it never blocks, so it may take the transport's buffer past its
    high-water mark by that one write. ``writable`` is True only while the connection is
    open and its buffer is below the high-water mark. ``wait_writable`` returns True once
    the buffer drained below the low-water mark, False when the connection can never be
    written again.
    """

    def writable(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def try_write(self, data: bytes) -> bool:
        """``write`` if ``writable``, in one call; False (nothing written) otherwise."""
        ...

    async def wait_writable(self) -> bool: ...


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
        "_corked", "_corks", "_deadline", "_frames", "_frames_max", "_full_since",
        "_lag_notice", "_lagging_s_max", "_on_drop", "_send", "_sink", "_writer",
        "close_code", "close_reason", "dropped", "dropped_total", "on_close",
    )  # fmt: skip

    def __init__(
        self,
        send: SendFrame,
        *,
        frames_max: int,
        lagging_s_max: float,
        lag_notice: MakeLagNotice,
        on_drop: Callable[[int], None] | None = None,
        sink: FrameSink | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """``on_close`` is called once when the owner must close the socket: ``close`` was
        called (see ``close_code``), or the writer found the connection gone."""
        self._send = send
        self._sink = sink
        self._corked: list[bytes] = []
        self._corks = _corks()
        # A list, not a deque: it is empty nearly always, and an empty deque costs about
        # 600 bytes per connection against 56 (popping the front of at most
        # frames_max entries is cheap).
        self._frames: list[OutFrame] = []
        self._frames_max = frames_max
        self._lagging_s_max = lagging_s_max
        self._lag_notice = lag_notice
        self._on_drop = on_drop
        self.on_close = on_close
        self._writer: asyncio.Task[None] | None = None
        self._full_since: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.dropped_total = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: OutFrame, *, droppable: bool = True, cork: bool = True) -> bool:
        """Queue (or write) a frame; False when it was dropped: the queue is full.

        ``cork=False`` writes at once when nothing is corked or queued: a broadcast sends
        one frame to each connection per turn, which corking would only delay.
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
        elif droppable and len(frames) >= self._frames_max:
            self._drop()
            return False
        frames.append(frame)
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
        if self.dropped and len(self._frames) < self._frames_max // 2:
            self._caught_up(sink)

    def _drop(self) -> None:
        if self._full_since is None:
            self._full_since = time.monotonic()
            self._deadline = asyncio.get_running_loop().call_later(
                self._lagging_s_max, self._check_lagging
            )
        self.dropped += 1
        self.dropped_total += 1
        if self._on_drop:
            self._on_drop(1)

    def _caught_up(self, sink: FrameSink) -> None:
        """Say how much was missed (the client may resume from the feed)."""
        notice, self.dropped = self._lag_notice(self.dropped), 0
        self._full_since = None
        sink.write(notice.wire)

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
            self._corked.clear()
            if self._deadline is not None:
                self._deadline.cancel()
            self._notify_close()

    def _notify_close(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback is not None:
            callback()

    def stop(self) -> None:
        """The connection is over: stop the writer task, if one is running."""
        self.on_close = None
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
                await self._send(frames.pop(0))
                if self.dropped and len(frames) < self._frames_max // 2:
                    notice, self.dropped = self._lag_notice(self.dropped), 0
                    self._full_since = None
                    await self._send(notice)
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
            del frames[: len(batch)]
            sink.write(b"".join(batch))
            if self.dropped and len(frames) < self._frames_max // 2:
                self._caught_up(sink)
