"""``--only live``: what the live features cost the hot path, measured in one run.

The end-to-end hot-path measurement (``hotpath.measure_end_to_end``: 64 gifters over
WebSockets into 32 rooms of one ``giftwire serve``) on two kinds of rooms, alternating
round by round (plain, live, plain, live, …) so that the machine's other load falls on
both sides alike:

* ``plain``: rooms with nothing running but what every gift always does (levels included:
  every gift moves its gifter's lifetime coins on the creator's ladder);
* ``live``: the 32 rooms battle in pairs for the whole round (every gift scores for its
  side and its side's top gifters) and each room has ``GOALS_PER_ROOM`` goals (coins and
  a count of the gift, alternately), which every gift advances.

Per round: gifts/s, the server's CPU per gift, Redis' CPU per gift and EVALSHA's
``usec_per_call`` (nearly all of them send_gift) over the sending phase. Reported: the
ratio live / plain of each pair of rounds (for gifts/s below 1 means live is slower; for
the costs per gift above 1 means live costs more), their median and range.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import live_script
from benchmarks.hotpath import Progress, measure_end_to_end

ROUNDS = 3
BATTLE_S = 600
"""Longer than any round: the battles run from before the first gift to after the last."""
GOALS_PER_ROOM = 5
SIDES: dict[str, dict[str, int]] = {
    "plain": {},
    "live": {"battle_s": BATTLE_S, "goals_per_room": GOALS_PER_ROOM},
}
TARGET_RATIO = 0.9
"""Issue 14: gifts/s with a battle and goals running at least 0.9x without them."""
MEASURES = ("gifts_per_s", "server_cpu_us_per_gift", "redis_cpu_us_per_gift",
            "evalsha_usec_per_call")  # fmt: skip
SCRIPT_MEASURES = ("runs_per_s", "redis_cpu_us_per_run", "evalsha_usec_per_call")


def check_rounds(rounds: int) -> int:
    """``--live-rounds``: at least one pair of rounds, at most 20 (a run of a few minutes
    per round pair at scale 1 is already long on a shared machine)."""
    if not 1 <= rounds <= 20:
        raise SystemExit(f"--live-rounds: {rounds} is not between 1 and 20")
    return rounds


async def measure(
    redis_url: str, redis_port: int, redis_pid: int, log_dir: Path, progress: Progress,
    scale: float, rounds: int = ROUNDS,
) -> dict[str, Any]:  # fmt: skip
    """send_gift alone, then end to end: both sides ``rounds`` times each, interleaved;
    then ``summarize``."""
    script = await live_script.measure(
        redis_url, redis_port, redis_pid, progress, scale, check_rounds(rounds), GOALS_PER_ROOM
    )
    measured: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for number in range(1, check_rounds(rounds) + 1):
        for side, options in SIDES.items():
            progress(f"live features: {side} rooms, round {number} of {rounds}")
            one = await measure_end_to_end(
                redis_url, log_dir, progress, scale, {}, redis_pid=redis_pid, **options
            )
            one["load_average"] = load_average()
            measured[side].append(one)
    return summarize(measured, script)


def pair_ratios(
    measured: dict[str, list[dict[str, Any]]], measures: tuple[str, ...], side: str = "live"
) -> dict[str, Any]:
    """Each measure's ``side`` / plain ratio per pair of rounds, their median and range,
    and each side's median; a measure some round lacks is left out."""
    plain, live = measured["plain"], measured[side]
    if not plain or len(plain) != len(live):
        raise ValueError("live and plain need the same number of rounds, at least one")
    ratios: dict[str, Any] = {}
    for key in measures:
        if not all(key in r for r in (*plain, *live)):
            continue
        pairs = [lv[key] / pl[key] for pl, lv in zip(plain, live, strict=True) if pl[key]]
        if not pairs:
            continue
        ratios[key] = {
            "pairs": [round(p, 3) for p in pairs],
            "median": round(statistics.median(pairs), 3),
            "min": round(min(pairs), 3),
            "max": round(max(pairs), 3),
            "plain_median": round(statistics.median(r[key] for r in plain), 1),
            "live_median": round(statistics.median(r[key] for r in live), 1),
        }
    return ratios


def summarize(
    measured: dict[str, list[dict[str, Any]]],
    script: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The end-to-end rounds (and send_gift alone, ``live_script``) as ratios, every round
    kept. Pure, so that it is unit-tested."""
    ratios = pair_ratios(measured, MEASURES)
    plain, live = measured["plain"], measured["live"]
    gifts = ratios.get("gifts_per_s")
    result: dict[str, Any] = {
        "options": {"battle_s": BATTLE_S, "goals_per_room": GOALS_PER_ROOM, "battles": 16},
        "rounds": len(plain),
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(gifts and gifts["median"] >= TARGET_RATIO),
        "reconciled": all(r["reconciled"] for r in (*plain, *live)),
        "refused": any(r["refused"] for r in (*plain, *live)),
        "plain": plain,
        "live": live,
    }
    if script is not None:
        result["script"] = {
            "ratios": {
                side: pair_ratios(script, SCRIPT_MEASURES, side)
                for side in script
                if side != "plain"
            },
            "rounds": script,
        }
    return result


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine shows here."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


_SCRIPT_LABELS = {
    "runs_per_s": "send_gift alone: runs/s (redis-benchmark -P 16)",
    "redis_cpu_us_per_run": "send_gift alone: Redis CPU per run (µs)",
    "evalsha_usec_per_call": "send_gift alone: µs per call (commandstats)",
}
_LABELS = {
    "gifts_per_s": "gifts/s end to end",
    "server_cpu_us_per_gift": "server CPU per gift (µs)",
    "redis_cpu_us_per_gift": "Redis CPU per gift (µs)",
    "evalsha_usec_per_call": "send_gift in Redis (µs per call, commandstats)",
}


def table(result: dict[str, Any]) -> str:
    """The Markdown table of docs/benchmarks.md's live-features section."""
    lines = [
        f"| measure (median of {result['rounds']} rounds) | plain rooms "
        "| 16 battles + 5 goals a room | live / plain per pair (median, range) |",
        "|---|---:|---:|---|",
    ]
    lines.extend(_rows(result["ratios"], _LABELS))
    if "script" in result:
        lines.extend(_rows(result["script"]["ratios"]["live"], _SCRIPT_LABELS))
        lines += [
            "",
            "| send_gift alone, Redis CPU per run (µs, median) | plain | battle | goals "
            "| battle + goals |",
            "|---|---:|---:|---:|---:|",
        ]
        for key in ("redis_cpu_us_per_run", "evalsha_usec_per_call"):
            by_side = result["script"]["ratios"]
            cells = [_number(by_side["live"][key]["plain_median"])] + [
                f"{_number(by_side[s][key]['live_median'])} ({by_side[s][key]['median']:.3f}×)"
                for s in ("battle", "goals", "live")
                if s in by_side and key in by_side[s]
            ]
            lines.append(f"| {_SCRIPT_LABELS[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float) -> str:
    """Rates as whole numbers, microseconds to a tenth."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}"


def _rows(ratios: dict[str, Any], labels: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for key, label in labels.items():
        r = ratios.get(key)
        if r is None:
            continue
        lines.append(
            f"| {label} | {_number(r['plain_median'])} | {_number(r['live_median'])} "
            f"| {r['median']:.3f}× ({r['min']:.3f}–{r['max']:.3f}) |"
        )
    return lines
