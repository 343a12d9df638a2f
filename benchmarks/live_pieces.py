"""``python -m benchmarks.live_pieces [--runs 20000] [--rounds 3]``: the pieces of
send_gift's live work (goals, a battle, the bigger gift event), each run ``--runs`` times
inside one ``EVAL``, timed by Redis' CPU time over the call (/proc): steady to about a
microsecond on a loaded machine, where a whole send_gift's cost swings with the load
(docs/benchmarks.md, "Live features"). The functions are the real fragments
(``_goals.lua``, ``_battle.lua``, …) on a stream set up as ``live_script`` does; a
plain send_gift through ``redis-benchmark`` is measured in each round for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from benchmarks import live_script
from benchmarks.hotpath import STREAM, _prepare, _redis_benchmark
from benchmarks.procs import cpu_seconds
from server.domain.limits import Limits
from server.ledger.embedded import RedisProcess
from server.ledger.keys import Keys
from server.ledger.scripts import _read, includes

_LOOP = r"""
local n, what = tonumber(ARGV[1]), ARGV[2]
local K_GOALS, K_BATTLE, K_TOP = KEYS[1], KEYS[2], KEYS[3]
local ms = now_ms()
local progress5 = {}
for g = 0, 4 do progress5[#progress5 + 1] = {goal_id = 'g' .. g, progress = 123456} end
for i = 1, n do
  if what == 'one_hget' then
    redis.call('HGET', K_GOALS, '@ids')
  elseif what == 'goals_read' then
    goals_for_gift(K_GOALS, 'rose', 1, 1)
  elseif what == 'goals_hmget_only' then
    redis.call('HMGET', K_GOALS, '@coins', '@g:rose')
    redis.call('HMGET', K_GOALS, 'p:g0', 'p:g1', 'p:g2', 'p:g3', 'p:g4')
  elseif what == 'goals_hset_5x1' then
    for g = 0, 4 do redis.call('HSET', K_GOALS, 'p:g' .. g, int(123456 + i)) end
  elseif what == 'goals_hset_1x5' then
    local v = int(123456 + i)
    redis.call('HSET', K_GOALS, 'p:g0', v, 'p:g1', v, 'p:g2', v, 'p:g3', v, 'p:g4', v)
  elseif what == 'goals' then
    goals_advance(K_GOALS, goals_for_gift(K_GOALS, 'rose', 1, 1))
  elseif what == 'battle' then
    if battle_scoring(K_BATTLE, ms) then
      redis.call('ZSCORE', K_TOP, 'hs')
      battle_score(K_BATTLE, K_TOP, 'hs', 1)
    end
  elseif what == 'event_plain' or what == 'event_live' then
    local live = what == 'event_live'
    cjson.encode({type = 'gift', seq = i, epoch = '', transfer_id = '1796186815319-0',
      stream_id = 'hot', sender_id = 'hs', sender_name = 'Sender', gift_id = 'rose',
      count = 1, combo = i, coins = 1, diamonds = 1, ts = ms, level = 5,
      goals = live and progress5 or nil, battle_id = live and 'bench-battle' or nil})
  end
end
return n
"""
PIECES = (
    "empty", "one_hget", "goals_hmget_only", "goals_read", "goals_hset_5x1",
    "goals_hset_1x5", "goals", "battle", "event_plain", "event_live",
)  # fmt: skip


def loop_source() -> str:
    """send_gift's prelude and fragments, then the loop over one piece."""
    body = _read("send_gift.lua")
    parts = [_read("_lib.lua"), *(_read(f) for f in includes(body))]
    return b"\n".join(parts).decode() + _LOOP


async def measure(runs: int, rounds: int) -> dict[str, float]:
    """Median Redis CPU (µs) per run of each piece, and of a whole plain send_gift."""
    measured: dict[str, list[float]] = {p: [] for p in (*PIECES, "send_gift_plain")}
    with tempfile.TemporaryDirectory(prefix="giftwire-bench-pieces-") as tmp:
        process = RedisProcess(Path(tmp) / "redis")
        process.start()
        assert process.process is not None
        pid = process.process.pid
        redis = Redis.from_url(process.url)
        try:
            limits = Limits(gifts_per_s_max=1_000_000, gift_burst_max=1_000_000)
            live_keys, plain_keys = Keys("pieces-live:"), Keys("pieces-plain:")
            await _prepare(redis, live_keys, limits)
            await live_script._start(redis, live_keys, limits, True, 5)
            plain_sha = await _prepare(redis, plain_keys, limits)
            sha = await redis.script_load(loop_source())
            keys = [live_keys.goals(STREAM), live_keys.battle(STREAM), live_keys.battle_top(STREAM)]
            for _ in range(rounds):
                for piece in PIECES:
                    cpu = cpu_seconds(pid)
                    await redis.evalsha(sha, len(keys), *keys, runs, piece)
                    measured[piece].append((cpu_seconds(pid) - cpu) / runs * 1e6)
                cpu = cpu_seconds(pid)
                await asyncio.to_thread(
                    _redis_benchmark, process.port, plain_sha, plain_keys, limits, runs, 16
                )
                measured["send_gift_plain"].append((cpu_seconds(pid) - cpu) / runs * 1e6)
        finally:
            await redis.aclose()
            process.stop()
    return {piece: round(statistics.median(v), 2) for piece, v in measured.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_pieces", description=__doc__)
    parser.add_argument("--runs", type=int, default=20_000, help="runs of each piece per EVAL")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all pieces")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1:
        raise SystemExit("--runs and --rounds are at least 1")
    for piece, us in asyncio.run(measure(args.runs, args.rounds)).items():
        print(f"| {piece} | {us} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
