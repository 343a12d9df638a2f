-- include: _goals.lua
-- set_goal: a stream's creator adds a goal (coins, or a count of one gift) to the stream.
-- Idempotent by goal id: the same goal again is a replay; the same id with other content is
-- refused. Publishes the stream's goals to the room.
--
-- KEYS[1]  {s:STREAM}:stream   stream hash (its creator)
-- KEYS[2]  {s:STREAM}:goals    the stream's goals (_goals.lua)
-- KEYS[3]  {catalog}:prices    gift id -> price (a gift goal must name a gift of it); on a
--                              cluster the creator's slot's copy {~N}:catalog
-- KEYS[4]  {s:STREAM}:room     pub/sub channel (on a cluster: the room's shard channel)
--
-- ARGV[1]  stream id      ARGV[2]  acting user id     ARGV[3]  goal id
-- ARGV[4]  kind ('coins' or 'gift')                   ARGV[5]  gift id ('' for coins)
-- ARGV[6]  target         ARGV[7]  title (at most 256 bytes)
-- ARGV[8]  most goals per stream (goals_per_stream_max)
-- ARGV[9]  largest target
-- ARGV[10] 'shard': SPUBLISH (cluster mode, the room's shard channel); absent or '': PUBLISH
--
-- Reply: {'ok', goal JSON} | {'replay', goal JSON} | {'refused', code[, detail JSON]}
-- Goal JSON: goal_id, kind, gift_id, target, title, progress, reached
-- Published: {type = 'goals', stream_id, goals = [goal JSON, ...]} (on 'ok' only)
-- Refusal codes: invalid_request, unknown_stream, not_stream_owner, unknown_gift,
--   duplicate_mismatch, goal_limit (detail: goals_max)

local stream_id, actor, goal_id, kind, gift, title = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[7]
local publish = ARGV[10] == 'shard' and 'SPUBLISH' or 'PUBLISH'
local goals_max = int_arg(ARGV[8], 1, 100)
local target_max = int_arg(ARGV[9], 1, 1e13)
local target = target_max and int_arg(ARGV[6], 1, target_max)
if not (id_arg(stream_id) and id_arg(actor) and id_arg(goal_id) and goals_max and target
    and (kind == 'coins' and gift == '' or kind == 'gift' and id_arg(gift))
    and type(title) == 'string' and #title <= 256
    and (ARGV[10] == nil or ARGV[10] == '' or ARGV[10] == 'shard')) then
  return refuse('invalid_request')
end
local creator = redis.call('HGET', KEYS[1], 'creator')
if not creator then
  return refuse('unknown_stream')
end
if creator ~= actor then
  return refuse('not_stream_owner')
end
local doc = cjson.encode({goal_id = goal_id, kind = kind, gift_id = gift, target = target,
  title = title})
local function reply(status)
  local stored, progress = unpack(redis.call('HMGET', KEYS[2], 'd:' .. goal_id,
    'p:' .. goal_id))
  local goal = cjson.decode(stored)
  goal.progress = stored_int(progress)
  goal.reached = goal.progress >= goal.target
  return {status, cjson.encode(goal)}
end
local existing, ids = unpack(redis.call('HMGET', KEYS[2], 'd:' .. goal_id, '@ids'))
if existing then
  local held = cjson.decode(existing)
  if held.kind ~= kind or held.gift_id ~= gift or held.target ~= target
      or held.title ~= title then
    return refuse('duplicate_mismatch')
  end
  return reply('replay')
end
local n = 0
for _ in string.gmatch(ids or '', '[^,]+') do
  n = n + 1
end
if n >= goals_max then
  return refuse('goal_limit', {goals_max = goals_max})
end
if kind == 'gift' and redis.call('HEXISTS', KEYS[3], gift) == 0 then
  return refuse('unknown_gift')
end

local list_field = kind == 'coins' and '@coins' or '@g:' .. gift
local list = redis.call('HGET', KEYS[2], list_field)
local entry = goal_id .. '=' .. int(target)
redis.call('HSET', KEYS[2], 'd:' .. goal_id, doc, 'p:' .. goal_id, 0,
  '@ids', ids and (ids .. ',' .. goal_id) or goal_id,
  list_field, list and (list .. ';' .. entry) or entry)
redis.call(publish, KEYS[4], goals_event(KEYS[2], stream_id))
return reply('ok')
