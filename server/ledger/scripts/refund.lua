-- include: _hold.lua
-- include: _refund.lua
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

local replay = refund_replay(KEYS[4], user, coins)
if replay then
  return replay
end
local r, refusal = refund_decide(KEYS[1], KEYS[2], payment_id, user, coins, amount_max)
if not r then
  return refusal
end
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
local _, seconds = now_ms()
local reversal
reversal, refusal = hold_reverse_plan(KEYS[5], KEYS[6], creator_keys, r.debt_added,
  math.floor(seconds / hold_day_s), hold_days)
if refusal then
  return refusal
end
r.debt_added = r.debt_added - reversal.coins

-- Every check passed: write.
refund_write(r, KEYS[1], KEYS[2], user)
hold_reverse_commit(reversal, KEYS[3], KEYS[5], KEYS[6], payment_id, refund_id, user)
local receipt = refund_finish(r, KEYS[3], KEYS[4], payment_id, refund_id, user, coins,
  reversal.coins)
return {'ok', receipt}
