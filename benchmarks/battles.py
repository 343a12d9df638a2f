"""``python -m benchmarks.battles [--scale 1.0] [--out benchmarks/results/battles.json]``:
what a running battle costs the hot path, measured in one run.

Gifts per second end to end (64 gifters over WebSockets into 32 rooms of one ``giftwire
serve``, as ``benchmarks.hotpath`` measures it) with no battle, and with the 32 rooms
battling in pairs for the whole run (every gift then also scores: send_gift reads the
battle hash and writes the score and the side's top gifters, and each process's battle
watch reads both sides of 16 battles every 0.5 s). The rounds alternate; reported are the
ratio with / without of the best rounds and of each pair of rounds. Goals (another lane)
are not in this run yet.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.hotpath import measure_end_to_end
from benchmarks.procs import REPO, machine
from server.ledger.embedded import RedisProcess

ROUNDS = 3
BATTLE_S = 600
"""Longer than any round: the battles run from before the first gift to after the last."""


def _say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


async def run(scale: float, rounds: int = ROUNDS) -> dict[str, Any]:
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "machine": machine(), "scale": scale}  # fmt: skip
    off_rounds, on_rounds = [], []
    with tempfile.TemporaryDirectory(prefix="giftwire-bench-battles-") as tmp:
        log_dir = Path(tmp)
        redis = RedisProcess(log_dir / "redis")
        redis.start()
        try:
            for number in range(1, rounds + 1):
                _say(f"no battle, round {number}")
                off_rounds.append(await measure_end_to_end(redis.url, log_dir, _say, scale, {}))
                _say(f"16 battles, round {number}")
                on_rounds.append(
                    await measure_end_to_end(redis.url, log_dir, _say, scale, {}, battle_s=BATTLE_S)
                )
        finally:
            redis.stop()
    off = max(off_rounds, key=lambda r: r["gifts_per_s"])
    on = max(on_rounds, key=lambda r: r["gifts_per_s"])
    result.update({
        "off": off,
        "on": on,
        "ratio_on_off": round(on["gifts_per_s"] / off["gifts_per_s"], 3),
        # Each battle round against the round just before it: drift in the machine's
        # other load falls on both sides of a pair.
        "paired_ratios": [
            round(n["gifts_per_s"] / f["gifts_per_s"], 3)
            for f, n in zip(off_rounds, on_rounds, strict=True)
        ],
        "all_rounds_gifts_per_s": {
            "off": [r["gifts_per_s"] for r in off_rounds],
            "on": [r["gifts_per_s"] for r in on_rounds],
        },
        "reconciled": all(r["reconciled"] for r in (*off_rounds, *on_rounds)),
    })  # fmt: skip
    return result


def table(result: dict[str, Any]) -> str:
    off, on = result["off"], result["on"]
    return "\n".join([
        "| measure | no battle | 16 battles |",
        "|---|---|---|",
        f"| gifts/s end to end (best of {len(result['paired_ratios'])}) "
        f"| {off['gifts_per_s']:,} | {on['gifts_per_s']:,} ({result['ratio_on_off']:.2f}×) |",
        f"| with / without, each pair of rounds | | "
        f"{', '.join(map(str, result['paired_ratios']))} |",
        f"| server CPU per gift (µs) | {off['server_cpu_us_per_gift']} "
        f"| {on['server_cpu_us_per_gift']} |",
        f"| ack latency p50 / p99 (ms) | {off['ack_latency_ms']['p50']} / "
        f"{off['ack_latency_ms']['p99']} | {on['ack_latency_ms']['p50']} / "
        f"{on['ack_latency_ms']['p99']} |",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.battles", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply gift counts")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of each side")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/battles.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.scale, args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
