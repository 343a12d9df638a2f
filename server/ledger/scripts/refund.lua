-- include: _hold.lua
-- refund: a chargeback of (part of) a top-up, once per refund id. Claws the refunded coins
-- back from the buyer without ever making a balance negative; what cannot be clawed back
-- is recorded as debt, which later top-ups repay first. Several refunds of one payment add
-- up to at most the payment's coins: a refund past that is capped at what is left. A
-- refund that arrives before its payment moves nothing and is remembered on the payment
-- record; top_up then withholds it from the credit. Coins the buyer no longer holds were
-- spent on gifts: those gifts still in the payout hold are reversed (newest first) as far as
-- the chargeback reaches, taking the diamonds back from the creators' held earnings and the
-- share back from the platform (a `clawback` entry each); only the rest becomes debt.
--
-- KEYS[1]  {pay:PAYMENT}:payment           payment hash (user, coins, refunded, early, state)
-- KEYS[2]  {u:USER}:acct                   the buyer's account hash
-- KEYS[3]  {ledger}:log                    ledger stream
-- KEYS[4]  {pay:PAYMENT}:refund:REFUND_ID  refund record (user, coins, receipt)
-- KEYS[5]  {u:USER}:held                   the buyer's gifts within the hold (_hold.lua)
-- KEYS[6]  {platform}:acct                 platform account hash
-- KEYS[7..] {u:CREATOR}:acct               the account of each creator in ARGV[8..]
--
-- ARGV[1]  payment id     ARGV[2]  user id (must match the payment's buyer)
-- ARGV[3]  refund id      ARGV[4]  coins to refund     ARGV[5]  largest amount
-- ARGV[6]  payout hold, days (0: none)     ARGV[7]  length of a hold day, seconds
-- ARGV[8..] the creators the buyer's held gifts name (as read by the caller; KEYS[7..])
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code}
-- Receipt JSON: transfer_id, payment_id, refund_id, user_id, coins (asked), refunded (taken
--   back now; less than coins when capped, 0 before the payment), clawed, debt_added,
--   balance, debt, before_payment (true: remembered until the payment arrives), reversed
--   (coins of held gifts reversed), ts
-- Ledger entries: one type=clawback per reversed (creator, day, share): payment, refund_id,
--   from (creator), to (buyer), coins (reversed), diamonds (taken back), platform (= coins -
--   diamonds, returned by the platform), share_bps, share_rem (the creator's after), day;
--   then type=refund, payment, refund_id, from, coins, refunded, clawed, reversed, debt,
--   before_payment ('1' or '0'); refunded = clawed + reversed + debt
-- Refusal codes: invalid_request (also: not the payment's buyer), duplicate_mismatch,
--   hold_changed (a held gift names a creator not in ARGV[8..]: read again and retry)

local payment_id, user, refund_id = ARGV[1], ARGV[2], ARGV[3]
local amount_max = int_arg(ARGV[5], 1, 1e13)
local coins = amount_max and int_arg(ARGV[4], 1, amount_max)
local hold_days = int_arg(ARGV[6], 0, 365)
local hold_day_s = int_arg(ARGV[7], 1, 1000000)
if not (id_arg(payment_id) and id_arg(user) and id_arg(refund_id) and coins and hold_days
    and hold_day_s and #KEYS == #ARGV - 1) then
  return refuse('invalid_request')
end
local creator_keys = {}
for i = 8, #ARGV do
  local suffix = '{u:' .. ARGV[i] .. '}:acct'
  if not id_arg(ARGV[i]) or string.sub(KEYS[i - 1], -#suffix) ~= suffix then
    return refuse('invalid_request')
  end
  creator_keys[ARGV[i]] = KEYS[i - 1]
end

local record = redis.call('HMGET', KEYS[4], 'user', 'coins', 'receipt')
if record[1] then
  if record[1] ~= user or tonumber(record[2]) ~= coins then
    return refuse('duplicate_mismatch')
  end
  return {'replay', record[3]}
end
local payment = redis.call('HMGET', KEYS[1], 'user', 'coins', 'state', 'refunded', 'early')
if payment[1] and payment[1] ~= user then
  -- Naming someone else is refused like today's refunds: the buyer is the payment's content.
  return refuse('invalid_request')
end

local before_payment = not payment[3] or payment[3] == 'awaiting_payment'
local refunded, early, paid, so_far = 0, 0, 0, 0
if before_payment then
  early = stored_int(payment[5]) + coins
  if early > amount_max then
    return refuse('invalid_request')
  end
else
  paid = stored_int(payment[2])
  so_far = stored_int(payment[4])
  if payment[3] == 'refunded' and not payment[4] then
    so_far = paid  -- refunded whole before refunds had ids
  end
  refunded = math.min(coins, paid - so_far)
  if refunded < 0 then
    error('giftwire: payment refunded beyond its coins: ' .. payment_id)
  end
end
local acct = redis.call('HMGET', KEYS[2], 'coins', 'debt')
local balance = stored_int(acct[1])
stored_int(acct[2])
local clawed = math.min(balance, refunded)
local debt_added = refunded - clawed
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
local _, seconds = now_ms()
local reversal, refusal = hold_reverse_plan(KEYS[5], KEYS[6], creator_keys, debt_added,
  math.floor(seconds / hold_day_s), hold_days)
if refusal then
  return refusal
end
debt_added = debt_added - reversal.coins

-- Every check passed: write.
-- int(): with nothing to claw back, -clawed is the double -0, which Lua passes to Redis as
-- "-0", and HINCRBY refuses that as not an integer.
local new_balance = redis.call('HINCRBY', KEYS[2], 'coins', int(-clawed))
local debt = redis.call('HINCRBY', KEYS[2], 'debt', int(debt_added))
if before_payment then
  redis.call('HSET', KEYS[1], 'user', user, 'state', 'awaiting_payment', 'early', int(early))
else
  local total = so_far + refunded
  redis.call('HSET', KEYS[1], 'refunded', int(total),
    'state', total == paid and 'refunded' or 'credited')
end
hold_reverse_commit(reversal, KEYS[3], KEYS[5], KEYS[6], payment_id, refund_id, user)
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'refund', 'payment', payment_id,
  'refund_id', refund_id, 'from', user, 'coins', int(coins), 'refunded', int(refunded),
  'clawed', int(clawed), 'reversed', int(reversal.coins), 'debt', int(debt_added),
  'before_payment', before_payment and '1' or '0')
local receipt = cjson.encode({
  transfer_id = transfer_id, payment_id = payment_id, refund_id = refund_id, user_id = user,
  coins = coins, refunded = refunded, clawed = clawed, debt_added = debt_added,
  balance = new_balance, debt = debt, before_payment = before_payment,
  reversed = reversal.coins, ts = ms,
})
redis.call('HSET', KEYS[4], 'user', user, 'coins', int(coins), 'receipt', receipt)
return {'ok', receipt}
