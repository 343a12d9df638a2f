-- cash_out: a creator turns diamonds into a pending payout, once per client id.
--
-- KEYS[1]  {u:CREATOR}:cashout:CLIENT_ID   payout hash (diamonds, cents, state, receipt)
-- KEYS[2]  {u:CREATOR}:acct                the creator's account hash (diamonds, cents_rem)
-- KEYS[3]  {ledger}:log                    ledger stream
--
-- ARGV[1]  client id     ARGV[2]  creator id     ARGV[3]  diamonds
-- ARGV[4]  minimum diamonds     ARGV[5]  cents per 100 diamonds     ARGV[6]  largest amount
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail]}
-- Receipt JSON: transfer_id, client_id, user_id, diamonds, cents, balance (diamonds after),
--   state ('pending'), ts
-- Ledger entry: type=cash_out, client_id, from, diamonds, cents, rate (cents per 100
--   diamonds), cents_rem (the creator's hundredths of a cent carried after)
-- Refusal codes: invalid_request (also: payout above the largest amount), duplicate_mismatch,
--   below_minimum, insufficient_funds

local client_id, creator = ARGV[1], ARGV[2]
local amount_max = int_arg(ARGV[6], 1, 1e13)
local diamonds = amount_max and int_arg(ARGV[3], 1, amount_max)
local minimum = amount_max and int_arg(ARGV[4], 0, amount_max)
local rate = int_arg(ARGV[5], 1, 10000)
if not (id_arg(client_id) and id_arg(creator) and diamonds and minimum and rate) then
  return refuse('invalid_request')
end

local existing = redis.call('HMGET', KEYS[1], 'diamonds', 'receipt')
if existing[1] then
  if tonumber(existing[1]) ~= diamonds then
    return refuse('duplicate_mismatch')
  end
  return {'replay', existing[2]}
end
if diamonds < minimum then
  return refuse('below_minimum', {minimum = minimum})
end
local balance = stored_int(redis.call('HGET', KEYS[2], 'diamonds'))
if balance < diamonds then
  return refuse('insufficient_funds', {balance = balance})
end

-- A payout is an amount too: past 10^13 cents, diamonds * rate passes 10^15 and cjson's
-- 14 digits (and, further on, 2^53) would no longer hold it exactly.
if diamonds * rate > amount_max * 100 then
  return refuse('invalid_request')
end
-- The creator's fraction of a cent is carried from one cash-out to the next: `cents_rem`
-- (hundredths of a cent, 0..99), so that the cents paid are the floor of the sum of
-- diamonds x rate / 100 however the diamonds were split into cash-outs.
local owed = stored_int(redis.call('HGET', KEYS[2], 'cents_rem'))
if owed < 0 or owed >= 100 then
  error('giftwire: stored cents remainder out of range: ' .. int(owed))
end
owed = owed + diamonds * rate
local cents = math.floor(owed / 100)
local cents_rem = owed - cents * 100
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
local new_balance = redis.call('HINCRBY', KEYS[2], 'diamonds', -diamonds)
redis.call('HSET', KEYS[2], 'cents_rem', int(cents_rem))
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'cash_out', 'client_id', client_id,
  'from', creator, 'diamonds', int(diamonds), 'cents', int(cents), 'rate', int(rate),
  'cents_rem', int(cents_rem))
local receipt = cjson.encode({
  transfer_id = transfer_id, client_id = client_id, user_id = creator, diamonds = diamonds,
  cents = cents, balance = new_balance, state = 'pending', ts = ms,
})
redis.call('HSET', KEYS[1], 'diamonds', int(diamonds), 'cents', int(cents), 'state', 'pending',
  'receipt', receipt)
return {'ok', receipt}
