-- refund: a chargeback of a top-up. Claws the payment's coins back from the buyer without
-- ever making a balance negative; what cannot be clawed back is recorded as debt, which
-- later top-ups repay first. Once per payment id.
--
-- KEYS[1]  {pay:PAYMENT}:payment   payment hash written by top_up
-- KEYS[2]  {u:USER}:acct           the buyer's account hash
-- KEYS[3]  {ledger}:log            ledger stream
--
-- ARGV[1]  payment id     ARGV[2]  user id (must match the payment's buyer)
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code}
-- Receipt JSON: transfer_id, payment_id, user_id, coins, clawed, debt_added, balance, debt, ts
-- Refusal codes: invalid_request, unknown_payment

local payment_id, user = ARGV[1], ARGV[2]
if not (id_arg(payment_id) and id_arg(user)) then
  return refuse('invalid_request')
end
local payment = redis.call('HMGET', KEYS[1], 'user', 'coins', 'state', 'refund_receipt')
if not payment[1] then
  return refuse('unknown_payment')
end
if payment[1] ~= user then
  return refuse('invalid_request')
end
if payment[3] == 'refunded' then
  return {'replay', payment[4]}
end

local coins = tonumber(payment[2])
local balance = stored_int(redis.call('HGET', KEYS[2], 'coins'))
stored_int(redis.call('HGET', KEYS[2], 'debt'))
local clawed = math.min(balance, coins)
local debt_added = coins - clawed

redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
-- int(): with nothing to claw back, -clawed is the double -0, which Lua passes to Redis as
-- "-0", and HINCRBY refuses that as not an integer.
local new_balance = redis.call('HINCRBY', KEYS[2], 'coins', int(-clawed))
local debt = redis.call('HINCRBY', KEYS[2], 'debt', int(debt_added))
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'refund', 'payment', payment_id,
  'from', user, 'coins', int(coins), 'clawed', int(clawed), 'debt', int(debt_added))
local receipt = cjson.encode({
  transfer_id = transfer_id, payment_id = payment_id, user_id = user, coins = coins,
  clawed = clawed, debt_added = debt_added, balance = new_balance, debt = debt, ts = ms,
})
redis.call('HSET', KEYS[1], 'state', 'refunded', 'refund_receipt', receipt)
return {'ok', receipt}
