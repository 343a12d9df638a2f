"""Run a server module with its garbage collections timed, for ``benchmarks.fanout``.

    python -m benchmarks.gc_watch OUT.json -m server.cli serve --port 9000

``gc.callbacks`` time every collection (start to stop, per generation), in wall time and
in the CPU time of the thread that collects (``time.thread_time``: the collector's own work;
the process's CPU time would also count its other threads, this module's writer among them,
which may run while a collection's Python callbacks have let go of the GIL); a thread writes
the summary to ``OUT.json`` twice a second: the longest pause and the count per
generation and, after SIGUSR1, a census of the tracked
objects by type (``census``, frozen ones only counted in ``tracked_objects``), which is
where the cost per connection shows, and the collections since the previous census
(``window``).
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

WRITE_EVERY_S = 0.5


class Watch:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.started_ns = 0
        self.started_cpu_ns = 0
        self.cpu_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.census_at = 0.0
        self.window: list[tuple[int, float, float]] = []
        """Collections since the previous census: (generation, wall ms, CPU ms)."""
        self.last_window: list[tuple[int, float, float]] = []
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.collected: dict[int, int] = {0: 0, 1: 0, 2: 0}
        self.census: dict[str, int] = {}
        self.census_wanted = False
        self.tracked = 0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started_ns = time.perf_counter_ns()
            self.started_cpu_ns = time.thread_time_ns()
            return
        generation = info["generation"]
        wall = (time.perf_counter_ns() - self.started_ns) / 1e6
        cpu = (time.thread_time_ns() - self.started_cpu_ns) / 1e6
        self.pauses[generation].append(wall)
        self.cpu_pauses[generation].append(cpu)
        self.window.append((generation, wall, cpu))
        self.collected[generation] += info["collected"]

    def ask_census(self) -> None:
        """On SIGUSR1, in the main thread: close the window now, so that the census's own
        work (it walks every object, in another thread) falls outside it."""
        self.last_window, self.window = self.window, []
        self.census_wanted = True

    def summary(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "max_pause_ms": round(max(max(p, default=0.0) for p in self.pauses.values()), 2),
            "max_pause_cpu_ms": round(
                max(max(p, default=0.0) for p in self.cpu_pauses.values()), 2
            ),
            "generations": {
                str(g): {
                    "collections": len(p),
                    "max_ms": round(max(p, default=0.0), 2),
                    "max_cpu_ms": round(max(self.cpu_pauses[g], default=0.0), 2),
                    "total_ms": round(sum(p), 1),
                    "collected": self.collected[g],
                }
                for g, p in self.pauses.items()
            },
            "tracked_objects": self.tracked,
            "threshold": gc.get_threshold(),
            "frozen": gc.get_freeze_count(),
            "census": self.census,
            "census_at": self.census_at,
            "window": {
                "collections": [sum(1 for g, _, _ in self.last_window if g == n) for n in range(3)],
                "max_pause_ms": round(max((w for _, w, _ in self.last_window), default=0.0), 2),
                "max_pause_cpu_ms": round(max((c for _, _, c in self.last_window), default=0.0), 2),
            },
        }

    def write_forever(self) -> None:
        while True:
            time.sleep(WRITE_EVERY_S)
            if self.census_wanted:
                self.census_wanted = False
                # Walking every object holds the GIL for a while: only when asked.
                objects = gc.get_objects()
                self.tracked = len(objects) + gc.get_freeze_count()
                counts = collections.Counter(type(o).__qualname__ for o in objects)
                self.census = dict(counts.most_common(40))
                del objects
                self.census_at = time.time()
            tmp = self.out.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(self.summary()))
            tmp.replace(self.out)


def main() -> None:
    out, *rest = sys.argv[1:]
    if rest[:1] == ["-m"]:
        rest = rest[1:]  # `gc_watch OUT -m module …` reads like the python command it wraps
    module, *args = rest
    watch = Watch(Path(out))
    gc.callbacks.append(watch.on_gc)
    signal.signal(signal.SIGUSR1, lambda *_: watch.ask_census())
    threading.Thread(target=watch.write_forever, daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
