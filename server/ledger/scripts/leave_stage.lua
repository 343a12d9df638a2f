-- include: _gift_rules.lua
-- include: _guests.lua
-- leave_stage: a guest leaves the stage, or the creator takes them off (or withdraws an
-- invitation). From this script on, a gift naming them is refused with guest_left, and a
-- gift to all guests is split among the others: a gift in flight is decided by whichever
-- script Redis runs first. Leaving again is a replay.
--
-- KEYS[1]  {s:STREAM}:stream    stream hash
-- KEYS[2]  {s:STREAM}:guests    the stage
-- KEYS[3]  {s:STREAM}:room      pub/sub channel (on a cluster: the room's shard channel)
--
-- ARGV[1]  stream id   ARGV[2]  acting user id (the guest or the creator)
-- ARGV[3]  guest user id
-- ARGV[4]  'shard': SPUBLISH (cluster mode: the room's shard channel, and the keys are
--          the stream's in its creator's slot); absent or '': PUBLISH
--
-- Reply: {'ok', guests event JSON} | {'replay', guests event JSON} | {'refused', code}
-- Refusal codes: invalid_request, unknown_stream, not_stream_owner (someone else takes a
--   guest off), not_a_guest

local stream_id, actor, guest = ARGV[1], ARGV[2], ARGV[3]
local publish = ARGV[4] == 'shard' and 'SPUBLISH' or 'PUBLISH'
if not (id_arg(stream_id) and id_arg(actor) and id_arg(guest)
    and (ARGV[4] == nil or ARGV[4] == '' or ARGV[4] == 'shard')) then
  return refuse('invalid_request')
end
local s = redis.call('HMGET', KEYS[1], 'creator')
if not s[1] then
  return refuse('unknown_stream')
end
if actor ~= guest and actor ~= s[1] then
  return refuse('not_stream_owner')
end
local state = redis.call('HGET', KEYS[2], guest)
if state == 'left' then
  return {'replay', guests_event(KEYS[2], stream_id)}
end
if state ~= 'on' and state ~= 'invited' then
  return refuse('not_a_guest')
end
redis.call('HSET', KEYS[2], guest, 'left')
local event = guests_event(KEYS[2], stream_id)
redis.call(publish, KEYS[3], event)
return {'ok', event}
