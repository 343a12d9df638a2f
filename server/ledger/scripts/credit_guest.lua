-- include: _gift_rules.lua
-- include: _hold.lua
-- include: _hold_legs.lua
-- credit_guest: guests' parts of gifts on a Redis Cluster (docs/ledger.md, "Guests on stage
-- in cluster mode"). credit_gifts.lua, in a creator's slot, decided from the stage that a
-- guest receives `coins` of transfer TRANSFER and left a guest-credit entry in its slot's
-- outbox; this script applies a BATCH of them for ONE guest in the guest's slot, each
-- exactly once by its credit id TRANSFER|GUEST: the guest's diamonds with their own carried
-- share_rem (the split of a creator's credit, _gift_rules.lua, carried from one to the next
-- in order), the platform's share in the guest's slot, a log entry each, and what the guest
-- earned per stream (the stage's `diamonds`, which the stream's slot cannot know). A guest on every
-- stage gift of a hot room is as hot as its creator: batched the same way. Every check of
-- every guest-credit comes before the first write.
--
-- KEYS[1]  {u:GUEST}:acct                      the guest's account (diamonds, share_rem)
-- KEYS[2]  {~M}:platform                       the guest's slot's platform share hash
-- KEYS[3]  {~M}:log                            the guest's slot's ledger log
-- KEYS[3 + i]  {u:GUEST}:credit:TRANSFER_i|GUEST  guest-credit i's marker (TTL), i = 1..n
-- KEYS[4 + n]  {u:GUEST}:earned                stream id -> diamonds the guest earned on
--                                              that stream's stage (GET .../guests)
-- KEYS[4 + n + j]  {u:GUEST}:guest_held:DAY    j = 1..d: the guest's stage coins within the
--                                              payout hold of debit day DAY, field
--                                              SENDER|CREATOR|SHARE_BPS -> coins (one key per
--                                              distinct debit day of the batch; none with the
--                                              hold off): what a chargeback's guest clawback
--                                              may take back (clawback.lua)
--
-- ARGV[1]  guest id   ARGV[2]  marker TTL, seconds (the receipt TTL)   ARGV[3]  largest
-- balance   ARGV[4]  n, the guest-credits in this call (1..256)
-- ARGV[5 + 8(i-1) ...]: guest-credit i: transfer id, sender id, creator id, stream id, coins
--   (the guest's part), share bps, the gift's seq in its stream, when the credit leg wrote
--   it (ms, that primary's clock)
-- ARGV[5 + 8n]  payout hold, days (0: none)   ARGV[6 + 8n]  length of a hold day, seconds
-- ARGV[6 + 8n + i]  guest-credit i's DEBIT time (ms, the sender's primary's clock): its
--   diamonds are held in the guest's bucket of that day, as credit_gifts.lua holds a
--   creator's (_hold_legs.lua)
--
-- Reply: {'ok', JSON array, one result per guest-credit in order} |
--   {'refused', 'invalid_request'} (a malformed call)
-- Result: credit_id, transfer_id, user_id, coins, diamonds, platform_coins, share_rem
--   (after), status 'ok' | 'replay' (the first application's result); or credit_id, status
--   'refused', code (nothing written for it; its entry stays in its outbox, as
--   credit_gifts.lua's refused transfers): invalid_request (a malformed guest-credit),
--   balance_limit (the guest or the slot's platform share would pass the largest balance),
--   transfer_expired (written longer ago than the marker TTL less a minute and not applied:
--   it may have been applied before its marker expired, so it is left to an operator).
-- Ledger entry: type=guest_credit, credit_id, transfer_id, from (sender), to (guest),
--   creator, stream, coins, diamonds, platform, share_bps, share_rem (after), seq
--
-- The payout hold (docs/ledger.md, "Guests on stage in cluster mode"): the diamonds are held
-- in the guest's own day buckets, by the debit's day, and the coins noted in the day's
-- guest_held hash, which a guest clawback checks and takes down (never more than arrived).

local FIELDS = 8
local SKEW_MS = 60000  -- as credit_gifts.lua: clock difference between two primaries
local guest = ARGV[1]
local ttl = int_arg(ARGV[2], 1, 1e9)
local amount_max = int_arg(ARGV[3], 1, 1e13)
local n = int_arg(ARGV[4], 1, 256)
local A_HOLD = 5 + FIELDS * (n or 0)
local hold_days = int_arg(ARGV[A_HOLD], 0, 365)
local hold_day_s = int_arg(ARGV[A_HOLD + 1], 1, 1000000)
if not (id_arg(guest) and ttl and amount_max and n and #ARGV == 6 + (FIELDS + 1) * n
    and #KEYS >= 4 + n and hold_days and hold_day_s) then
  return refuse('invalid_request')
end
local day_keys = hold_day_keys(KEYS, 5 + n, #KEYS, 'guest_held')
if not day_keys then
  return refuse('invalid_request')
end

local acct = redis.call('HMGET', KEYS[1], 'diamonds', 'share_rem')
local balance, share_rem = stored_int(acct[1]), stored_int(acct[2])
local platform_held = stored_int(redis.call('HGET', KEYS[2], 'coins'))
redis.call('XLEN', KEYS[3])  -- a wrong-typed log fails here, before the first write
local K_EARNED = KEYS[4 + n]
local ms, seconds = now_ms()
local hold = hold_credit_open(KEYS[1], ms, hold_days, hold_day_s)
local notes = hold_notes_open(day_keys, hold_days, hold_day_s, seconds)

-- First pass: decide every guest-credit, writing nothing.
local results, plan, seen = {}, {}, {}
local platform_add = 0
for i = 1, n do
  local a = 4 + FIELDS * (i - 1)
  local transfer, sender, creator, stream_id = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4]
  local coins = int_arg(ARGV[a + 5], 0, 1e11)
  local share_bps = int_arg(ARGV[a + 6], 0, 10000)
  local seq = int_arg(ARGV[a + 7], 1, 9007199254740991)
  local written_ms = int_arg(ARGV[a + 8], 0, 9007199254740991)
  local debit_ms = int_arg(ARGV[A_HOLD + 1 + i], 0, 9007199254740991)
  local credit_id = tostring(transfer) .. '|' .. guest
  local marker = KEYS[3 + i]
  local suffix = ':credit:' .. credit_id
  if not (type(transfer) == 'string' and #transfer >= 1 and #transfer <= 200
      and id_arg(sender) and id_arg(creator) and id_arg(stream_id) and guest ~= sender
      and guest ~= creator and coins and share_bps and seq and written_ms and debit_ms
      and string.sub(marker, -#suffix) == suffix
      and hold_notes_known(notes, debit_ms, nil)) then
    results[i] = {credit_id = credit_id, status = 'refused', code = 'invalid_request'}
  elseif seen[credit_id] then
    results[i] = seen[credit_id]
  else
    local stored = redis.call('GET', marker)
    if stored then
      local done = cjson.decode(stored)
      done.status = 'replay'
      results[i] = done
    elseif ms - written_ms > ttl * 1000 - SKEW_MS then
      results[i] = {credit_id = credit_id, status = 'refused', code = 'transfer_expired'}
    else
      local diamonds, rem, platform = gift_split(share_rem, coins, share_bps)
      stored_int(redis.call('HGET', K_EARNED, stream_id))  -- an integer, or fail now
      if balance + diamonds > amount_max
          or platform_held + platform_add + platform > amount_max then
        results[i] = {credit_id = credit_id, status = 'refused', code = 'balance_limit'}
      else
        balance, share_rem, platform_add = balance + diamonds, rem, platform_add + platform
        hold_credit_add(hold, debit_ms, diamonds)
        hold_note(notes, debit_ms, nil, sender .. '|' .. creator .. '|' .. int(share_bps), coins)
        results[i] = {credit_id = credit_id, transfer_id = transfer, user_id = guest,
          coins = coins, diamonds = diamonds, platform_coins = platform, share_rem = rem,
          status = 'ok'}
        plan[#plan + 1] = {i = i, marker = marker, sender = sender, creator = creator,
          stream = stream_id, share_bps = share_bps, seq = seq}
      end
    end
    seen[credit_id] = results[i]
  end
end
if #plan == 0 then
  return {'ok', cjson.encode(results)}
end
hold_notes_read(notes)  -- the noted fields must be integers: fail before the first write

-- Second pass: write what the first pass decided.
redis.call('HSET', KEYS[1], 'diamonds', int(balance), 'share_rem', int(share_rem))
hold_credit_write(KEYS[1], hold)
hold_notes_write(notes)
redis.call('HINCRBY', KEYS[2], 'coins', int(platform_add))
for _, p in ipairs(plan) do
  local r = results[p.i]
  redis.call('XADD', KEYS[3], '*', 'type', 'guest_credit', 'credit_id', r.credit_id,
    'transfer_id', r.transfer_id, 'from', p.sender, 'to', guest, 'creator', p.creator,
    'stream', p.stream, 'coins', int(r.coins), 'diamonds', int(r.diamonds),
    'platform', int(r.platform_coins), 'share_bps', int(p.share_bps),
    'share_rem', int(r.share_rem), 'seq', int(p.seq))
  redis.call('HINCRBY', K_EARNED, p.stream, int(r.diamonds))
  redis.call('SET', p.marker, cjson.encode(r), 'EX', ttl)
end
return {'ok', cjson.encode(results)}
