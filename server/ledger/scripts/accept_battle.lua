-- include: _battle.lua
-- accept_battle: the invited stream's creator accepts a pending invitation; the battle
-- starts now (Redis TIME) and runs for the invitation's length. Both sides' hashes are
-- written in this one script, so a gift in either room scores from this moment on and
-- not before. Accepting a battle that is already running is a replay.
--
-- KEYS[1]  {s:FROM}:stream          the inviter's stream hash
-- KEYS[2]  {s:TO}:stream            the accepting stream hash
-- KEYS[3]  {s:FROM}:battle_invite   the inviter's pending invitation
-- KEYS[4]  {s:TO}:battle_invites    invitations to TO (zset)
-- KEYS[5]  {s:FROM}:battle          side 'a'
-- KEYS[6]  {s:TO}:battle            side 'b'
-- KEYS[7]  {s:FROM}:battle_top      side a's gifters (cleared)
-- KEYS[8]  {s:TO}:battle_top        side b's gifters (cleared)
-- KEYS[9]  {s:FROM}:room            KEYS[10] {s:TO}:room   the rooms' channels
-- KEYS[11] {u:FROM_CREATOR}:battle_invite  the inviter's pending mark (deleted)
--
-- ARGV[1]  battle id   ARGV[2]  from stream id   ARGV[3]  to stream id
-- ARGV[4]  acting user id   ARGV[5]  the inviting creator's id, as the caller read it
--
-- Reply: {'ok', battle JSON} | {'replay', battle JSON} | {'refused', code[, detail JSON]}
-- Battle JSON (published to both rooms): type 'battle', battle_id, state 'running',
--   starts_at, ends_at, now (ms), duration_s, sides: [{stream_id, creator_id,
--   creator_name, side, score, top}] (a first)
-- Refusal codes: invalid_request, unknown_invite (none pending from FROM to TO with this
--   id, or it expired), not_stream_owner, unknown_stream, stream_not_live,
--   battle_running (detail: stream_id)

local battle_id, from, to, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not (id_arg(battle_id) and id_arg(from) and id_arg(to) and id_arg(actor)) then
  return refuse('invalid_request')
end
local ms = now_ms()
local a_battle, b_battle = battle_read(KEYS[5]), battle_read(KEYS[6])
if a_battle.id == battle_id and b_battle.id == battle_id and a_battle.opponent == to then
  if b_battle.creator ~= actor then
    return refuse('not_stream_owner')
  end
  return {'replay', a_battle.json}
end
local invite = redis.call('HMGET', KEYS[3], 'id', 'to', 'expires_at', 'duration_s',
  'from_creator', 'to_creator')
if invite[1] ~= battle_id or invite[2] ~= to or stored_int(invite[3]) <= ms
    or invite[5] ~= ARGV[5] then
  return refuse('unknown_invite')
end
local a = redis.call('HMGET', KEYS[1], 'state', 'creator', 'creator_name')
local b = redis.call('HMGET', KEYS[2], 'state', 'creator', 'creator_name')
if not a[1] or not b[1] then
  return refuse('unknown_stream')
end
if b[2] ~= actor then
  return refuse('not_stream_owner')
end
if a[1] ~= 'live' or b[1] ~= 'live' then
  return refuse('stream_not_live')
end
-- A battle past its end that no one has ended yet still holds its stream: its result is
-- stored by end_battle first (the server does that before it accepts).
if a_battle.state == 'running' then
  return refuse('battle_running', {stream_id = from})
end
if b_battle.state == 'running' then
  return refuse('battle_running', {stream_id = to})
end
redis.call('ZSCORE', KEYS[4], from)  -- type checks before the first write
redis.call('ZCARD', KEYS[7])
redis.call('ZCARD', KEYS[8])

local duration = stored_int(invite[4])
local ends_at = ms + duration * 1000
local doc = {type = 'battle', battle_id = battle_id, state = 'running', starts_at = ms,
  ends_at = ends_at, now = ms, duration_s = duration, sides = '@S@'}
local a_name, b_name = a[3] or a[2], b[3] or b[2]
local sides = '[' .. cjson.encode({stream_id = from, creator_id = a[2], creator_name = a_name,
  side = 'a', score = 0, top = '@T@'}) .. ',' .. cjson.encode({stream_id = to,
  creator_id = b[2], creator_name = b_name, side = 'b', score = 0, top = '@T@'}) .. ']'
sides = string.gsub(sides, '"@T@"', '[]')
local event = battle_encode(doc, {S = sides})
redis.call('DEL', KEYS[3], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[11])
redis.call('ZREM', KEYS[4], from)
redis.call('HSET', KEYS[5], 'id', battle_id, 'side', 'a', 'creator', a[2], 'name', a_name,
  'opponent', to,
  'opponent_creator', b[2], 'duration_s', int(duration), 'starts_at', int(ms),
  'ends_at', int(ends_at), 'state', 'running', 'score', 0, 'json', event)
redis.call('HSET', KEYS[6], 'id', battle_id, 'side', 'b', 'creator', b[2], 'name', b_name,
  'opponent', from,
  'opponent_creator', a[2], 'duration_s', int(duration), 'starts_at', int(ms),
  'ends_at', int(ends_at), 'state', 'running', 'score', 0, 'json', event)
redis.call('PUBLISH', KEYS[9], event)
redis.call('PUBLISH', KEYS[10], event)
return {'ok', event}
