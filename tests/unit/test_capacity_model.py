"""The capacity model (``benchmarks/capacity_model.py``) follows the room's own rules: a change
to ``server/realtime/room.py``'s coalescing must show up here, not silently in a plan."""

from __future__ import annotations

import pytest

from benchmarks.capacity_model import BATCH_S, Coefficients, gift_frames, plan, process_load
from server.domain.limits import Limits
from server.realtime.room import Room

COEFFICIENTS = Coefficients(
    frame_bytes_1=275, frame_bytes_50=13_795, server_us_per_frame_fixed=14.0,
    server_us_per_frame_byte=0.0006, idle_bytes_per_viewer=21_000, debit_us=95.0,
    credit_us_per_transfer=63.0, relay_us_per_subscriber=0.15, event_bytes=224,
)  # fmt: skip


def room_of(viewers: int, limits: Limits) -> Room:
    room = Room(
        "s",
        batch_ms=int(BATCH_S * 1000),
        batch_events_max=limits.batch_events_max,
        hot_events_per_s=20,  # GIFTWIRE_HOT_ROOM_EVENTS_PER_S's default
        on_gap=lambda room: None,
        frames_per_s_max=limits.room_frames_per_s_max,
    )
    room.connections = {object() for _ in range(viewers)}  # type: ignore[misc]
    return room


@pytest.mark.parametrize("viewers", [1, 20, 1_000, 1_540, 10_000, 100_000])
def test_the_tick_and_the_hot_threshold_are_the_rooms(viewers: int) -> None:
    limits = Limits()
    room = room_of(viewers, limits)
    threshold = room._hot_threshold()
    below, _ = gift_frames(threshold, viewers, limits)
    assert below == threshold  # a frame per gift up to the threshold
    frames, per_frame = gift_frames(threshold * 100, viewers, limits)
    assert per_frame <= limits.batch_events_max
    # Above it, a frame (or several full ones) per tick of the room's own length.
    assert frames * room.tick_s == pytest.approx(
        max(1, -(-threshold * 100 * room.tick_s // limits.batch_events_max))
    )


def test_a_process_within_its_share_and_the_plan_adds_up() -> None:
    limits = Limits()
    load = process_load(COEFFICIENTS, 1000, 1_000, limits)
    assert load["gift_frames_per_viewer_s"] == 20 and load["events_per_frame"] == 50
    assert load["events_per_s"] == 1000 * 1_000  # every viewer, every gift
    target = plan(COEFFICIENTS)
    big = target["big_room"]
    assert big["per_process"]["server_cpu"] <= 0.7
    assert big["processes"] * big["viewers_per_process"] >= 1_000_000
    assert target["server_processes"] == big["processes"] + target["small_rooms"]["processes"]
    assert target["redis"]["primaries"] * 0.5 >= target["redis"]["gift_cores"]
