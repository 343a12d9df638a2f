"""A connection's bounded outgoing queue and the task that writes it.

The room never awaits a viewer: it appends a frame here and moves on. When the queue is
full, further droppable frames (gift broadcasts, stats) are dropped and counted; the viewer
is told how many with a ``lag`` message once it catches up. A viewer that stays at its
limit for ``lagging_s_max`` (it has not drained half its queue since the first drop) is
closed with 4008. Frames that must not be lost (acks,
errors, welcome) are never dropped; their number is bounded by the per-connection message
rate limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from server.protocol.close_codes import CloseCode

Frame = str | bytes
SendFrame = Callable[[Frame], Awaitable[None]]
MakeLagNotice = Callable[[int], Frame]


class Outbox:
    def __init__(
        self,
        send: SendFrame,
        *,
        frames_max: int,
        lagging_s_max: float,
        lag_notice: MakeLagNotice,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self._send = send
        self._frames: deque[Frame] = deque()
        self._frames_max = frames_max
        self._lagging_s_max = lagging_s_max
        self._lag_notice = lag_notice
        self._on_drop = on_drop
        self._wakeup = asyncio.Event()
        self.closed = asyncio.Event()
        """Set by ``close``: the owner must close the socket even if a write is stuck."""
        self._full_since: float | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.dropped = 0
        self.dropped_total = 0
        self.close_code: CloseCode | None = None
        self.close_reason = ""

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Frame, *, droppable: bool = True) -> bool:
        """Queue a frame; False when it was dropped because the queue is full."""
        if self.close_code is not None:
            return False
        if droppable and len(self._frames) >= self._frames_max:
            if self._full_since is None:
                self._full_since = time.monotonic()
                self._deadline = asyncio.get_running_loop().call_later(
                    self._lagging_s_max, self._check_lagging
                )
            self.dropped += 1
            self.dropped_total += 1
            if self._on_drop:
                self._on_drop(1)
            return False
        self._frames.append(frame)
        self._wakeup.set()
        return True

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
            self._wakeup.set()
            self.closed.set()
            if self._deadline is not None:
                self._deadline.cancel()

    async def run(self) -> None:
        """Write queued frames until closed. Returns when ``close`` was called."""
        frames = self._frames
        while self.close_code is None:
            if not frames:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._send(frames.popleft())
            if self.dropped and len(frames) < self._frames_max // 2:
                # Caught up: say how much was missed (the client may resume from the feed).
                notice, self.dropped = self._lag_notice(self.dropped), 0
                self._full_since = None
                await self._send(notice)
