-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_run (cluster mode, step 3 of accepting, the inviter's slot): 'run' flips side
-- 'a' from starting to running with step 1's times, and tells the inviter's room; from
-- here credit_gifts.lua scores this room's transfers while starts_at <= TIME < ends_at.
-- 'cancel' removes a side that is still starting (step 2 refused, or never came: the
-- server cancels it once the invitation's lifetime has passed). Both are idempotent.
--
-- KEYS[1]  {u:C}:s:FROM:battle   side 'a'
-- KEYS[2]  {u:C}:s:FROM:room     the room's shard channel (SPUBLISH)
--
-- ARGV[1]  'run' | 'cancel'   ARGV[2]  battle id   ARGV[3]  the opponent stream (to)
--
-- Reply: {'ok', battle JSON} | {'replay', battle JSON} (run: already running or ended;
--   cancel: no such side left) | {'refused', code[, detail JSON]}
-- Published (SPUBLISH to this room, on run's 'ok'): the battle JSON (battle_start.lua's)
-- Refusal codes: invalid_request, unknown_battle (run: side 'a' holds no such battle),
--   battle_running (cancel: the side already runs)

local op, battle_id, to = ARGV[1], ARGV[2], ARGV[3]
if not ((op == 'run' or op == 'cancel') and id_arg(battle_id) and id_arg(to)) then
  return refuse('invalid_request')
end
local side = battle_read(KEYS[1])
local ours = side.id == battle_id and side.opponent == to and side.side == 'a'
if op == 'cancel' then
  if not ours then
    return {'replay', '{}'}
  end
  if side.state ~= 'starting' then
    return refuse('battle_running', {stream_id = side.opponent})
  end
  redis.call('DEL', KEYS[1])
  return {'ok', side.json}
end
if not ours then
  return refuse('unknown_battle')
end
if side.state ~= 'starting' then
  return {'replay', side.json}
end
local ms = now_ms()
redis.call('HSET', KEYS[1], 'state', 'running', 'running_at', int(ms))
redis.call('SPUBLISH', KEYS[2], side.json)
return {'ok', side.json}
