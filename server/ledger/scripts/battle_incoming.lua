-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_incoming (cluster mode, the invited stream's slot): the invitations to a stream,
-- after battle_invite.lua made (or dropped) one in the inviter's slot: 'add' lists it, at
-- most a bounded number pending per stream; 'remove' takes it off (declined, withdrawn).
-- Each tells the invited room (docs/ledger.md, "Battles in cluster mode").
--
-- KEYS[1]  {u:C}:s:TO:battle_invites   invitations to TO: from-stream -> expires_at ms
-- KEYS[2]  {u:C}:s:TO:room             the room's shard channel (SPUBLISH)
--
-- ARGV[1]  'add' | 'remove'   ARGV[2]  from stream   ARGV[3]  invite JSON (battle_invite.lua's)
-- ARGV[4]  the event's state: 'pending' (add), 'declined' | 'withdrawn' (remove)
-- ARGV[5]  most pending invitations to one stream (add)
--
-- Reply: {'ok', invite JSON} | {'replay', invite JSON} (already listed / not listed:
--   nothing published) | {'refused', code[, detail JSON]}
-- Published (SPUBLISH to this room, on 'ok' only): battle_invite {state, invite}
-- Refusal codes: invalid_request, invitee_busy (detail: invites_max)

local op, from, state = ARGV[1], ARGV[2], ARGV[4]
local invite = json_arg(ARGV[3])
local expires_at = invite and tonumber(invite.expires_at)
if not (id_arg(from) and invite and invite.from_stream == from and expires_at
    and (op == 'add' and state == 'pending'
      or op == 'remove' and (state == 'declined' or state == 'withdrawn'))) then
  return refuse('invalid_request')
end
local ms = now_ms()
local listed = redis.call('ZSCORE', KEYS[1], from)
local event = battle_encode({type = 'battle_invite', state = state, invite = '@I@'},
  {I = ARGV[3]})
if op == 'remove' then
  if not listed then
    return {'replay', ARGV[3]}
  end
  redis.call('ZREM', KEYS[1], from)
  redis.call('SPUBLISH', KEYS[2], event)
  return {'ok', ARGV[3]}
end
local invites_max = int_arg(ARGV[5], 1, 1000)
if not invites_max then
  return refuse('invalid_request')
end
if listed and tonumber(listed) == expires_at then
  return {'replay', ARGV[3]}
end
if expires_at <= ms then
  return refuse('invalid_request')
end
if not listed and redis.call('ZCOUNT', KEYS[1], '(' .. int(ms), '+inf') >= invites_max then
  return refuse('invitee_busy', {invites_max = invites_max})
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(ms))
redis.call('ZADD', KEYS[1], expires_at, from)
-- The zset lives as long as its latest invitation.
if redis.call('PTTL', KEYS[1]) < expires_at - ms then
  redis.call('PEXPIRE', KEYS[1], expires_at - ms)
end
redis.call('SPUBLISH', KEYS[2], event)
return {'ok', ARGV[3]}
