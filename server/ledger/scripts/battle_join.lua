-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_join (cluster mode, step 2 of accepting, the invited stream's slot): side 'b'
-- begins, running at once with the times step 1 (battle_start.lua) chose, and the invited
-- room is told. From here credit_gifts.lua scores this room's transfers while
-- starts_at <= TIME < ends_at on this primary's clock. Joining again is a replay.
--
-- KEYS[1]  {u:C}:s:TO:stream           the invited stream's hash
-- KEYS[2]  {u:C}:s:TO:battle_invites   invitations to TO (the accepted one is removed)
-- KEYS[3]  {u:C}:s:TO:battle           side 'b'
-- KEYS[4]  {u:C}:s:TO:battle_top       side b's gifters (cleared)
-- KEYS[5]  {u:C}:s:TO:room             the room's shard channel (SPUBLISH)
--
-- ARGV[1]  battle id   ARGV[2]  from stream   ARGV[3]  to stream   ARGV[4]  acting user id
-- ARGV[5]  the inviting creator   ARGV[6]  battle JSON (step 1's reply)
--
-- Reply: {'ok', battle JSON} | {'replay', battle JSON} | {'refused', code[, detail JSON]}
-- Published (SPUBLISH to this room, on 'ok'): the battle JSON
-- Refusal codes: invalid_request, unknown_stream, not_stream_owner, stream_not_live,
--   battle_running (detail: stream_id)

local battle_id, from, to, actor, from_creator = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local doc = json_arg(ARGV[6])
if not (id_arg(battle_id) and id_arg(from) and id_arg(to) and id_arg(actor)
    and id_arg(from_creator) and doc and doc.battle_id == battle_id
    and type(doc.sides) == 'table' and doc.sides[1] and doc.sides[2]
    and doc.sides[1].stream_id == from and doc.sides[2].stream_id == to
    and int_arg(tostring(doc.starts_at), 0, 9007199254740991)
    and int_arg(tostring(doc.ends_at), 0, 9007199254740991)
    and int_arg(tostring(doc.duration_s), 1, 86400)) then
  return refuse('invalid_request')
end
local side = battle_read(KEYS[3])
if side.id == battle_id and side.opponent == from then
  if side.creator ~= actor then
    return refuse('not_stream_owner')
  end
  return {'replay', side.json}
end
local b = redis.call('HMGET', KEYS[1], 'state', 'creator')
if not b[1] then
  return refuse('unknown_stream')
end
if b[2] ~= actor or doc.sides[2].creator_id ~= actor then
  return refuse('not_stream_owner')
end
if b[1] ~= 'live' then
  return refuse('stream_not_live')
end
if battle_held(side) then
  return refuse('battle_running', {stream_id = to})
end
redis.call('ZSCORE', KEYS[2], from)  -- type checks before the first write
redis.call('ZCARD', KEYS[4])

local ms = now_ms()
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], from)
redis.call('HSET', KEYS[3], 'id', battle_id, 'side', 'b', 'creator', actor,
  'name', doc.sides[2].creator_name or actor, 'opponent', from,
  'opponent_creator', from_creator, 'duration_s', int(doc.duration_s),
  'starts_at', int(doc.starts_at), 'ends_at', int(doc.ends_at), 'state', 'running',
  'score', 0, 'running_at', int(ms), 'json', ARGV[6])
redis.call('SPUBLISH', KEYS[5], ARGV[6])
return {'ok', ARGV[6]}
