-- include: _hold.lua
-- cash_out: a creator turns diamonds into a pending payout, once per client id. Only the
-- withdrawable diamonds may be cashed out: those still in the payout hold may not.
--
-- KEYS[1]  {u:CREATOR}:cashout:CLIENT_ID   payout hash (diamonds, cents, state, receipt)
-- KEYS[2]  {u:CREATOR}:acct                the creator's account hash (diamonds, cents_rem)
-- KEYS[3]  {ledger}:log                    ledger stream
--
-- ARGV[1]  client id     ARGV[2]  creator id     ARGV[3]  diamonds
-- ARGV[4]  minimum diamonds     ARGV[5]  cents per 100 diamonds     ARGV[6]  largest amount
-- ARGV[7]  payout hold, days (0: none)     ARGV[8]  length of a hold day, seconds
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail]}
-- Receipt JSON: transfer_id, client_id, user_id, diamonds, cents, balance (diamonds after),
--   state ('pending'), ts
-- Ledger entry: type=cash_out, client_id, from, diamonds, cents, rate (cents per 100
--   diamonds), cents_rem (the creator's hundredths of a cent carried after)
-- Refusal codes: invalid_request (also: payout above the largest amount), duplicate_mismatch,
--   below_minimum, insufficient_funds (detail: balance), funds_held (detail: balance,
--   withdrawable, held, next_release_ms: the diamonds are there but still in the hold)

local client_id, creator = ARGV[1], ARGV[2]
local amount_max = int_arg(ARGV[6], 1, 1e13)
local diamonds = amount_max and int_arg(ARGV[3], 1, amount_max)
local minimum = amount_max and int_arg(ARGV[4], 0, amount_max)
local rate = int_arg(ARGV[5], 1, 10000)
local hold_days = int_arg(ARGV[7], 0, 365)
local hold_day_s = int_arg(ARGV[8], 1, 1000000)
if not (id_arg(client_id) and id_arg(creator) and diamonds and minimum and rate and hold_days
    and hold_day_s) then
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
local _, seconds = now_ms()
local hold = hold_read(KEYS[2], math.floor(seconds / hold_day_s), hold_days)
if hold.held > balance then
  error('giftwire: more diamonds held than the balance: ' .. int(hold.held))
end
if balance - hold.held < diamonds then
  return refuse('funds_held', {balance = balance, withdrawable = balance - hold.held,
    held = hold.held, next_release_ms = hold_next_release_ms(hold, hold_days, hold_day_s)})
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
hold_write(KEYS[2], hold)
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
