-- include: _gift_rules.lua
-- include: _spend.lua
-- include: _hold.lua
-- include: _hold_legs.lua
-- debit_gift: the sender's leg of a gift on a Redis Cluster (docs/ledger.md, "Redis
-- Cluster"). In the sender's slot only: idempotency by client id, rate limit, daily cap,
-- balance; then the debit, the receipt, a ledger log entry and an outbox entry that the
-- credit leg (credit_gifts.lua) settles, all in one atomic step. Every check comes first.
--
-- KEYS[1]  {u:SENDER}:gift:CLIENT_ID  receipt (string: fingerprint "\n" receipt JSON), TTL
-- KEYS[2]  {u:SENDER}:acct            sender account hash (coins, rl_*, and the spending
--                                     limits and spend of _spend.lua)
-- KEYS[3]  {~N}:outbox                the sender's slot's outbox (stream), N = that slot
-- KEYS[4]  {~N}:log                   the sender's slot's ledger log (stream)
-- KEYS[5]  {~N}:catalog               the slot's copy of the current catalog: gift id ->
--                                     price, '@version' -> its number
-- KEYS[6]  {u:SENDER}:held            the sender's gifts within the payout hold (_hold.lua),
--                                     field CREATOR|DAY|SHARE_BPS -> coins, and for a gift
--                                     to guests CREATOR|DAY|SHARE_BPS|stage -> coins
--
-- ARGV[1]  client id      ARGV[2]  sender id     ARGV[3]  creator id (the stream id's
--                                                owner, {s:STREAM}:owner, read by the server)
-- ARGV[4]  stream id      ARGV[5]  gift id       ARGV[6]  count
-- ARGV[7]  sender display name                   ARGV[8]  creator share, basis points
-- ARGV[9]  gifts per second (rate)               ARGV[10] burst
-- ARGV[11] default daily spend limit (0 = none)  ARGV[12] receipt TTL, seconds
-- ARGV[13] largest balance                       ARGV[14] largest coins per send
-- ARGV[15] catalog version the client was shown (0: not checked)
-- ARGV[16] outbox entries max (per slot): past it every debit of the slot is refused
-- ARGV[17] the stream's state as the server read it in the creator's slot just before:
--          'live', 'ended' or 'unknown' (checked after the receipt, so a retry of a
--          committed gift still gets its receipt once the stream has ended)
-- ARGV[18] default monthly spend limit, coins (0 = none; a calendar month, UTC)
-- ARGV[19] payout hold, days (0: none)     ARGV[20] length of a hold day, seconds
-- ARGV[21] most entries in the sender's hold record
-- ARGV[#ARGV - 1] recipient, the gift's `to`: '' the creator, a guest's user id, '*' every
--          guest on stage; the credit leg decides from the stage (_stage_credit.lua)
-- ARGV[#ARGV] the stage's verdict on `to` as the server read it in the creator's slot just
--          before: '' (a recipient is on stage) or the refusal: not_a_guest, guest_left,
--          no_guests, self_gift (checked after the receipt, as ARGV[17])
--   (the LAST two ARGV, after any others, ARGV[22] at the earliest)
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail JSON]}
-- Receipt JSON: transfer_id (SENDER|CLIENT_ID|LOG_ID), client_id, stream_id, gift_id,
--   count, coins, price, catalog_version, share_bps, creator_id, sender_name, balance
--   (the sender's coins after), ts (ms), log_id, outbox_id: everything the credit leg needs,
--   so that a retry after a crash between the legs can settle the credit from the replay.
--   A gift to guests adds `recipient` (ARGV[19]) to the receipt, the log and outbox entries.
-- Ledger entry (its id is the transfer id's LOG_ID): type=gift_debit, client_id, from, to,
--   stream, gift, count, price, coins, catalog_version, share_bps
-- Outbox entry: transfer_id, client_id, from, sender_name, to, stream, gift, count, price,
--   coins, catalog_version, share_bps, ts
-- Refusal codes: invalid_request, duplicate_mismatch, unknown_stream, stream_not_live,
--   self_gift, unknown_gift,
--   catalog_changed (detail: {catalog_version}), rate_limited, spending_limit (detail:
--   {period, limit, spent, set_by, spent_24h}, as send_gift.lua),
--   insufficient_funds, hold_limit (detail: {entries_max}: the sender's gifts in the hold
--   name too many creators), unavailable (detail: {reason = 'catalog_missing' | 'outbox_full'}),
--   not_a_guest (`to` names the creator), self_gift (also when `to` names the sender), and
--   the verdict's stage refusal: not_a_guest, guest_left, no_guests, self_gift

local client_id, sender, creator, stream_id, gift = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count = int_arg(ARGV[6], 1, 9999)
local share_bps = int_arg(ARGV[8], 0, 10000)
local rate = int_arg(ARGV[9], 1, 1000000)
local burst = int_arg(ARGV[10], 1, 1000000)
local daily_default = int_arg(ARGV[11], 0, 1e13)
local receipt_ttl = int_arg(ARGV[12], 1, 1e9)
local amount_max = int_arg(ARGV[13], 1, 1e13)
local send_max = int_arg(ARGV[14], 1, 1e11)
local shown_version = int_arg(ARGV[15], 0, 9007199254740991)
local outbox_max = int_arg(ARGV[16], 1, 1e9)
local monthly_default = int_arg(ARGV[18], 0, 1e13)
local K_HOLD = KEYS[6]
local hold_days, hold_day_s = int_arg(ARGV[19], 0, 365), int_arg(ARGV[20], 1, 1000000)
local hold_entries_max = int_arg(ARGV[21], 1, 100000)
-- Guests on stage: the last two ARGV, so that what other features append keeps its place.
local to, stage_verdict = ARGV[#ARGV - 1], ARGV[#ARGV]
local STAGE_REFUSALS = {not_a_guest = true, guest_left = true, no_guests = true,
  self_gift = true}
if not (id_arg(client_id) and id_arg(sender) and id_arg(creator) and id_arg(stream_id)
    and id_arg(gift) and count and share_bps and rate and burst and daily_default
    and receipt_ttl and amount_max and send_max and shown_version and outbox_max
    and monthly_default and K_HOLD and hold_days and hold_day_s and hold_entries_max
    and type(ARGV[7]) == 'string' and #ARGV[7] <= 256
    and (ARGV[17] == 'live' or ARGV[17] == 'ended' or ARGV[17] == 'unknown')
    and #ARGV >= 23 and (to == '' or to == '*' or id_arg(to))
    and (stage_verdict == '' or (to ~= '' and STAGE_REFUSALS[stage_verdict]))) then
  return refuse('invalid_request')
end

-- The creator is derived from the stream id (its owner never changes), so the fingerprint
-- is the single-node one: the same id for another stream, gift or count is a mismatch.
local fingerprint = stream_id .. '|' .. gift .. '|' .. int(count)
if to ~= '' then
  fingerprint = fingerprint .. '|' .. to  -- as send_gift.lua: another recipient mismatches
end
local stored = redis.call('GET', KEYS[1])
if stored then
  local cut = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, cut - 1) ~= fingerprint then
    return refuse('duplicate_mismatch')
  end
  return {'replay', string.sub(stored, cut + 1)}
end
if ARGV[17] == 'unknown' then
  return refuse('unknown_stream')
end
if ARGV[17] ~= 'live' then
  return refuse('stream_not_live')
end
if sender == creator or to == sender then
  return refuse('self_gift')
end
if to == creator then
  return refuse('not_a_guest')
end
if stage_verdict ~= '' then
  return refuse(stage_verdict)
end

local price, version = unpack(redis.call('HMGET', KEYS[5], gift, '@version'))
if not version then
  -- This slot has no catalog copy (a copy interrupted, or a slot that lost its data): no
  -- gift of this slot can be priced. The server copies it again (cluster_ledger.py).
  return refuse('unavailable', {reason = 'catalog_missing'})
end
if shown_version > 0 and tonumber(version) ~= shown_version then
  return refuse('catalog_changed', {catalog_version = tonumber(version) or 0})
end
if not price then
  return refuse('unknown_gift')
end
stored_int(price)
local coins = tonumber(price) * count
if coins > send_max then
  return refuse('invalid_request')
end
-- The outbox holds what the credit leg has not settled yet: bounded, so that a credit side
-- that stays down fills no Redis; senders are refused (nothing written) until it drains.
if redis.call('XLEN', KEYS[3]) >= outbox_max then
  return refuse('unavailable', {reason = 'outbox_full'})
end

local acct, acct_coins, rl_tokens, rl_at = spend_read(KEYS[2], 'coins', 'rl_tokens', 'rl_at')
local ms, seconds = now_ms()
local tokens, retry_after_ms = gift_rate_take(rl_tokens, rl_at, ms, rate, burst)
if not tokens then
  return refuse('rate_limited', {retry_after_ms = retry_after_ms})
end
-- Spending limits (_spend.lua): the rolling 24 hours and the calendar month, each capped
-- by the user's own limit and, for a minor, the platform's.
local spend = spend_state(acct, ms, seconds, daily_default, monthly_default)
local over = spend_over(spend, coins)
if over then
  return refuse('spending_limit', over)
end
local balance = stored_int(acct_coins)
if balance < coins then
  return refuse('insufficient_funds', {balance = balance, price = coins})
end
if balance > amount_max then
  error('giftwire: stored balance beyond the largest: ' .. int(balance))
end
-- The payout hold: the sender's record notes this gift's coins (its bound: hold_limit). A
-- gift to guests is noted under the creator as a stage entry (CREATOR|DAY|SHARE|stage): who
-- received it (the guests, or the creator when it was redirected) is the credit leg's to
-- decide, in the creator's slot, so a chargeback's clawback resolves it there.
local hold, hold_refusal = hold_debit_prepare(K_HOLD, creator, share_bps, ms, hold_days,
  hold_day_s, hold_entries_max, to ~= '')
if not hold then
  return hold_refusal
end
redis.call('XLEN', KEYS[4])  -- a wrong-typed log fails here, before the first write

-- Every check passed: write.
local new_balance = redis.call('HINCRBY', KEYS[2], 'coins', -coins)
spend_record(KEYS[2], spend, coins, 'rl_tokens', int(tokens - 1000), 'rl_at', int(ms))
hold_debit_commit(hold, coins)
-- The transfer id is unique per debit, not only per client id: after the receipt expires
-- the same client id sends a new gift, whose credit must not replay the old one's.
local recipient = {}
if to ~= '' then
  recipient = {'recipient', to}
end
local log_id = redis.call('XADD', KEYS[4], '*', 'type', 'gift_debit', 'client_id', client_id,
  'from', sender, 'to', creator, 'stream', stream_id, 'gift', gift, 'count', int(count),
  'price', price, 'coins', int(coins), 'catalog_version', version, 'share_bps', int(share_bps),
  unpack(recipient))
local transfer = sender .. '|' .. client_id .. '|' .. log_id
-- The log entry's own id is part of the transfer id, so the entry does not repeat it:
-- reconcile rebuilds it as from|client_id|entry id.
local outbox_id = redis.call('XADD', KEYS[3], '*', 'transfer_id', transfer,
  'client_id', client_id, 'from', sender, 'sender_name', ARGV[7], 'to', creator,
  'stream', stream_id, 'gift', gift, 'count', int(count), 'price', price,
  'coins', int(coins), 'catalog_version', version, 'share_bps', int(share_bps), 'ts', int(ms),
  unpack(recipient))
local receipt = cjson.encode({
  transfer_id = transfer, client_id = client_id, stream_id = stream_id, gift_id = gift,
  count = count, coins = coins, price = tonumber(price), catalog_version = tonumber(version),
  share_bps = share_bps, creator_id = creator, sender_name = ARGV[7], balance = new_balance,
  ts = ms, log_id = log_id, outbox_id = outbox_id, recipient = to ~= '' and to or nil,
})
redis.call('SET', KEYS[1], fingerprint .. '\n' .. receipt, 'EX', receipt_ttl)
return {'ok', receipt}
