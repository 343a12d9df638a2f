"""Keep full garbage collections short while a crowd sits connected.

CPython's full collection walks every object the collector tracks. Each idle viewer adds
about a hundred (its protocol, parser, tasks, queues: ``docs/benchmarks.md``), so with
10,000 viewers one full collection walks a million objects and stops the event loop for
hundreds of milliseconds: every viewer's next gift waits that long. Long-lived objects
need not be walked again and again: ``gc.freeze()`` moves everything that exists into a
permanent generation that collections skip.

The policy: freeze after the first accepted WebSocket (the application's start-up
objects) and again after every ``every`` further accepts (each burst of arrivals), after a
young collection so that fresh garbage is not frozen. Frozen objects are still freed by
reference counting; only garbage *cycles* among them wait. So once as many connections
have closed since the last freeze as half of those open at it (the crowd left, or half of
it was replaced), the freeze is undone and one full collection reclaims those cycles:
one long pause per half-turnover of the crowd instead of one per quarter of growth of the
heap (CPython's own rule), and none at all for a crowd that stays. ``every=0`` turns it
off.
"""

from __future__ import annotations

import asyncio
import gc


class FreezePolicy:
    """Counts accepted and closed connections of one process; freezes as above."""

    __slots__ = ("closed_since_freeze", "every", "open", "open_at_freeze", "scheduled",
                 "since_freeze")  # fmt: skip

    def __init__(self, every: int) -> None:
        self.every = every
        self.open = 0
        self.since_freeze = every  # so that the first accept freezes the start-up objects
        self.open_at_freeze = 0
        self.closed_since_freeze = 0
        self.scheduled = False

    def opened(self) -> None:
        self.open += 1
        self.since_freeze += 1
        if self.every and self.since_freeze >= self.every and not self.scheduled:
            self.scheduled = True
            # At the end of this loop turn, not inside the protocol callback.
            asyncio.get_running_loop().call_soon(self.freeze)

    def closed(self) -> None:
        self.open -= 1
        self.closed_since_freeze += 1
        if self.open_at_freeze and self.closed_since_freeze * 2 >= self.open_at_freeze:
            self.open_at_freeze = 0
            asyncio.get_running_loop().call_soon(self.thaw)

    def thaw(self) -> None:
        """Give the frozen objects back to the collector and reclaim their cycles."""
        gc.unfreeze()
        gc.collect()

    def freeze(self) -> None:
        self.scheduled = False
        gc.collect(1)  # young garbage (handshake leftovers) is not made permanent
        gc.freeze()
        self.since_freeze = 0
        self.closed_since_freeze = 0
        self.open_at_freeze = max(self.open, 1)


_policies: dict[int, FreezePolicy] = {}


def freeze_policy(every: int) -> FreezePolicy:
    """The process's policy (one per process: the collector is per process)."""
    policy = _policies.get(every)
    if policy is None:
        policy = _policies[every] = FreezePolicy(every)
    return policy
