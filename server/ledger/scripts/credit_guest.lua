-- include: _gift_rules.lua
-- credit_guest: a guest's part of a gift on a Redis Cluster (docs/ledger.md, "Guests on
-- stage"). credit_gifts.lua, in the creator's slot, decided from the stage that this guest
-- receives `coins` of transfer TRANSFER and left a guest-credit entry in its slot's outbox;
-- this script applies it in the guest's slot, exactly once by its credit id
-- TRANSFER|GUEST: the guest's diamonds with their own carried share_rem (the same split as
-- a creator's, _gift_rules.lua), the platform's share in the guest's slot, a log entry.
-- Every check comes before the first write.
--
-- KEYS[1]  {u:GUEST}:credit:TRANSFER|GUEST  the guest-credit's marker (TTL)
-- KEYS[2]  {u:GUEST}:acct                   the guest's account hash (diamonds, share_rem)
-- KEYS[3]  {~M}:platform                    the guest's slot's platform share hash
-- KEYS[4]  {~M}:log                         the guest's slot's ledger log
--
-- ARGV[1]  credit id (TRANSFER|GUEST)   ARGV[2]  transfer id   ARGV[3]  guest id
-- ARGV[4]  sender id   ARGV[5]  creator id   ARGV[6]  stream id   ARGV[7]  coins (the
-- guest's part)   ARGV[8]  share, basis points   ARGV[9]  the gift's seq in its stream
-- ARGV[10] when the credit leg wrote it (ms, that primary's clock)
-- ARGV[11] marker TTL, seconds (the receipt TTL)   ARGV[12] largest balance
--
-- Reply: {'ok', result JSON} | {'replay', result JSON (the first's)} |
--   {'refused', 'invalid_request'} (a malformed call)
-- Result: credit_id, transfer_id, user_id, coins, diamonds, platform_coins, share_rem (after),
--   status 'ok'; or credit_id, status 'refused', code (nothing written; the entry stays in
--   its outbox, as credit_gifts.lua's refused transfers): balance_limit (the guest or the
--   slot's platform share would pass the largest balance), transfer_expired (written
--   longer ago than the marker TTL less a minute and not applied: it may have been applied
--   before its marker expired, so it is left to an operator).
-- Ledger entry: type=guest_credit, credit_id, transfer_id, from (sender), to (guest),
--   creator, stream, coins, diamonds, platform, share_bps, share_rem (after), seq
--
-- TODO (payout hold, docs/ledger.md): the guest's diamonds go to `diamonds` of their
-- account, as a creator's do in credit_gifts.lua; the hold, once the credit leg keeps one,
-- belongs here too (held buckets in this account, in this slot).

local SKEW_MS = 60000  -- as credit_gifts.lua: clock difference between two primaries
local credit_id, transfer, guest, sender, creator, stream_id = ARGV[1], ARGV[2], ARGV[3],
  ARGV[4], ARGV[5], ARGV[6]
local coins = int_arg(ARGV[7], 0, 1e11)
local share_bps = int_arg(ARGV[8], 0, 10000)
local seq = int_arg(ARGV[9], 1, 9007199254740991)
local written_ms = int_arg(ARGV[10], 0, 9007199254740991)
local ttl = int_arg(ARGV[11], 1, 1e9)
local amount_max = int_arg(ARGV[12], 1, 1e13)
local suffix = ':credit:' .. tostring(credit_id)
if not (type(transfer) == 'string' and #transfer >= 1 and #transfer <= 200
    and id_arg(guest) and id_arg(sender) and id_arg(creator) and id_arg(stream_id)
    and credit_id == transfer .. '|' .. guest and guest ~= sender and guest ~= creator
    and coins and share_bps and seq and written_ms and ttl and amount_max
    and string.sub(KEYS[1], -#suffix) == suffix) then
  return refuse('invalid_request')
end

local stored = redis.call('GET', KEYS[1])
if stored then
  return {'replay', stored}
end
local ms = now_ms()
if ms - written_ms > ttl * 1000 - SKEW_MS then
  return {'ok', cjson.encode({credit_id = credit_id, status = 'refused',
    code = 'transfer_expired'})}
end
local acct = redis.call('HMGET', KEYS[2], 'diamonds', 'share_rem')
local held, share_rem = stored_int(acct[1]), stored_int(acct[2])
local diamonds, rem, platform = gift_split(share_rem, coins, share_bps)
local platform_held = stored_int(redis.call('HGET', KEYS[3], 'coins'))
if held + diamonds > amount_max or platform_held + platform > amount_max then
  return {'ok', cjson.encode({credit_id = credit_id, status = 'refused',
    code = 'balance_limit'})}
end
redis.call('XLEN', KEYS[4])  -- a wrong-typed log fails here, before the first write

redis.call('HSET', KEYS[2], 'diamonds', int(held + diamonds), 'share_rem', int(rem))
redis.call('HINCRBY', KEYS[3], 'coins', int(platform))
redis.call('XADD', KEYS[4], '*', 'type', 'guest_credit', 'credit_id', credit_id,
  'transfer_id', transfer, 'from', sender, 'to', guest, 'creator', creator,
  'stream', stream_id, 'coins', int(coins), 'diamonds', int(diamonds),
  'platform', int(platform), 'share_bps', int(share_bps), 'share_rem', int(rem),
  'seq', int(seq))
local result = cjson.encode({credit_id = credit_id, transfer_id = transfer, user_id = guest,
  coins = coins, diamonds = diamonds, platform_coins = platform, share_rem = rem,
  status = 'ok'})
redis.call('SET', KEYS[1], result, 'EX', ttl)
return {'ok', result}
