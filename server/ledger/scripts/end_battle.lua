-- include: _battle.lua
-- end_battle: end a running battle and store its result: on time (any server, once the
-- end has passed), by either creator, or because one of the streams ended. The scores
-- are final here: gifts at or after ends_at never scored (send_gift.lua), and from this
-- script on the state is 'ended', so none after ended_at scores either. Ending a battle
-- that has ended is a replay of its result.
--
-- KEYS[1]  {s:X}:battle        one side's battle hash (either side)
-- KEYS[2]  {s:Y}:battle        the other side's
-- KEYS[3]  {s:X}:battle_top    KEYS[4] {s:Y}:battle_top   the sides' gifters
-- KEYS[5]  {s:X}:room          KEYS[6] {s:Y}:room         the rooms' channels
-- KEYS[7]  {battle:ID}:result  the stored result (string, JSON, TTL)
--
-- ARGV[1]  battle id   ARGV[2]  stream X   ARGV[3]  stream Y
-- ARGV[4]  acting user id ('-' for the server)
-- ARGV[5]  reason: 'time' (refused before the end), 'ended' (a creator ends it: ARGV[4]
--          must be one of them), 'stream_ended' (the server, after end_stream)
-- ARGV[6]  top gifters per side in the result   ARGV[7]  result lifetime, seconds
--
-- Reply: {'ok', result JSON} | {'replay', result JSON} | {'refused', code[, detail JSON]}
-- Result JSON (published to both rooms, type 'battle_end'): battle_id, reason ('time' when
--   the end had passed, whatever was asked), starts_at, ends_at, ended_at (ms),
--   duration_s, winner (stream id, null on a draw), draw, sides: [{stream_id,
--   creator_id, creator_name, side, score, mvp ({user_id, coins} or null), top}] (a first)
-- Refusal codes: invalid_request, unknown_battle (no such battle between X and Y),
--   not_stream_owner, battle_not_over (reason 'time' before the end; detail: ends_at)

local battle_id, x, y, actor, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local top_n = int_arg(ARGV[6], 1, 100)
local result_ttl = int_arg(ARGV[7], 1, 1e9)
if not (id_arg(battle_id) and id_arg(x) and id_arg(y) and (actor == '-' or id_arg(actor))
    and (reason == 'time' or reason == 'ended' or reason == 'stream_ended') and top_n
    and result_ttl) then
  return refuse('invalid_request')
end
local bx, by = battle_read(KEYS[1]), battle_read(KEYS[2])
if bx.id ~= battle_id or by.id ~= battle_id or bx.opponent ~= y or by.opponent ~= x then
  return refuse('unknown_battle')
end
if reason == 'ended' and actor ~= bx.creator and actor ~= by.creator then
  return refuse('not_stream_owner')
end
if bx.state == 'ended' and by.state == 'ended' then
  return {'replay', bx.result}
end
local ms = now_ms()
local ends_at = stored_int(bx.ends_at)
if reason == 'time' and ms < ends_at then
  return refuse('battle_not_over', {ends_at = ends_at})
end
if ms >= ends_at then
  reason = 'time'
end
redis.call('ZCARD', KEYS[3])  -- type checks before the first write
redis.call('ZCARD', KEYS[4])
redis.call('GET', KEYS[7])

-- Side a first, whichever stream the caller named.
local sides = {{bx, KEYS[3], x}, {by, KEYS[4], y}}
if bx.side ~= 'a' then
  sides = {sides[2], sides[1]}
end
local parts, scores = {}, {}
for i, s in ipairs(sides) do
  local b, top_key = s[1], s[2]
  scores[i] = stored_int(b.score)
  local best = redis.call('ZREVRANGE', top_key, 0, 0, 'WITHSCORES')
  local mvp = cjson.null
  if best[1] then
    mvp = {user_id = best[1], coins = tonumber(best[2])}
  end
  parts[i] = battle_encode({stream_id = s[3], creator_id = b.creator,
    creator_name = b.name or b.creator, side = b.side,
    score = scores[i], mvp = mvp, top = '@T@'}, {T = battle_top_json(top_key, top_n)})
end
local winner = cjson.null
if scores[1] > scores[2] then
  winner = sides[1][3]
elseif scores[2] > scores[1] then
  winner = sides[2][3]
end
local ended_at = math.min(ms, ends_at)
local result = battle_encode({type = 'battle_end', battle_id = battle_id, reason = reason,
  starts_at = stored_int(bx.starts_at), ends_at = ends_at, ended_at = ended_at,
  duration_s = stored_int(bx.duration_s), winner = winner, draw = scores[1] == scores[2],
  sides = '@S@'}, {S = '[' .. table.concat(parts, ',') .. ']'})
for _, key in ipairs({KEYS[1], KEYS[2]}) do
  redis.call('HSET', key, 'state', 'ended', 'ended_at', int(ended_at), 'reason', reason,
    'result', result)
end
redis.call('SET', KEYS[7], result, 'EX', result_ttl)
redis.call('PUBLISH', KEYS[5], result)
redis.call('PUBLISH', KEYS[6], result)
return {'ok', result}
