-- include: _battle.lua
-- invite_battle: the creator of a live stream invites another live stream to a battle.
-- One pending invitation per inviting creator (whichever of their streams sent it; it
-- expires by itself), a bounded number of pending invitations per invited stream. Inviting again with the same battle id and the
-- same stream is a replay.
--
-- KEYS[1]  {s:FROM}:stream          the inviter's stream hash
-- KEYS[2]  {s:TO}:stream            the invited stream hash
-- KEYS[3]  {s:FROM}:battle_invite   the inviter's pending invitation (hash, TTL)
-- KEYS[4]  {s:TO}:battle_invites    invitations to TO: zset from-stream -> expires_at ms
-- KEYS[5]  {s:FROM}:battle          the inviter's battle hash (_battle.lua)
-- KEYS[6]  {s:TO}:battle            the invited stream's battle hash
-- KEYS[7]  {s:FROM}:room            pub/sub channel of the inviter's room
-- KEYS[8]  {s:TO}:room              pub/sub channel of the invited room
-- KEYS[9]  {u:ACTOR}:battle_invite   the inviting creator's pending invitation: the stream
--                                    that sent it (string, the invitation's TTL)
--
-- ARGV[1]  battle id (client-chosen)   ARGV[2]  from stream id   ARGV[3]  to stream id
-- ARGV[4]  acting user id              ARGV[5]  duration, seconds
-- ARGV[6]  shortest battle, seconds    ARGV[7]  longest battle, seconds
-- ARGV[8]  invitation lifetime, ms     ARGV[9]  most pending invitations to one stream
--
-- Reply: {'ok', invite JSON} | {'replay', invite JSON} | {'refused', code[, detail JSON]}
-- Invite JSON (also published to both rooms as type 'battle_invite', state 'pending'):
--   battle_id, from_stream, from_creator, to_stream, to_creator, duration_s, expires_at
-- Refusal codes: invalid_request (detail: duration_s_min, duration_s_max when the length
--   is out of bounds), unknown_stream, stream_not_live, not_stream_owner, self_battle,
--   invite_pending (detail: battle_id, to_stream, expires_at; or from_stream when another
--   stream of the creator's has one pending), battle_running (detail:
--   stream_id), invitee_busy (detail: invites_max)

local battle_id, from, to, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local duration = int_arg(ARGV[5], 1, 86400)
local duration_min = int_arg(ARGV[6], 1, 86400)
local duration_max = int_arg(ARGV[7], 1, 86400)
local ttl_ms = int_arg(ARGV[8], 1, 86400000)
local invites_max = int_arg(ARGV[9], 1, 1000)
if not (id_arg(battle_id) and id_arg(from) and id_arg(to) and id_arg(actor) and duration
    and duration_min and duration_max and ttl_ms and invites_max) then
  return refuse('invalid_request')
end
if duration < duration_min or duration > duration_max then
  return refuse('invalid_request', {duration_s_min = duration_min,
    duration_s_max = duration_max})
end
local ms = now_ms()
local pending = redis.call('HMGET', KEYS[3], 'id', 'to', 'expires_at', 'duration_s')
if pending[1] == battle_id and pending[2] == to and tonumber(pending[4]) == duration
    and stored_int(pending[3]) > ms then
  local stream = redis.call('HMGET', KEYS[1], 'creator')
  if stream[1] == actor then
    return {'replay', redis.call('HGET', KEYS[3], 'json')}
  end
end
local a = redis.call('HMGET', KEYS[1], 'state', 'creator')
local b = redis.call('HMGET', KEYS[2], 'state', 'creator')
if not a[1] or not b[1] then
  return refuse('unknown_stream')
end
if a[2] ~= actor then
  return refuse('not_stream_owner')
end
if from == to or a[2] == b[2] then
  return refuse('self_battle')
end
if a[1] ~= 'live' or b[1] ~= 'live' then
  return refuse('stream_not_live')
end
if pending[1] and stored_int(pending[3]) > ms then
  return refuse('invite_pending', {battle_id = pending[1], to_stream = pending[2],
    expires_at = stored_int(pending[3])})
end
local elsewhere = redis.call('GET', KEYS[9])
if elsewhere and elsewhere ~= from then
  return refuse('invite_pending', {from_stream = elsewhere})
end
for i, key in ipairs({KEYS[5], KEYS[6]}) do
  if battle_busy(battle_read(key), ms) then
    return refuse('battle_running', {stream_id = i == 1 and from or to})
  end
end
redis.call('ZSCORE', KEYS[4], from)  -- fails on a wrong-typed key, before any write
if redis.call('ZCOUNT', KEYS[4], '(' .. int(ms), '+inf') >= invites_max
    and not redis.call('ZSCORE', KEYS[4], from) then
  return refuse('invitee_busy', {invites_max = invites_max})
end

local expires_at = ms + ttl_ms
local invite = cjson.encode({battle_id = battle_id, from_stream = from, from_creator = a[2],
  to_stream = to, to_creator = b[2], duration_s = duration, expires_at = expires_at})
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'id', battle_id, 'to', to, 'to_creator', b[2],
  'from_creator', a[2], 'duration_s', int(duration), 'expires_at', int(expires_at),
  'json', invite)
redis.call('PEXPIRE', KEYS[3], ttl_ms)
redis.call('SET', KEYS[9], from, 'PX', ttl_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(ms))
redis.call('ZADD', KEYS[4], expires_at, from)
redis.call('PEXPIRE', KEYS[4], ttl_ms)
local event = battle_encode({type = 'battle_invite', state = 'pending', invite = '@I@'},
  {I = invite})
redis.call('PUBLISH', KEYS[7], event)
redis.call('PUBLISH', KEYS[8], event)
return {'ok', invite}
