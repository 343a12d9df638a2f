-- cash_out: a creator turns diamonds into a pending payout, once per client id.
--
-- KEYS[1]  {u:CREATOR}:cashout:CLIENT_ID   payout hash (diamonds, cents, state, receipt)
-- KEYS[2]  {u:CREATOR}:acct                the creator's account hash
-- KEYS[3]  {ledger}:log                    ledger stream
--
-- ARGV[1]  client id     ARGV[2]  creator id     ARGV[3]  diamonds
-- ARGV[4]  minimum diamonds     ARGV[5]  cents per 100 diamonds     ARGV[6]  largest amount
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail]}
-- Receipt JSON: transfer_id, client_id, user_id, diamonds, cents, balance (diamonds after),
--   state ('pending'), ts
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

local cents = math.floor(diamonds * rate / 100)
-- A payout is an amount too: past 10^13 cents, diamonds * rate passes 10^15 and cjson's
-- 14 digits (and, further on, 2^53) would no longer hold it exactly.
if cents > amount_max then
  return refuse('invalid_request')
end
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
local new_balance = redis.call('HINCRBY', KEYS[2], 'diamonds', -diamonds)
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'cash_out', 'client_id', client_id,
  'from', creator, 'diamonds', int(diamonds), 'cents', int(cents))
local receipt = cjson.encode({
  transfer_id = transfer_id, client_id = client_id, user_id = creator, diamonds = diamonds,
  cents = cents, balance = new_balance, state = 'pending', ts = ms,
})
redis.call('HSET', KEYS[1], 'diamonds', int(diamonds), 'cents', int(cents), 'state', 'pending',
  'receipt', receipt)
return {'ok', receipt}
