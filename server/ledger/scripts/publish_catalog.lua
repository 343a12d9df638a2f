-- publish_catalog: make a gift catalog the one every process serves and send_gift charges.
-- Versions are numbered by Redis, never reused, and each version's document is kept, so
-- that a price can always be traced to the version it was charged under.
--
-- Modes:
--   seed  first writer wins: write the catalog as version ARGV[3] only when Redis holds no
--         catalog (a fresh Redis, or one that lost its data); otherwise change nothing.
--   push  an operator's explicit change: the catalog becomes version current + 1, unless
--         it is the same document as the current version (then nothing changes), or
--         ARGV[3] is not 0 and not the current version (compare-and-set; then refused).
--   due   a scheduled edit (schedule_catalog.lua) whose time has come, made by the caller
--         from version ARGV[3] into ARGV[2]: written as current + 1 (or nothing, if it is
--         the current document) and removed from the schedule in the same step, only if
--         it is still scheduled, is due by Redis' clock, and ARGV[3] is current. Every
--         process may try it at its time: exactly one writes it.
--
-- KEYS[1]  {catalog}:prices    hash: gift id -> price in coins, and '@version' -> version
--                              (what send_gift reads: prices and their version together)
-- KEYS[2]  {catalog}:versions  hash: version -> catalog document (JSON, without version)
-- KEYS[3]  {catalog}:schedule  hash: scheduled edit id -> its JSON (due mode)
-- KEYS[4]  {catalog}:due       zset: scheduled edit id -> when, Redis ms (due mode)
--
-- ARGV[1]  mode: 'seed' | 'push'
-- ARGV[2]  the catalog document (JSON text, at most 1 MiB), stored as given
-- ARGV[3]  seed: the version to write (1 for a fresh Redis)
--          push: the version the caller expects to replace (0: whichever is current)
--          due: the version the edit was applied to (must be current)
-- ARGV[4]  largest price
-- ARGV[5]  due: the scheduled edit's id; seed and push: ''
-- ARGV[6], ARGV[7], ...  gift id, price in coins (pairs; at least one, at most 1000)
--
-- Reply: {'ok', version} a new version was written | {'exists', version} seed found one |
--        {'same', version} push (or due) of the current document |
--        {'gone', version} due: the edit is no longer scheduled (done or cancelled) |
--        {'early', at_ms} due: not yet | {'refused', code [, detail JSON]}
-- Refusal codes: invalid_request, catalog_changed (detail: {catalog_version = current})
-- Errors: a versions hash that already holds the next version (written outside the script)

local mode, doc = ARGV[1], ARGV[2]
local version_arg = int_arg(ARGV[3], 0, 9007199254740991)
local price_max = int_arg(ARGV[4], 1, 1e11)
local entry_id = ARGV[5]
local pairs_count = (#ARGV - 5) / 2
if not ((mode == 'seed' or mode == 'push' or mode == 'due') and type(doc) == 'string'
    and ((mode ~= 'due' and entry_id == '') or (mode == 'due' and id_arg(entry_id)))
    and #doc >= 2
    and #doc <= 1048576 and version_arg and price_max and pairs_count >= 1
    and pairs_count <= 1000 and pairs_count == math.floor(pairs_count)) then
  return refuse('invalid_request')
end
if mode == 'seed' and version_arg < 1 then
  return refuse('invalid_request')
end
local prices = {}
for i = 6, #ARGV, 2 do
  local price = int_arg(ARGV[i + 1], 1, price_max)
  if not (id_arg(ARGV[i]) and price) then
    return refuse('invalid_request')
  end
  prices[#prices + 1] = ARGV[i]
  prices[#prices + 1] = int(price)
end

if mode == 'due' then
  if not redis.call('HGET', KEYS[3], entry_id) then
    return {'gone', redis.call('HGET', KEYS[1], '@version') or '0'}
  end
  local at = stored_int(redis.call('ZSCORE', KEYS[4], entry_id))
  if at > now_ms() then
    return {'early', int(at)}
  end
end

local current = redis.call('HGET', KEYS[1], '@version')
if current then
  current = stored_int(current)
  if mode == 'seed' then
    return {'exists', int(current)}
  end
  if version_arg ~= 0 and version_arg ~= current then
    return refuse('catalog_changed', {catalog_version = current})
  end
  if mode == 'due' and version_arg ~= current then
    return refuse('catalog_changed', {catalog_version = current})
  end
  if redis.call('HGET', KEYS[2], int(current)) == doc then
    if mode == 'due' then
      redis.call('HDEL', KEYS[3], entry_id)
      redis.call('ZREM', KEYS[4], entry_id)
    end
    return {'same', int(current)}
  end
elseif mode ~= 'seed' and version_arg ~= 0 then
  return refuse('catalog_changed', {catalog_version = 0})
end

local version = version_arg
if mode ~= 'seed' then
  version = (current or 0) + 1
end
local held = redis.call('HGET', KEYS[2], int(version))
if held and held ~= doc then
  -- Only a hand edit (or a Redis that kept the versions but lost the prices) gets here.
  error('giftwire: catalog version ' .. int(version) .. ' already holds another document')
end

-- Every check passed: write.
redis.call('DEL', KEYS[1])
prices[#prices + 1] = '@version'
prices[#prices + 1] = int(version)
redis.call('HSET', KEYS[1], unpack(prices))
redis.call('HSET', KEYS[2], int(version), doc)
if mode == 'due' then
  redis.call('HDEL', KEYS[3], entry_id)
  redis.call('ZREM', KEYS[4], entry_id)
end
return {'ok', int(version)}
