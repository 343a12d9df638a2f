-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_invite (cluster mode, the inviting stream's slot): the creator of a live stream
-- invites another stream to a battle ('invite'), or the invitation is dropped ('drop': the
-- invited creator declines, the inviter withdraws, or the server takes it back, actor '-',
-- when the invited stream's step refused it). The invited stream's keys are in another slot:
-- its creator, state and whether a battle holds it come as the server read them, and its
-- list of invitations is battle_incoming.lua's (docs/ledger.md, "Battles in cluster mode").
--
-- KEYS[1]  {u:C}:s:FROM:stream          the inviter's stream hash
-- KEYS[2]  {u:C}:s:FROM:battle_invite   the pending invitation (hash, TTL)
-- KEYS[3]  {u:C}:s:FROM:battle          the inviter's battle side
-- KEYS[4]  {u:C}:s:FROM:room            the room's shard channel (SPUBLISH)
-- KEYS[5]  {u:C}:battle_invite          the inviting creator's pending mark (string, TTL)
--
-- ARGV[1]  'invite' | 'drop'   ARGV[2]  battle id   ARGV[3]  from stream   ARGV[4]  to stream
-- ARGV[5]  acting user id ('-': the server, drop only)
-- invite: ARGV[6] duration s   ARGV[7] shortest   ARGV[8] longest   ARGV[9] lifetime ms
--   ARGV[10] the invited stream's creator ('' unknown)   ARGV[11] its state ('' unknown)
--   ARGV[12] '1' when a battle holds the invited stream (running, not past its end)
--
-- Reply: {'ok', invite JSON} | {'replay', invite JSON} | {'refused', code[, detail JSON]}
--   invite JSON as invite_battle.lua's; drop's reply adds nothing: {'ok', invite JSON}
-- Published (SPUBLISH to this room): battle_invite, state 'pending' (invite), 'declined' or
--   'withdrawn' (drop)
-- Refusal codes: invite as invite_battle.lua's but invitee_busy (battle_incoming.lua's);
--   drop: invalid_request, unknown_invite, not_stream_owner

local op, battle_id, from, to, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not ((op == 'invite' or op == 'drop') and id_arg(battle_id) and id_arg(from)
    and id_arg(to) and (id_arg(actor) or op == 'drop' and actor == '-')) then
  return refuse('invalid_request')
end
local ms = now_ms()
local pending = redis.call('HMGET', KEYS[2], 'id', 'to', 'expires_at', 'duration_s',
  'from_creator', 'to_creator', 'json')

if op == 'drop' then
  if pending[1] ~= battle_id or pending[2] ~= to or stored_int(pending[3]) <= ms then
    return refuse('unknown_invite')
  end
  local state
  if actor == pending[6] then
    state = 'declined'
  elseif actor == pending[5] or actor == '-' then
    state = 'withdrawn'
  else
    return refuse('not_stream_owner')
  end
  redis.call('DEL', KEYS[2], KEYS[5])
  redis.call('SPUBLISH', KEYS[4], battle_encode({type = 'battle_invite', state = state,
    invite = '@I@'}, {I = pending[7]}))
  return {'ok', pending[7]}
end

local duration = int_arg(ARGV[6], 1, 86400)
local duration_min = int_arg(ARGV[7], 1, 86400)
local duration_max = int_arg(ARGV[8], 1, 86400)
local ttl_ms = int_arg(ARGV[9], 1, 86400000)
local to_creator, to_state, to_busy = ARGV[10], ARGV[11], ARGV[12]
if not (duration and duration_min and duration_max and ttl_ms
    and (to_creator == '' or id_arg(to_creator)) and type(to_state) == 'string'
    and (to_busy == '0' or to_busy == '1')) then
  return refuse('invalid_request')
end
if duration < duration_min or duration > duration_max then
  return refuse('invalid_request', {duration_s_min = duration_min,
    duration_s_max = duration_max})
end
if pending[1] == battle_id and pending[2] == to and tonumber(pending[4]) == duration
    and stored_int(pending[3]) > ms and pending[5] == actor then
  return {'replay', pending[7]}
end
local a = redis.call('HMGET', KEYS[1], 'state', 'creator')
if not a[1] or to_creator == '' or to_state == '' then
  return refuse('unknown_stream')
end
if a[2] ~= actor then
  return refuse('not_stream_owner')
end
if from == to or a[2] == to_creator then
  return refuse('self_battle')
end
if a[1] ~= 'live' or to_state ~= 'live' then
  return refuse('stream_not_live')
end
if pending[1] and stored_int(pending[3]) > ms then
  return refuse('invite_pending', {battle_id = pending[1], to_stream = pending[2],
    expires_at = stored_int(pending[3])})
end
local elsewhere = redis.call('GET', KEYS[5])
if elsewhere and elsewhere ~= from then
  return refuse('invite_pending', {from_stream = elsewhere})
end
local side = battle_read(KEYS[3])
if battle_held(side) and ms < stored_int(side.ends_at) then
  return refuse('battle_running', {stream_id = from})
end
if to_busy == '1' then
  return refuse('battle_running', {stream_id = to})
end

local expires_at = ms + ttl_ms
local invite = cjson.encode({battle_id = battle_id, from_stream = from, from_creator = a[2],
  to_stream = to, to_creator = to_creator, duration_s = duration, expires_at = expires_at})
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'id', battle_id, 'to', to, 'to_creator', to_creator,
  'from_creator', a[2], 'duration_s', int(duration), 'expires_at', int(expires_at),
  'json', invite)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
redis.call('SET', KEYS[5], from, 'PX', ttl_ms)
redis.call('SPUBLISH', KEYS[4], battle_encode({type = 'battle_invite', state = 'pending',
  invite = '@I@'}, {I = invite}))
return {'ok', invite}
