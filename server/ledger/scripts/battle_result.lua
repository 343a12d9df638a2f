-- include: _cluster_battle.lua
-- battle_result (cluster mode, the battle's own slot): store a battle's result once both
-- sides ended, from their final JSON (battle_end_side.lua's replies, which no longer
-- change). Storing again is a replay of the stored result (docs/ledger.md, "Battles in
-- cluster mode"). Nothing is published here: the server tells both rooms.
--
-- KEYS[1]  {battle:ID}:result   the stored result (string, JSON, TTL)
--
-- ARGV[1]  battle id   ARGV[2]  one side's JSON   ARGV[3]  the other's
-- ARGV[4]  result lifetime, seconds
--
-- Reply: {'ok', result JSON} | {'replay', result JSON} | {'refused', code}
-- Result JSON: end_battle.lua's (type 'battle_end', battle_id, reason, starts_at, ends_at,
--   ended_at, duration_s, winner, draw, sides [{stream_id, creator_id, creator_name, side,
--   score, mvp, top}], a first), each side adding its own ended_at; reason is the first
--   side's to end early ('ended', 'stream_ended'), else 'time'; ended_at the later side's.
-- Refusal codes: invalid_request (not two ended sides of this battle, a and b, each the
--   other's opponent)

local battle_id = ARGV[1]
local x, y = json_arg(ARGV[2]), json_arg(ARGV[3])
local ttl = int_arg(ARGV[4], 1, 1e9)
if not (id_arg(battle_id) and x and y and ttl) then
  return refuse('invalid_request')
end
local stored = redis.call('GET', KEYS[1])
if stored then
  return {'replay', stored}
end
if x.side == 'b' then
  x, y = y, x
end
local function valid(s, side, opponent)
  return s.battle_id == battle_id and s.side == side and s.opponent == opponent.stream_id
    and type(s.score) == 'number' and s.score >= 0 and s.score == math.floor(s.score)
    and type(s.ended_at) == 'number' and type(s.top) == 'table'
end
if not (valid(x, 'a', y) and valid(y, 'b', x) and x.starts_at == y.starts_at
    and x.ends_at == y.ends_at) then
  return refuse('invalid_request')
end
local reason = 'time'
local early = {}
for _, s in ipairs({x, y}) do
  if s.reason ~= 'time' then
    early[#early + 1] = s
  end
end
table.sort(early, function(p, q) return p.ended_at < q.ended_at end)
if early[1] then
  reason = early[1].reason
end
local winner = cjson.null
if x.score > y.score then
  winner = x.stream_id
elseif y.score > x.score then
  winner = y.stream_id
end
local parts = {}
for i, s in ipairs({x, y}) do
  parts[i] = cjson.encode({stream_id = s.stream_id, creator_id = s.creator_id,
    creator_name = s.creator_name, side = s.side, score = s.score, mvp = s.mvp,
    top = '@T@', ended_at = s.ended_at})
  -- cjson writes an empty table as {}: the top is written back as the array it was.
  local top = {}
  for j, row in ipairs(s.top) do
    top[j] = cjson.encode({user_id = row.user_id, coins = row.coins})
  end
  parts[i] = string.gsub(parts[i], '"@T@"', function() return '[' .. table.concat(top, ',') .. ']' end)
end
local doc = cjson.encode({type = 'battle_end', battle_id = battle_id, reason = reason,
  starts_at = x.starts_at, ends_at = x.ends_at, ended_at = math.max(x.ended_at, y.ended_at),
  duration_s = x.duration_s, winner = winner, draw = x.score == y.score, sides = '@S@'})
local result = string.gsub(doc, '"@S@"', function()
  return '[' .. table.concat(parts, ',') .. ']'
end)
redis.call('SET', KEYS[1], result, 'EX', ttl)
return {'ok', result}
