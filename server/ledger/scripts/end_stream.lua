-- end_stream: the creator (or an admin) ends a live stream; gifts are refused from then on.
--
-- KEYS[1]  {s:STREAM}:stream   stream hash
-- KEYS[2]  {s:STREAM}:room     pub/sub channel
--
-- ARGV[1]  stream id     ARGV[2]  acting user id     ARGV[3]  '1' if the actor is an admin
--
-- Reply: {'ok', stream JSON} | {'replay', stream JSON} | {'refused', code}
-- Stream JSON: stream_id, creator_id, state, ended_at (ms), seq, coins, diamonds, gifts
-- Refusal codes: invalid_request, unknown_stream, not_stream_owner

local stream_id, actor, is_admin = ARGV[1], ARGV[2], ARGV[3] == '1'
if not (id_arg(stream_id) and id_arg(actor)) then
  return refuse('invalid_request')
end
local s = redis.call('HMGET', KEYS[1], 'creator', 'state', 'ended_at', 'seq', 'coins',
  'diamonds', 'gifts')
if not s[1] then
  return refuse('unknown_stream')
end
if s[1] ~= actor and not is_admin then
  return refuse('not_stream_owner')
end
local function body(ended_at)
  return cjson.encode({stream_id = stream_id, creator_id = s[1], state = 'ended',
    ended_at = ended_at, seq = tonumber(s[4]), coins = tonumber(s[5]),
    diamonds = tonumber(s[6]), gifts = tonumber(s[7])})
end
if s[2] == 'ended' then
  return {'replay', body(tonumber(s[3]))}
end
local ms = now_ms()
redis.call('HSET', KEYS[1], 'state', 'ended', 'ended_at', int(ms))
redis.call('PUBLISH', KEYS[2], cjson.encode({type = 'stream', stream_id = stream_id,
  state = 'ended', seq = tonumber(s[4])}))
return {'ok', body(ms)}
