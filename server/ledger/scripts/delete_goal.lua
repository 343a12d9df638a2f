-- include: _goals.lua
-- delete_goal: a stream's creator removes one of its goals (and its progress). Deleting a
-- goal that is not there (deleted already, or never set) is a replay that changes nothing.
--
-- KEYS[1]  {s:STREAM}:stream   stream hash (its creator)
-- KEYS[2]  {s:STREAM}:goals    the stream's goals (_goals.lua)
-- KEYS[3]  {s:STREAM}:room     pub/sub channel (on a cluster: the room's shard channel)
--
-- ARGV[1]  stream id      ARGV[2]  acting user id     ARGV[3]  goal id
-- ARGV[4]  'shard': SPUBLISH (cluster mode, the room's shard channel); absent or '': PUBLISH
--
-- Reply: {'ok', goal JSON (as it was)} | {'replay', '{}'} | {'refused', code}
-- Published: {type = 'goals', stream_id, goals = [...]} (on 'ok' only)
-- Refusal codes: invalid_request, unknown_stream, not_stream_owner

local stream_id, actor, goal_id = ARGV[1], ARGV[2], ARGV[3]
local publish = ARGV[4] == 'shard' and 'SPUBLISH' or 'PUBLISH'
if not (id_arg(stream_id) and id_arg(actor) and id_arg(goal_id)
    and (ARGV[4] == nil or ARGV[4] == '' or ARGV[4] == 'shard')) then
  return refuse('invalid_request')
end
local creator = redis.call('HGET', KEYS[1], 'creator')
if not creator then
  return refuse('unknown_stream')
end
if creator ~= actor then
  return refuse('not_stream_owner')
end
local stored, progress, ids = unpack(redis.call('HMGET', KEYS[2], 'd:' .. goal_id,
  'p:' .. goal_id, '@ids'))
if not stored then
  return {'replay', '{}'}
end
local goal = cjson.decode(stored)
goal.progress = stored_int(progress)
goal.reached = goal.progress >= goal.target

-- Remove the goal from a list of ids (sep ',') or of id=target entries (sep ';').
local function without(list, sep)
  local kept = {}
  for item in string.gmatch(list or '', '[^' .. sep .. ']+') do
    if item ~= goal_id and string.match(item, '^([^=]+)') ~= goal_id then
      kept[#kept + 1] = item
    end
  end
  return table.concat(kept, sep)
end
local list_field = goal.kind == 'coins' and '@coins' or '@g:' .. goal.gift_id
local list = without(redis.call('HGET', KEYS[2], list_field), ';')
local rest = without(ids, ',')
redis.call('HDEL', KEYS[2], 'd:' .. goal_id, 'p:' .. goal_id)
for field, value in pairs({[list_field] = list, ['@ids'] = rest}) do
  if value == '' then
    redis.call('HDEL', KEYS[2], field)
  else
    redis.call('HSET', KEYS[2], field, value)
  end
end
redis.call(publish, KEYS[3], goals_event(KEYS[2], stream_id))
return {'ok', cjson.encode(goal)}
