-- include: _gift_rules.lua
-- include: _guests.lua
-- join_stage: an invited user accepts and goes on stage; from now on gifts may name them.
-- Joining when on stage already is a replay.
--
-- KEYS[1]  {s:STREAM}:stream    stream hash
-- KEYS[2]  {s:STREAM}:guests    the stage
-- KEYS[3]  {s:STREAM}:room      pub/sub channel (on a cluster: the room's shard channel)
--
-- ARGV[1]  stream id   ARGV[2]  the joining user id   ARGV[3]  their display name
-- ARGV[4]  'shard': SPUBLISH (cluster mode: the room's shard channel, and the keys are
--          the stream's in its creator's slot); absent or '': PUBLISH
--
-- Reply: {'ok', guests event JSON} | {'replay', guests event JSON} | {'refused', code}
-- Refusal codes: invalid_request, unknown_stream, stream_not_live, not_a_guest (not
--   invited, or left since: the creator invites again)

local stream_id, guest, name = ARGV[1], ARGV[2], ARGV[3]
local publish = ARGV[4] == 'shard' and 'SPUBLISH' or 'PUBLISH'
if not (id_arg(stream_id) and id_arg(guest) and type(name) == 'string' and #name >= 1
    and #name <= 256
    and (ARGV[4] == nil or ARGV[4] == '' or ARGV[4] == 'shard')) then
  return refuse('invalid_request')
end
local s = redis.call('HMGET', KEYS[1], 'state')
if not s[1] then
  return refuse('unknown_stream')
end
if s[1] ~= 'live' then
  return refuse('stream_not_live')
end
local state = redis.call('HGET', KEYS[2], guest)
if state == 'on' then
  return {'replay', guests_event(KEYS[2], stream_id)}
end
if state ~= 'invited' then
  return refuse('not_a_guest')
end
redis.call('HSET', KEYS[2], guest, 'on', 'n|' .. guest, name)
local event = guests_event(KEYS[2], stream_id)
redis.call(publish, KEYS[3], event)
return {'ok', event}
