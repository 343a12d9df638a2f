-- include: _hold.lua
-- include: _hold_legs.lua
-- clawback: the creator's leg of a chargeback on a Redis Cluster (docs/ledger.md, "The payout
-- hold in cluster mode"). Applies one clawback that refund_claim.lua queued, exactly once by
-- its clawback id (PAYMENT|REFUND_ID|CREATOR): for each reversed (day, share, coins), the
-- exact inverse of the gift's split, carrying the creator's share_rem as refund.lua does,
-- the diamonds out of the gift's own day bucket first, then the newest held ones, then the
-- withdrawable part (only when the hold ended between the legs); the platform's share back
-- from the creator's slot's platform shard. Every key is in the creator's slot.
--
-- KEYS[1]  {u:CREATOR}:acct                   creator account hash (diamonds, share_rem, hold)
-- KEYS[2]  {~N}:platform                      the creator's slot's platform share hash
-- KEYS[3]  {~N}:log                           the creator's slot's ledger log
-- KEYS[4]  {u:CREATOR}:clawback:PAYMENT|REFUND_ID   the marker: applied once (TTL)
--
-- ARGV[1]  clawback id     ARGV[2]  creator id     ARGV[3]  buyer id
-- ARGV[4]  payment id      ARGV[5]  refund id
-- ARGV[6]  items: "DAY:SHARE_BPS:COINS,..." (newest first, as claimed; at most the buyer's
--          record's entries: GIFTWIRE_PAYOUT_HOLD_ENTRIES_MAX)
-- ARGV[7]  claim time, ms (the buyer's slot's clock)
-- ARGV[8]  payout hold, days     ARGV[9]  length of a hold day, seconds
-- ARGV[10] marker TTL, seconds (the receipt TTL)
--
-- Reply: {'ok', result JSON} | {'replay', result JSON} | {'refused', code [, detail]}
-- Result JSON: clawback_id, coins, diamonds (taken back), platform (returned), ts
-- Ledger entries: one type=clawback per item: clawback_id, payment, refund_id, from (creator),
--   to (buyer), coins, diamonds, platform (= coins - diamonds), share_bps, share_rem (after),
--   day: refund.lua's clawback entry with the clawback id
-- Refusal codes (nothing written; the clawback stays in its outbox): invalid_request,
--   insufficient_funds (the creator holds fewer diamonds than the clawback takes: cashed
--   out after the hold ended between the legs; left to an operator), transfer_expired
--   (claimed longer ago than the marker TTL less a minute and not applied: it may have been
--   applied before its marker expired, so it is left to an operator, never applied twice)

local SKEW_MS = 60000  -- clock difference between two primaries that the expiry tolerates
local ITEMS_MAX = 100000  -- the largest bound of the buyer's record (send_gift.lua's)
local clawback_id, creator, buyer, payment_id, refund_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5]
local claimed_ms = int_arg(ARGV[7], 0, 9007199254740991)
local hold_days = int_arg(ARGV[8], 0, 365)
local hold_day_s = int_arg(ARGV[9], 1, 1000000)
local ttl = int_arg(ARGV[10], 1, 1e9)
local suffix = ':clawback:' .. tostring(payment_id) .. '|' .. tostring(refund_id)
if not (id_arg(creator) and id_arg(buyer) and id_arg(payment_id) and id_arg(refund_id)
    and clawback_id == payment_id .. '|' .. refund_id .. '|' .. creator
    and type(ARGV[6]) == 'string' and claimed_ms and hold_days and hold_day_s and ttl
    and #KEYS == 4 and #ARGV == 10 and string.sub(KEYS[4], -#suffix) == suffix) then
  return refuse('invalid_request')
end
local items, total = {}, 0
for day, share, coins in string.gmatch(ARGV[6], '(%d+):(%d+):(%d+)') do
  local item = {day = int_arg(day, 0, 1e9), share = int_arg(share, 0, 10000),
    coins = int_arg(coins, 1, 1e13)}
  if not (item.day and item.share and item.coins) or #items >= ITEMS_MAX then
    return refuse('invalid_request')
  end
  items[#items + 1] = item
  total = total + item.coins
end
local canonical = {}
for i, item in ipairs(items) do
  canonical[i] = int(item.day) .. ':' .. int(item.share) .. ':' .. int(item.coins)
end
if #items == 0 or total > 1e13 or table.concat(canonical, ',') ~= ARGV[6] then
  return refuse('invalid_request')
end

local stored = redis.call('GET', KEYS[4])
if stored then
  return {'replay', stored}
end
local ms, seconds = now_ms()
if ms - claimed_ms > ttl * 1000 - SKEW_MS then
  return refuse('transfer_expired')
end
local f = redis.call('HMGET', KEYS[1], 'held', 'hold_day', 'hold_ring', 'diamonds', 'share_rem')
local st = hold_view(f, math.floor(seconds / hold_day_s), hold_days)
st.diamonds, st.share_rem = stored_int(f[4]), stored_int(f[5])
if st.share_rem < 0 or st.share_rem >= HOLD_UNITS then
  error('giftwire: stored share remainder out of range: ' .. int(st.share_rem))
end
local diamonds_total, platform = 0, 0
for _, item in ipairs(items) do
  local diamonds, share_rem = hold_unsplit(item.coins, item.share, st.share_rem)
  hold_take(st, item.day, diamonds)
  st.diamonds, st.share_rem = st.diamonds - diamonds, share_rem
  item.diamonds, item.share_rem = diamonds, share_rem
  diamonds_total, platform = diamonds_total + diamonds, platform + item.coins - diamonds
end
if st.diamonds < 0 then
  return refuse('insufficient_funds', {balance = st.diamonds + diamonds_total,
    diamonds = diamonds_total})
end
if st.diamonds < st.held then
  error('giftwire: a clawback takes more diamonds than ' .. creator .. ' holds')
end
if stored_int(redis.call('HGET', KEYS[2], 'coins')) < platform then
  error('giftwire: the platform shard holds less than the clawback returns')
end
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write

-- Every check passed: write.
redis.call('HSET', KEYS[1], 'diamonds', int(st.diamonds), 'share_rem', int(st.share_rem))
hold_write(KEYS[1], st)
redis.call('HINCRBY', KEYS[2], 'coins', int(-platform))
for _, item in ipairs(items) do
  redis.call('XADD', KEYS[3], '*', 'type', 'clawback', 'clawback_id', clawback_id,
    'payment', payment_id, 'refund_id', refund_id, 'from', creator, 'to', buyer,
    'coins', int(item.coins), 'diamonds', int(item.diamonds),
    'platform', int(item.coins - item.diamonds), 'share_bps', int(item.share),
    'share_rem', int(item.share_rem), 'day', int(item.day))
end
local result = cjson.encode({clawback_id = clawback_id, coins = total,
  diamonds = diamonds_total, platform = platform, ts = ms})
redis.call('SET', KEYS[4], result, 'EX', ttl)
return {'ok', result}
