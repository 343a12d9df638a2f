-- schedule_catalog: add or cancel a scheduled catalog edit. The server publishes an edit
-- at its time with publish_catalog.lua (mode due), which removes it in the same step.
--
-- KEYS[1]  {catalog}:schedule  hash: edit id -> the edit's JSON (as given, at most 64 KiB)
-- KEYS[2]  {catalog}:due       zset: edit id -> when, Redis ms
--
-- ARGV[1]  mode: 'add' | 'cancel'         ARGV[2]  the edit's id (client-chosen)
-- add:     ARGV[3] when (Unix ms, by Redis' clock later than now, at most ARGV[6] ahead)
--          ARGV[4] the edit's JSON         ARGV[5] most edits scheduled at once
--          ARGV[6] furthest ahead, ms
--
-- Reply: {'ok', id} | {'replay', id} (add: the same edit under this id is scheduled) |
--        {'refused', code [, detail JSON]}
-- Refusal codes: invalid_request (also a time not in the future), duplicate_mismatch
--   (add: another edit holds this id), catalog_limit (detail: {scheduled_max}),
--   not_found (cancel: no such edit scheduled: published, cancelled, or never)

local mode, id = ARGV[1], ARGV[2]
if not ((mode == 'add' or mode == 'cancel') and id_arg(id)) then
  return refuse('invalid_request')
end

if mode == 'cancel' then
  if redis.call('HDEL', KEYS[1], id) == 0 then
    return refuse('not_found')
  end
  redis.call('ZREM', KEYS[2], id)
  return {'ok', id}
end

local at = int_arg(ARGV[3], 0, 9007199254740991)
local doc = ARGV[4]
local scheduled_max = int_arg(ARGV[5], 1, 10000)
local ahead_max = int_arg(ARGV[6], 1, 1e12)
if not (at and scheduled_max and ahead_max and type(doc) == 'string' and #doc >= 2
    and #doc <= 65536) then
  return refuse('invalid_request')
end
local held = redis.call('HGET', KEYS[1], id)
if held then
  if held == doc then
    return {'replay', id}
  end
  return refuse('duplicate_mismatch')
end
local ms = now_ms()
if at <= ms or at > ms + ahead_max then
  return refuse('invalid_request')
end
if redis.call('HLEN', KEYS[1]) >= scheduled_max then
  return refuse('catalog_limit', {scheduled_max = scheduled_max})
end
redis.call('HSET', KEYS[1], id, doc)
redis.call('ZADD', KEYS[2], int(at), id)
return {'ok', id}
