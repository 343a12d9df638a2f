-- include: _hold.lua
-- include: _hold_legs.lua
-- include: _refund.lua
-- refund_claim: the buyer's leg of a chargeback on a Redis Cluster (docs/ledger.md, "The
-- payout hold in cluster mode"). As refund.lua, once per refund id, in the buyer's slot only:
-- the refunded coins come from the buyer's balance, the rest from the buyer's gifts still
-- in the payout hold (newest first, from the buyer's record), and only what those do not
-- cover becomes debt. The held gifts' creators are in other slots: for each, one clawback
-- is queued in the slot's outbox (and logged as `clawback_claim`), which clawback.lua applies
-- in the creator's slot, exactly once by its clawback id PAYMENT|REFUND_ID|CREATOR.
--
-- KEYS[1]  {u:USER}:pay:PAYMENT                    payment hash (user, coins, refunded, ...)
-- KEYS[2]  {u:USER}:acct                           the buyer's account hash
-- KEYS[3]  {~N}:log                                the buyer's slot's ledger log
-- KEYS[4]  {u:USER}:pay:PAYMENT:refund:REFUND_ID   refund record (user, coins, receipt)
-- KEYS[5]  {u:USER}:held                           the buyer's gifts within the hold
-- KEYS[6]  {~N}:outbox                             the buyer's slot's outbox
--
-- ARGV[1]  payment id     ARGV[2]  user id (must match the payment's buyer)
-- ARGV[3]  refund id      ARGV[4]  coins to refund     ARGV[5]  largest amount
-- ARGV[6]  payout hold, days (0: none)     ARGV[7]  length of a hold day, seconds
-- ARGV[8]  outbox entries max (per slot)
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail]}
-- Receipt JSON: refund.lua's (reversed: the coins of held gifts claimed back), and
--   clawbacks: [{clawback_id, creator_id, coins, items ("DAY:SHARE:COINS,...", a gift to
--   guests' as "DAY:SHARE:COINS:stage": its recipients are resolved in the creator's slot),
--   outbox_id, ts}], one per creator, which a replay returns too, so a retry can settle them.
-- Ledger entries: one type=clawback_claim per creator: clawback_id, payment, refund_id, from
--   (creator), to (buyer), coins, items; then type=refund, as refund.lua's.
-- Outbox entries: kind=clawback, clawback_id, payment, refund_id, from, to, coins, items, ts
-- Refusal codes: invalid_request (also: not the payment's buyer), duplicate_mismatch,
--   unavailable (detail: {reason = 'outbox_full'}: nothing written, retry later)

local payment_id, user, refund_id = ARGV[1], ARGV[2], ARGV[3]
local amount_max = int_arg(ARGV[5], 1, 1e13)
local coins = amount_max and int_arg(ARGV[4], 1, amount_max)
local hold_days = int_arg(ARGV[6], 0, 365)
local hold_day_s = int_arg(ARGV[7], 1, 1000000)
local outbox_max = int_arg(ARGV[8], 1, 1e9)
if not (id_arg(payment_id) and id_arg(user) and id_arg(refund_id) and coins and hold_days
    and hold_day_s and outbox_max and #KEYS == 6 and #ARGV == 8) then
  return refuse('invalid_request')
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
local ms = now_ms()
local claims = hold_claim_plan(KEYS[5], r.debt_added, hold_day_of(ms, hold_day_s), hold_days)
if #claims.order > 0 and redis.call('XLEN', KEYS[6]) >= outbox_max then
  return refuse('unavailable', {reason = 'outbox_full'})
end
r.debt_added = r.debt_added - claims.coins

-- Every check passed: write.
refund_write(r, KEYS[1], KEYS[2], user)
local clawbacks = hold_claim_commit(claims, KEYS[3], KEYS[5], KEYS[6], payment_id, refund_id,
  user, ms)
local receipt = refund_finish(r, KEYS[3], KEYS[4], payment_id, refund_id, user, coins,
  claims.coins, {clawbacks = clawbacks})
return {'ok', receipt}
