-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_start (cluster mode, step 1 of accepting, the inviter's slot): the invited
-- creator accepts; the pending invitation becomes side 'a' in state 'starting' (not
-- scoring) with the battle's times, starts_at = this primary's TIME and ends_at = starts_at
-- + the length. Step 2 (battle_join.lua) writes side 'b' running with those times in the
-- invited stream's slot, step 3 (battle_run.lua) flips side 'a' to running here. Each step
-- is idempotent by the battle id, so a crash between them is finished by retrying the
-- accept (docs/ledger.md, "Battles in cluster mode"). Nothing is published here.
--
-- KEYS[1]  {u:C}:s:FROM:stream          the inviter's stream hash
-- KEYS[2]  {u:C}:s:FROM:battle_invite   the pending invitation (deleted)
-- KEYS[3]  {u:C}:s:FROM:battle          side 'a'
-- KEYS[4]  {u:C}:s:FROM:battle_top      side a's gifters (cleared)
-- KEYS[5]  {u:C}:battle_invite          the inviting creator's pending mark (deleted)
--
-- ARGV[1]  battle id   ARGV[2]  from stream   ARGV[3]  to stream   ARGV[4]  acting user id
-- ARGV[5]  the inviting creator, as the caller read it
-- ARGV[6]  the invited stream's creator name, as the server read it ('' for its id)
-- ARGV[7]  the invited stream's state, as read   ARGV[8]  '1' when a battle holds it
--
-- Reply: {'ok', battle JSON} | {'replay', battle JSON} (side 'a' already has this battle,
--   in any state) | {'refused', code[, detail JSON]}
-- Battle JSON: accept_battle.lua's (type 'battle', state 'running', starts_at, ends_at,
--   now, duration_s, sides, a first): what steps 2 and 3 publish to the rooms.
-- Refusal codes: invalid_request, unknown_invite, unknown_stream, not_stream_owner,
--   stream_not_live, battle_running (detail: stream_id)

local battle_id, from, to, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local to_name, to_state, to_busy = ARGV[6], ARGV[7], ARGV[8]
if not (id_arg(battle_id) and id_arg(from) and id_arg(to) and id_arg(actor)
    and type(to_name) == 'string' and #to_name <= 256 and type(to_state) == 'string'
    and (to_busy == '0' or to_busy == '1')) then
  return refuse('invalid_request')
end
local ms = now_ms()
local side = battle_read(KEYS[3])
if side.id == battle_id and side.opponent == to then
  if side.opponent_creator ~= actor then
    return refuse('not_stream_owner')
  end
  return {'replay', side.json}
end
local invite = redis.call('HMGET', KEYS[2], 'id', 'to', 'expires_at', 'duration_s',
  'from_creator', 'to_creator')
if invite[1] ~= battle_id or invite[2] ~= to or stored_int(invite[3]) <= ms
    or invite[5] ~= ARGV[5] then
  return refuse('unknown_invite')
end
local a = redis.call('HMGET', KEYS[1], 'state', 'creator', 'creator_name')
if not a[1] or to_state == '' then
  return refuse('unknown_stream')
end
if invite[6] ~= actor then
  return refuse('not_stream_owner')
end
if a[1] ~= 'live' or to_state ~= 'live' then
  return refuse('stream_not_live')
end
if battle_held(side) then
  return refuse('battle_running', {stream_id = from})
end
if to_busy == '1' then
  return refuse('battle_running', {stream_id = to})
end
redis.call('ZCARD', KEYS[4])  -- type check before the first write

local duration = stored_int(invite[4])
local ends_at = ms + duration * 1000
local a_name = a[3] or a[2]
local b_name = to_name ~= '' and to_name or actor
local sides = '[' .. cjson.encode({stream_id = from, creator_id = a[2],
  creator_name = a_name, side = 'a', score = 0, top = '@T@'}) .. ',' .. cjson.encode({
  stream_id = to, creator_id = actor, creator_name = b_name, side = 'b', score = 0,
  top = '@T@'}) .. ']'
sides = string.gsub(sides, '"@T@"', '[]')
local event = battle_encode({type = 'battle', battle_id = battle_id, state = 'running',
  starts_at = ms, ends_at = ends_at, now = ms, duration_s = duration, sides = '@S@'},
  {S = sides})
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[3], 'id', battle_id, 'side', 'a', 'creator', a[2], 'name', a_name,
  'opponent', to, 'opponent_creator', actor, 'duration_s', int(duration),
  'starts_at', int(ms), 'ends_at', int(ends_at), 'state', 'starting', 'score', 0,
  'json', event)
return {'ok', event}
