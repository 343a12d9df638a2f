-- include: _battle.lua
-- decline_battle: the invited creator declines a pending invitation, or the inviter
-- withdraws it. Declining one that is no longer pending is a replay only for the same
-- battle id; otherwise unknown_invite.
--
-- KEYS[1]  {s:FROM}:battle_invite   the inviter's pending invitation
-- KEYS[2]  {s:TO}:battle_invites    invitations to TO (zset)
-- KEYS[3]  {s:FROM}:room            KEYS[4] {s:TO}:room   the rooms' channels
-- KEYS[5]  {u:FROM_CREATOR}:battle_invite  the inviter's pending mark (deleted)
--
-- ARGV[1]  battle id   ARGV[2]  from stream id   ARGV[3]  to stream id
-- ARGV[4]  acting user id (the invited or the inviting creator)
-- ARGV[5]  the inviting creator's id, as the caller read it
--
-- Reply: {'ok', invite JSON} | {'refused', code}
-- Published to both rooms: type 'battle_invite', state 'declined' (by the invited creator)
--   or 'withdrawn' (by the inviter), invite
-- Refusal codes: invalid_request, unknown_invite, not_stream_owner

local battle_id, from, to, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not (id_arg(battle_id) and id_arg(from) and id_arg(to) and id_arg(actor)) then
  return refuse('invalid_request')
end
local ms = now_ms()
local invite = redis.call('HMGET', KEYS[1], 'id', 'to', 'expires_at', 'from_creator',
  'to_creator', 'json')
if invite[1] ~= battle_id or invite[2] ~= to or stored_int(invite[3]) <= ms
    or invite[4] ~= ARGV[5] then
  return refuse('unknown_invite')
end
local state
if actor == invite[5] then
  state = 'declined'
elseif actor == invite[4] then
  state = 'withdrawn'
else
  return refuse('not_stream_owner')
end
redis.call('ZSCORE', KEYS[2], from)
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('ZREM', KEYS[2], from)
local event = battle_encode({type = 'battle_invite', state = state, invite = '@I@'},
  {I = invite[6]})
redis.call('PUBLISH', KEYS[3], event)
redis.call('PUBLISH', KEYS[4], event)
return {'ok', invite[6]}
