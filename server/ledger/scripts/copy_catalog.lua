-- copy_catalog: make one slot's catalog copy (cluster mode) a whole version, never an
-- older one than it holds. debit_gift.lua prices a gift from the copy in the sender's slot
-- and checks the version the viewer was shown against it; every server process copies a
-- new version into every slot, at its own time, so two copies may race: the older one
-- loses here, and a gift that left the catalog leaves the copy with the same write.
--
-- KEYS[1]  {~N}:catalog   the slot's copy: gift id -> price in coins, '@version' -> version
--
-- ARGV[1]  the version being copied (>= 1)
-- ARGV[2]  largest price
-- ARGV[3], ARGV[4], ...  gift id, price in coins (pairs; at least one, at most 1000)
--
-- Reply: {'ok', version} the copy is now this version |
--        {'replay', held} the copy holds this version or a newer one: nothing written |
--        {'refused', 'invalid_request'}

local version = int_arg(ARGV[1], 1, 9007199254740991)
local price_max = int_arg(ARGV[2], 1, 1e11)
local pairs_count = (#ARGV - 2) / 2
if not (version and price_max and pairs_count >= 1 and pairs_count <= 1000
    and pairs_count == math.floor(pairs_count)) then
  return refuse('invalid_request')
end
for i = 3, #ARGV, 2 do
  if not (id_arg(ARGV[i]) and int_arg(ARGV[i + 1], 1, price_max)) then
    return refuse('invalid_request')
  end
end
local held = tonumber(redis.call('HGET', KEYS[1], '@version') or '0') or 0
if held >= version then
  return {'replay', tostring(held)}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '@version', ARGV[1], unpack(ARGV, 3))
return {'ok', ARGV[1]}
