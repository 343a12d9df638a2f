-- include: _gift_rules.lua
-- include: _guests.lua
-- invite_guest: the creator invites a user on stage; the user joins with join_stage.lua.
-- Inviting a guest who is invited or on stage already is a replay; one who left may be
-- invited again.
--
-- KEYS[1]  {s:STREAM}:stream    stream hash
-- KEYS[2]  {s:STREAM}:guests    the stage (_guests.lua)
-- KEYS[3]  {s:STREAM}:room      pub/sub channel (on a cluster: the room's shard channel)
--
-- ARGV[1]  stream id   ARGV[2]  acting user id (the creator)   ARGV[3]  guest user id
-- ARGV[4]  most guests invited or on stage   ARGV[5]  most guests remembered (left too)
-- ARGV[6]  'shard': SPUBLISH (cluster mode: the room's shard channel, and the keys are
--          the stream's in its creator's slot); absent or '': PUBLISH
--
-- Reply: {'ok', guests event JSON} | {'replay', guests event JSON} | {'refused', code[, detail]}
-- Published to the room: type 'guests', stream_id, guests [{user_id, name, state
--   ('invited' | 'on'), coins, diamonds}]
-- Refusal codes: invalid_request, unknown_stream, stream_not_live, not_stream_owner,
--   self_gift (the creator cannot be their own guest), guest_limit (detail: guests_max)

local stream_id, actor, guest = ARGV[1], ARGV[2], ARGV[3]
local guests_max = int_arg(ARGV[4], 1, 64)
local remembered_max = int_arg(ARGV[5], 1, 1024)
local publish = ARGV[6] == 'shard' and 'SPUBLISH' or 'PUBLISH'
if not (id_arg(stream_id) and id_arg(actor) and id_arg(guest) and guests_max
    and remembered_max
    and (ARGV[6] == nil or ARGV[6] == '' or ARGV[6] == 'shard')) then
  return refuse('invalid_request')
end
local s = redis.call('HMGET', KEYS[1], 'state', 'creator')
if not s[1] then
  return refuse('unknown_stream')
end
if s[2] ~= actor then
  return refuse('not_stream_owner')
end
if s[1] ~= 'live' then
  return refuse('stream_not_live')
end
if guest == actor then
  return refuse('self_gift')
end
local guests = guests_read(KEYS[2])
for _, g in ipairs(guests) do
  if g.user_id == guest and (g.state == 'invited' or g.state == 'on') then
    return {'replay', guests_event(KEYS[2], stream_id)}
  end
end
if guests_seated(guests) >= guests_max then
  return refuse('guest_limit', {guests_max = guests_max})
end
-- Guests who left are remembered (a gift to them is refused with guest_left, not
-- not_a_guest) up to a bound; past it the ones who left are forgotten.
if #guests >= remembered_max then
  for _, g in ipairs(guests) do
    if g.state == 'left' then
      redis.call('HDEL', KEYS[2], g.user_id, 'n|' .. g.user_id, 'c|' .. g.user_id,
        'd|' .. g.user_id)
    end
  end
end
redis.call('HSET', KEYS[2], guest, 'invited')
local event = guests_event(KEYS[2], stream_id)
redis.call(publish, KEYS[3], event)
return {'ok', event}
