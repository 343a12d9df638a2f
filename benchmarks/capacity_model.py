"""The capacity model of ``docs/capacity.md``: pure arithmetic over measured coefficients.

``benchmarks/capacity.py`` measures the coefficients, checks ``process_load`` against a run
at 1/100 scale, and writes ``plan`` for the full target into its JSON; the doc quotes it.
Every rule here mirrors the code it models (named next to it); the assumptions that are
not measurements are the arguments of ``plan``, each stated in the doc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from server.domain.limits import Limits

BATCH_S = 0.05
"""``GIFTWIRE_BATCH_MS`` as deployed (50 ms)."""
CONTROL_FRAMES_PER_S = 1.0
"""``stats`` and ``leaderboard``, each once per ``stats_interval_s`` (2 s) while gifts flow."""


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Measured in one run (``capacity.py``); µs are Redis' or the server's own CPU."""

    frame_bytes_1: int
    frame_bytes_50: int
    server_us_per_frame_fixed: float
    server_us_per_frame_byte: float
    idle_bytes_per_viewer: int
    debit_us: float
    credit_us_per_transfer: float
    relay_us_per_subscriber: float
    event_bytes: int

    @classmethod
    def of(cls, measured: dict[str, Any]) -> Coefficients:
        return cls(**{name: measured[name] for name in cls.__slots__})

    def frame_bytes(self, events: float) -> float:
        """A ``gifts`` frame of ``events`` events (JSON), linear between the measured 1 and 50."""
        per_event = (self.frame_bytes_50 - self.frame_bytes_1) / 49
        return self.frame_bytes_1 + per_event * (max(events, 1.0) - 1)

    def us_per_frame(self, frame_bytes: float) -> float:
        return self.server_us_per_frame_fixed + self.server_us_per_frame_byte * frame_bytes


def gift_frames(rate: float, viewers: int, limits: Limits) -> tuple[float, float]:
    """Frames per viewer per second and events per frame for ``rate`` gifts/s into a room of
    ``viewers`` on one process (``realtime/room.py``: below the hot threshold a frame per
    gift; above it a tick of ``max(batch, viewers / room_frames_per_s_max)``, at most
    ``batch_events_max`` events per frame)."""
    if rate <= 0:
        return 0.0, 0.0
    hot = min(20, max(1, limits.room_frames_per_s_max // max(viewers, 1)))
    if rate <= hot:
        return rate, 1.0
    tick_s = max(BATCH_S, viewers / limits.room_frames_per_s_max)
    per_tick = rate * tick_s
    frames = max(1, math.ceil(per_tick / limits.batch_events_max))
    return frames / tick_s, per_tick / frames


def process_load(c: Coefficients, rate: float, viewers: int, limits: Limits) -> dict[str, float]:
    """One server process holding ``viewers`` of one room fed ``rate`` gifts/s: frames/s it
    writes, its CPU (cores), its egress and its memory growth."""
    per_viewer, per_frame = gift_frames(rate, viewers, limits)
    gift_bytes = c.frame_bytes(per_frame)
    control_bytes = c.frame_bytes_1
    frames = viewers * (per_viewer + CONTROL_FRAMES_PER_S)
    cpu_us = viewers * (
        per_viewer * c.us_per_frame(gift_bytes)
        + CONTROL_FRAMES_PER_S * c.us_per_frame(control_bytes)
    )
    egress = viewers * (per_viewer * gift_bytes + CONTROL_FRAMES_PER_S * control_bytes)
    return {
        "gift_frames_per_viewer_s": round(per_viewer, 2),
        "events_per_frame": round(per_frame, 2),
        "frames_per_s": round(frames),
        # Every viewer is sent every gift, however the room frames them.
        "events_per_s": round(rate * viewers),
        "server_cpu": round(cpu_us / 1e6, 6),
        "egress_bytes_per_s": round(egress),
        "rss_growth_bytes": c.idle_bytes_per_viewer * viewers,
    }


def viewers_per_process(c: Coefficients, rate: float, limits: Limits, cpu_max: float) -> int:
    """The most viewers of one room a process holds within ``cpu_max`` of its core."""
    low, high = 1, 1_000_000
    while low < high:
        mid = (low + high + 1) // 2
        if process_load(c, rate, mid, limits)["server_cpu"] <= cpu_max:
            low = mid
        else:
            high = mid - 1
    return low


def plan(
    c: Coefficients,
    *,
    big_viewers: int = 1_000_000,
    small_rooms: int = 100_000,
    small_room_viewers: int = 20,
    gifts_per_s: float = 100_000,
    big_room_share: float = 0.01,
    cpu_max: float = 0.7,
    redis_cpu_max: float = 0.5,
    limits: Limits | None = None,
) -> dict[str, Any]:
    """Server processes, Redis primaries, memory and bandwidth for the whole target."""
    limits = limits or Limits()
    big_rate = gifts_per_s * big_room_share
    small_rate = (gifts_per_s - big_rate) / small_rooms
    big_per_process = viewers_per_process(c, big_rate, limits, cpu_max)
    big_processes = math.ceil(big_viewers / big_per_process)
    big = process_load(c, big_rate, big_per_process, limits)
    small_viewers = small_rooms * small_room_viewers
    small_one = process_load(c, small_rate, small_room_viewers, limits)
    rooms_per_process = math.floor(cpu_max / max(small_one["server_cpu"], 1e-9))
    small_per_process = rooms_per_process * small_room_viewers
    small_processes = math.ceil(small_viewers / small_per_process)
    redis_us = gifts_per_s * (c.debit_us + c.credit_us_per_transfer)
    # Level 1 of the tree: each event goes once to every process subscribed to its room.
    relay_us = (
        big_rate * big_processes * c.relay_us_per_subscriber
        + (gifts_per_s - big_rate) * c.relay_us_per_subscriber
    )
    big_shard_relay_cores = big_rate * big_processes * c.relay_us_per_subscriber / 1e6
    return {
        "assumptions": {
            "big_viewers": big_viewers,
            "small_rooms": small_rooms,
            "small_room_viewers": small_room_viewers,
            "gifts_per_s": gifts_per_s,
            "big_room_gifts_per_s": big_rate,
            "small_room_gifts_per_s": round(small_rate, 3),
            "cpu_max": cpu_max,
            "redis_cpu_max": redis_cpu_max,
        },
        "big_room": {
            "viewers_per_process": big_per_process,
            "processes": big_processes,
            "per_process": big,
            "egress_bytes_per_s": big["egress_bytes_per_s"] * big_processes,
        },
        "small_rooms": {
            "viewers_per_process": small_per_process,
            "processes": small_processes,
            "egress_bytes_per_s": small_one["egress_bytes_per_s"] * small_rooms,
        },
        "server_processes": big_processes + small_processes,
        "server_memory_bytes": c.idle_bytes_per_viewer * (big_viewers + small_viewers),
        "redis": {
            "gift_cores": round(redis_us / 1e6, 2),
            "relay_cores": round(relay_us / 1e6, 2),
            "primaries": math.ceil((redis_us + relay_us) / 1e6 / redis_cpu_max),
            "big_room_shard_relay_cores": round(big_shard_relay_cores, 2),
            "replicas_to_spread_big_room": math.ceil(big_shard_relay_cores / redis_cpu_max),
            "egress_to_servers_bytes_per_s": round(
                (big_rate * big_processes + gifts_per_s - big_rate) * c.event_bytes
            ),
        },
    }
