-- settle_payout: the payout provider's outcome for a pending cash-out: 'paid', or 'failed',
-- which returns the diamonds to the creator. Once per cash-out: the same outcome again is a
-- replay, the other outcome is refused.
--
-- KEYS[1]  {u:CREATOR}:cashout:CLIENT_ID   payout hash written by cash_out
-- KEYS[2]  {u:CREATOR}:acct                the creator's account hash
-- KEYS[3]  {ledger}:log                    ledger stream
--
-- ARGV[1]  cash-out client id     ARGV[2]  creator id     ARGV[3]  outcome: paid | failed
-- ARGV[4]  largest balance
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail]}
-- Receipt JSON: transfer_id, client_id, user_id, diamonds, cents, state (the outcome),
--   balance (the creator's diamonds after), ts
-- Refusal codes: invalid_request, unknown_payout, payout_settled (detail: state),
--   balance_limit (failed: the returned diamonds would pass the largest balance)
local client_id, creator, outcome = ARGV[1], ARGV[2], ARGV[3]
local amount_max = int_arg(ARGV[4], 1, 1e13)
if not (id_arg(client_id) and id_arg(creator) and amount_max
    and (outcome == 'paid' or outcome == 'failed')) then
  return refuse('invalid_request')
end
local payout = redis.call('HMGET', KEYS[1], 'diamonds', 'cents', 'state', 'settle_receipt')
if not payout[1] then
  return refuse('unknown_payout')
end
if payout[3] == outcome then
  return {'replay', payout[4]}
end
if payout[3] ~= 'pending' then
  return refuse('payout_settled', {state = payout[3]})
end
local diamonds = stored_int(payout[1])
local cents = stored_int(payout[2])
local balance = stored_int(redis.call('HGET', KEYS[2], 'diamonds'))
if outcome == 'failed' and balance + diamonds > amount_max then
  return refuse('balance_limit')
end
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
if outcome == 'failed' then
  balance = redis.call('HINCRBY', KEYS[2], 'diamonds', int(diamonds))
end
local ms = now_ms()
local transfer_id = redis.call('XADD', KEYS[3], '*', 'type', 'payout', 'client_id', client_id,
  'to', creator, 'state', outcome, 'diamonds', int(diamonds), 'cents', int(cents))
local receipt = cjson.encode({
  transfer_id = transfer_id, client_id = client_id, user_id = creator, diamonds = diamonds,
  cents = cents, state = outcome, balance = balance, ts = ms,
})
redis.call('HSET', KEYS[1], 'state', outcome, 'settled_at', int(ms), 'settle_receipt', receipt)
return {'ok', receipt}
