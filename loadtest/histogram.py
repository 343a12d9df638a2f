"""A bounded latency histogram: log-spaced buckets, 2 % relative error, exact maximum.

A run may record millions of delivery latencies; keeping them all would make the load
generator's memory grow with the run. Buckets grow by 2 % from 1 µs, so a 60 s latency
needs about 900 buckets and every percentile is within 2 % of the true value.
"""

from __future__ import annotations

import math

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


class Histogram:
    __slots__ = ("buckets", "count", "max_s", "total_s")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        index = int(math.log(us) / _LOG_GROWTH) if us > 1.0 else 0
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def merge(self, other: Histogram) -> None:
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile_s(self, fraction: float) -> float:
        """The smallest bucket bound below which ``fraction`` of the samples fall."""
        if not self.count:
            return 0.0
        rank = fraction * self.count
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(_GROWTH ** (index + 1) / 1e6, self.max_s)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int]:
        """count, mean, p50, p95, p99 and max in milliseconds (rounded to 0.01 ms)."""

        def ms(seconds: float) -> float:
            return round(seconds * 1000, 2)

        return {
            "count": self.count,
            "mean": ms(self.total_s / self.count) if self.count else 0.0,
            "p50": ms(self.percentile_s(0.50)),
            "p95": ms(self.percentile_s(0.95)),
            "p99": ms(self.percentile_s(0.99)),
            "max": ms(self.max_s),
        }
