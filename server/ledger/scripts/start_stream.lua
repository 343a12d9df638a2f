-- start_stream: a creator opens a live stream. Starting the same stream again is a replay.
--
-- KEYS[1]  {s:STREAM}:stream   stream hash
-- KEYS[2]  {s:STREAM}:room     pub/sub channel
-- KEYS[3]  {s:STREAM}:feed     gift feed (cleared when a new stream takes the id)
-- KEYS[4]  {s:STREAM}:top      leaderboard (cleared likewise)
--
-- ARGV[1]  stream id     ARGV[2]  creator id     ARGV[3]  title
-- ARGV[4]  creator display name (what viewers see as the host; kept as first given)
--
-- Reply: {'ok', stream JSON} | {'replay', stream JSON} | {'refused', code}
-- Stream JSON: stream_id, creator_id, creator_name, title, state, started_at (ms)
-- Refusal codes: invalid_request, stream_exists (owned by someone else, or already ended)

local stream_id, creator, title, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not (id_arg(stream_id) and id_arg(creator) and type(title) == 'string' and #title <= 256
    and type(name) == 'string' and #name >= 1 and #name <= 256) then
  return refuse('invalid_request')
end
local existing = redis.call('HMGET', KEYS[1], 'creator', 'state', 'title', 'started_at',
  'creator_name')
if existing[1] then
  if existing[1] ~= creator or existing[2] ~= 'live' then
    return refuse('stream_exists')
  end
  -- A stream started before names were stored has none: its creator id stands in.
  return {'replay', cjson.encode({stream_id = stream_id, creator_id = creator,
    creator_name = existing[5] or creator, title = existing[3], state = 'live',
    started_at = tonumber(existing[4])})}
end
local ms = now_ms()
-- A feed or leaderboard without its stream hash is a leftover (the hash was deleted by
-- hand): clear it, so that feed entry ids restart at 1 with the sequence.
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'creator', creator, 'creator_name', name, 'state', 'live',
  'title', title, 'started_at', int(ms), 'seq', 0, 'coins', 0, 'diamonds', 0, 'gifts', 0)
local body = cjson.encode({stream_id = stream_id, creator_id = creator, creator_name = name,
  title = title, state = 'live', started_at = ms})
redis.call('PUBLISH', KEYS[2], cjson.encode({type = 'stream', stream_id = stream_id,
  state = 'live'}))
return {'ok', body}
