-- top_up: credit coins bought through the payment provider, once per payment id.
-- Refunds of this payment that arrived before it (refund.lua remembers them) are withheld:
-- those coins are never credited. Outstanding debt (from an earlier chargeback) is repaid
-- next, and only the rest is credited.
--
-- KEYS[1]  {pay:PAYMENT}:payment   payment hash (user, coins, credited, repaid, refunded,
--                                  early, state, receipt)
-- KEYS[2]  {u:USER}:acct           the buyer's account hash
-- KEYS[3]  {ledger}:log            ledger stream
--
-- ARGV[1]  payment id     ARGV[2]  user id     ARGV[3]  coins bought
-- ARGV[4]  largest balance
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code}
-- Receipt JSON: transfer_id, payment_id, user_id, coins, credited, debt_repaid, withheld
--   (refunded before the payment arrived), balance, ts
-- Ledger entry: type=top_up, payment, to, coins, credited, repaid, withheld
--   (coins = credited + repaid + withheld)
-- Refusal codes: invalid_request, duplicate_mismatch, balance_limit

local payment_id, user = ARGV[1], ARGV[2]
local amount_max = int_arg(ARGV[4], 1, 1e13)
local coins = amount_max and int_arg(ARGV[3], 1, amount_max)
if not (id_arg(payment_id) and id_arg(user) and coins) then
  return refuse('invalid_request')
end

local existing = redis.call('HMGET', KEYS[1], 'user', 'coins', 'receipt', 'state', 'early')
-- A refund that came before this payment left a record in state awaiting_payment (with
-- the buyer and the coins it asked for, `early`); anything else is a payment seen before.
local withheld = 0
if existing[1] and existing[4] == 'awaiting_payment' then
  if existing[1] ~= user then
    return refuse('duplicate_mismatch')
  end
  withheld = math.min(coins, stored_int(existing[5]))
elseif existing[1] then
  if existing[1] ~= user or tonumber(existing[2]) ~= coins then
    return refuse('duplicate_mismatch')
  end
  return {'replay', existing[3]}
end

local acct = redis.call('HMGET', KEYS[2], 'coins', 'debt')
local balance = stored_int(acct[1])
local debt = stored_int(acct[2])
local repaid = math.min(debt, coins - withheld)
local credited = coins - withheld - repaid
if balance + credited > amount_max then
  return refuse('balance_limit')
end

redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
local new_balance = redis.call('HINCRBY', KEYS[2], 'coins', int(credited))
if repaid > 0 then
  redis.call('HINCRBY', KEYS[2], 'debt', -repaid)
end
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'top_up', 'payment', payment_id,
  'to', user, 'coins', int(coins), 'credited', int(credited), 'repaid', int(repaid),
  'withheld', int(withheld))
local receipt = cjson.encode({
  transfer_id = transfer_id, payment_id = payment_id, user_id = user, coins = coins,
  credited = credited, debt_repaid = repaid, withheld = withheld, balance = new_balance,
  ts = ms,
})
redis.call('HSET', KEYS[1], 'user', user, 'coins', int(coins), 'credited', int(credited),
  'repaid', int(repaid), 'refunded', int(withheld),
  'state', withheld == coins and 'refunded' or 'credited', 'receipt', receipt)
return {'ok', receipt}
