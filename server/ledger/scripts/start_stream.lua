-- start_stream: a creator opens a live stream, or reopens one of its own that has ended.
-- Starting a live stream again is a replay.
--
-- A stream id belongs to the creator that first claimed it, for good: nobody else can take
-- it, and its owner can start it again after ending it. A restart reopens the same stream:
-- seq, feed, leaderboard and totals carry on, so that a `?since=` or a history page held
-- by a client stays valid and no sequence number is ever used twice (realtime's epoch, set
-- here, need not change on a restart; a restart that reset seq or the feed would need a
-- new one). Each creator may own at most ARGV[4] ids (docs/ledger.md, "Stream ids").
--
-- KEYS[1]  {s:STREAM}:stream    stream hash
-- KEYS[2]  {s:STREAM}:room      pub/sub channel
-- KEYS[3]  {s:STREAM}:feed      gift feed (cleared when a new stream takes the id)
-- KEYS[4]  {s:STREAM}:top       leaderboard (cleared likewise)
-- KEYS[5]  {u:CREATOR}:streams  set of the stream ids the creator owns
--
-- ARGV[1]  stream id     ARGV[2]  creator id     ARGV[3]  title
-- ARGV[4]  most stream ids one creator may own (streams_per_creator_max)
-- ARGV[5]  creator display name: the host viewers see (set on each start, kept on replay)
--
-- Reply: {'ok', stream JSON} | {'replay', stream JSON} | {'refused', code[, detail JSON]}
-- Stream JSON: stream_id, creator_id, creator_name, title, state, started_at (ms),
--   starts (1 when new)
-- Refusal codes: invalid_request, stream_exists (owned by another creator),
--   stream_limit (a new id past the creator's bound; detail: streams_max)

local stream_id, creator, title, name = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local streams_max = int_arg(ARGV[4], 1, 1000000)
if not (id_arg(stream_id) and id_arg(creator) and type(title) == 'string' and #title <= 256
    and streams_max and type(name) == 'string' and #name >= 1 and #name <= 256) then
  return refuse('invalid_request')
end
local existing = redis.call('HMGET', KEYS[1], 'creator', 'state', 'title', 'started_at',
  'starts', 'creator_name')
local owned = redis.call('SCARD', KEYS[5])  -- fails on a wrong-typed key, before any write
local ms = now_ms()
local function body(state, shown_name, shown_title, started_at, starts)
  return cjson.encode({stream_id = stream_id, creator_id = creator, creator_name = shown_name,
    title = shown_title, state = state, started_at = started_at, starts = starts})
end
local function announce()
  redis.call('PUBLISH', KEYS[2], cjson.encode({type = 'stream', stream_id = stream_id,
    state = 'live'}))
end

if existing[1] then
  if existing[1] ~= creator then
    return refuse('stream_exists')
  end
  -- 'starts' is absent on streams started before restarts existed: they count as one.
  local starts = existing[5] and stored_int(existing[5]) or 1
  if existing[2] == 'live' then
    -- A stream started before names were stored has none: its creator id stands in.
    return {'replay', body('live', existing[6] or creator, existing[3], tonumber(existing[4]),
      starts)}
  end
  -- The owner reopens an ended stream: only its state, title and start change.
  starts = starts + 1
  redis.call('SADD', KEYS[5], stream_id)
  redis.call('HSET', KEYS[1], 'state', 'live', 'title', title, 'creator_name', name,
    'started_at', int(ms), 'starts', int(starts))
  redis.call('HDEL', KEYS[1], 'ended_at')
  announce()
  return {'ok', body('live', name, title, ms, starts)}
end

if owned >= streams_max then
  return refuse('stream_limit', {streams_max = streams_max})
end
-- A feed or leaderboard without its stream hash is a leftover (the hash was deleted by
-- hand): clear it, so that feed entry ids restart at 1 with the sequence.
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('SADD', KEYS[5], stream_id)
redis.call('HSET', KEYS[1], 'creator', creator, 'creator_name', name, 'state', 'live',
  'title', title, 'started_at', int(ms), 'starts', 1, 'seq', 0, 'coins', 0, 'diamonds', 0,
  'gifts', 0)
announce()
return {'ok', body('live', name, title, ms, 1)}
