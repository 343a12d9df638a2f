-- include: _battle.lua
-- include: _cluster_battle.lua
-- battle_end_side (cluster mode, one side's slot): end one side of a battle at this
-- primary's TIME, on time (refused before ends_at), by either creator, or because a stream
-- ended. From here credit_gifts.lua scores nothing more for this side: its window is
-- [starts_at, ended_at), ended_at = min(TIME, ends_at), and its score and gifters are
-- final. The server ends both sides (one call each, either order), then stores the result
-- with battle_result.lua from the two replies (docs/ledger.md, "Battles in cluster mode").
-- Ending an ended side is a replay of its final JSON.
--
-- KEYS[1]  {u:C}:s:STREAM:battle       the side
-- KEYS[2]  {u:C}:s:STREAM:battle_top   its gifters
--
-- ARGV[1]  battle id   ARGV[2]  stream id (the side's)   ARGV[3]  acting user id ('-')
-- ARGV[4]  reason: 'time' | 'ended' (ARGV[3] one of the creators) | 'stream_ended'
-- ARGV[5]  top gifters in the side's JSON
--
-- Reply: {'ok', side JSON} | {'replay', side JSON} | {'refused', code[, detail JSON]}
-- Side JSON: battle_id, stream_id, opponent, creator_id, creator_name, side, score,
--   mvp ({user_id, coins} or null), top, starts_at, ends_at, duration_s, ended_at,
--   reason ('time' once ends_at passed, whatever was asked), ran (false: side 'a' never
--   reached running, it scored nothing)
-- Refusal codes: invalid_request, unknown_battle, not_stream_owner, battle_not_over
--   (reason 'time' before ends_at; detail: ends_at)

local battle_id, stream_id, actor, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local top_n = int_arg(ARGV[5], 1, 100)
if not (id_arg(battle_id) and id_arg(stream_id) and (actor == '-' or id_arg(actor))
    and (reason == 'time' or reason == 'ended' or reason == 'stream_ended') and top_n) then
  return refuse('invalid_request')
end
local b = battle_read(KEYS[1])
if b.id ~= battle_id then
  return refuse('unknown_battle')
end
if reason == 'ended' and actor ~= b.creator and actor ~= b.opponent_creator then
  return refuse('not_stream_owner')
end
if b.state == 'ended' then
  return {'replay', b.side_result}
end
local ms = now_ms()
local ends_at = stored_int(b.ends_at)
if reason == 'time' and ms < ends_at then
  return refuse('battle_not_over', {ends_at = ends_at})
end
if ms >= ends_at then
  reason = 'time'
end
local score = stored_int(b.score)
local best = redis.call('ZREVRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local mvp = cjson.null
if best[1] then
  mvp = {user_id = best[1], coins = tonumber(best[2])}
end
local ended_at = math.min(ms, ends_at)
local doc = battle_encode({battle_id = battle_id, stream_id = stream_id,
  opponent = b.opponent, creator_id = b.creator, creator_name = b.name or b.creator,
  side = b.side, score = score, mvp = mvp, top = '@T@',
  starts_at = stored_int(b.starts_at), ends_at = ends_at,
  duration_s = stored_int(b.duration_s), ended_at = ended_at, reason = reason,
  ran = b.state == 'running'}, {T = battle_top_json(KEYS[2], top_n)})
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended_at', int(ended_at), 'reason', reason,
  'side_result', doc)
return {'ok', doc}
