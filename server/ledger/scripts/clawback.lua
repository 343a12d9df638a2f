-- include: _hold.lua
-- include: _hold_legs.lua
-- clawback: the receiving side of a chargeback on a Redis Cluster (docs/ledger.md, "The payout
-- hold in cluster mode", and "Guests on stage in cluster mode"). Applies one clawback exactly
-- once by its clawback id: for each reversed (day, share, coins), the exact inverse of the
-- gift's split, carrying the account's share_rem as refund.lua does, the diamonds out of the
-- gift's own day bucket first, then the newest held ones, then the withdrawable part (only
-- when the hold ended between the legs); the platform's share back from the account's slot's
-- platform shard. Every key is in the account's slot. Two kinds:
--
-- - A creator's clawback (ARGV[11] = ''), queued by refund_claim.lua, id
--   PAYMENT|REFUND_ID|CREATOR. Its plain items are the creator's own gifts. Its stage items
--   ("DAY:SHARE:COINS:stage", gifts to guests on the creator's stage) are resolved from the
--   credit leg's notes of who received them (KEYS[5 + j], {u:CREATOR}:stage_held:DAY|BUYER,
--   fields RECIPIENT|SHARE -> coins, taken in recipient id order): the creator's own part (a
--   gift redirected to the creator) is applied here, and each guest's part is forwarded as a
--   guest clawback into this slot's outbox (KEYS[5]) and logged as `clawback_forward`.
-- - A guest clawback (ARGV[11] = the creator whose stage it was), id
--   PAYMENT|REFUND_ID|CREATOR|GUEST, forwarded by that creator's clawback. Applied only up to
--   what reached the guest (KEYS[5 + j], {u:GUEST}:guest_held:DAY, fields
--   BUYER|CREATOR|SHARE -> coins, written by credit_guest.lua).
--
-- Coins a clawback needs that the notes do not hold yet (a credit or guest-credit still in an
-- outbox) make it refuse `not_credited` and write nothing: it stays in its outbox and the
-- relay applies it again once they have arrived. So no clawback takes diamonds someone
-- received from another gift.
--
-- KEYS[1]  {u:ACCOUNT}:acct                   the creator's (or the guest's) account hash
-- KEYS[2]  {~N}:platform                      the account's slot's platform share hash
-- KEYS[3]  {~N}:log                           the account's slot's ledger log
-- KEYS[4]  {u:ACCOUNT}:clawback:PAYMENT|REFUND_ID   the marker: applied once (TTL); a guest
--          clawback's is {u:GUEST}:clawback:PAYMENT|REFUND_ID|CREATOR (never the same key as
--          the guest's own clawback as a creator of the same refund)
-- KEYS[5]  {~N}:outbox                        the account's slot's outbox (forwards)
-- KEYS[5 + j]  the notes, j = 1..d: {u:CREATOR}:stage_held:DAY|BUYER per distinct day of a
--          creator's stage items, {u:GUEST}:guest_held:DAY per distinct day of a guest
--          clawback's items
--
-- ARGV[1]  clawback id     ARGV[2]  account id (creator, or guest)     ARGV[3]  buyer id
-- ARGV[4]  payment id      ARGV[5]  refund id
-- ARGV[6]  items: "DAY:SHARE_BPS:COINS[:stage],..." (newest first, as claimed; at most the
--          buyer's record's entries: GIFTWIRE_PAYOUT_HOLD_ENTRIES_MAX; `:stage` only in a
--          creator's clawback)
-- ARGV[7]  claim time, ms (the buyer's slot's clock)
-- ARGV[8]  payout hold, days     ARGV[9]  length of a hold day, seconds
-- ARGV[10] marker TTL, seconds (the receipt TTL)
-- ARGV[11] via: '' for a creator's clawback, else the creator (a guest clawback)
-- ARGV[12] outbox entries max (per slot)
--
-- Reply: {'ok', result JSON} | {'replay', result JSON} | {'refused', code [, detail]}
-- Result JSON: clawback_id, coins (all the items'), diamonds (taken back here), platform
--   (returned here), ts, forwarded: [{clawback_id, guest_id, coins, items, outbox_id}] (the
--   guest clawbacks queued; a replay returns them too, so a retry can settle them)
-- Ledger entries: one type=clawback per item applied here: clawback_id, payment, refund_id,
--   from (the account), to (buyer), coins, diamonds, platform (= coins - diamonds),
--   share_bps, share_rem (after), day: refund.lua's clawback entry with the clawback id, and
--   `stage` = 1 (a redirected gift's part) or `via` = the creator (a guest clawback's); one
--   type=clawback_forward per guest clawback queued: clawback_id (the guest's), parent (this
--   one's), payment, refund_id, from (guest), via (creator), to (buyer), coins, items
-- Outbox entries (forwards): kind=clawback, clawback_id, payment, refund_id, from (guest),
--   to (buyer), coins, items, ts (the claim's), via (creator)
-- Refusal codes (nothing written; the clawback stays in its outbox): invalid_request,
--   not_credited (the notes do not hold the coins yet: retried), unavailable (the outbox is
--   full: retried), insufficient_funds (the account holds fewer diamonds than the clawback
--   takes: cashed out after the hold ended between the legs; left to an operator),
--   transfer_expired (claimed longer ago than the marker TTL less a minute and not applied:
--   it may have been applied before its marker expired, so it is left to an operator)

local SKEW_MS = 60000  -- clock difference between two primaries that the expiry tolerates
local ITEMS_MAX = 100000  -- the largest bound of the buyer's record (send_gift.lua's)
local clawback_id, account, buyer, payment_id, refund_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5]
local claimed_ms = int_arg(ARGV[7], 0, 9007199254740991)
local hold_days = int_arg(ARGV[8], 0, 365)
local hold_day_s = int_arg(ARGV[9], 1, 1000000)
local ttl = int_arg(ARGV[10], 1, 1e9)
local via = ARGV[11]
local outbox_max = int_arg(ARGV[12], 1, 1e9)
local parent = tostring(payment_id) .. '|' .. tostring(refund_id)
if via ~= '' then
  parent = parent .. '|' .. tostring(via)
end
local suffix = ':clawback:' .. parent
if not (id_arg(account) and id_arg(buyer) and id_arg(payment_id) and id_arg(refund_id)
    and (via == '' or (id_arg(via) and via ~= account))
    and clawback_id == parent .. '|' .. account
    and type(ARGV[6]) == 'string' and claimed_ms and hold_days and hold_day_s and ttl
    and outbox_max and #KEYS >= 5 and #ARGV == 12
    and string.sub(KEYS[4], -#suffix) == suffix) then
  return refuse('invalid_request')
end
local day_keys = hold_day_keys(KEYS, 6, #KEYS, via == '' and 'stage_held' or 'guest_held')
local items, total, canonical = {}, 0, {}
for part in string.gmatch(ARGV[6], '[^,]+') do
  local day, share, coins, mark = string.match(part, '^(%d+):(%d+):(%d+)(.*)$')
  local item = {day = int_arg(day, 0, 1e9), share = int_arg(share, 0, 10000),
    coins = int_arg(coins, 1, 1e13), stage = mark == ':stage'}
  if not (item.day and item.share and item.coins and (mark == '' or item.stage))
      or (item.stage and via ~= '') or #items >= ITEMS_MAX then
    return refuse('invalid_request')
  end
  items[#items + 1] = item
  total = total + item.coins
  canonical[#items] = int(item.day) .. ':' .. int(item.share) .. ':' .. int(item.coins)
    .. (item.stage and ':stage' or '')
end
if #items == 0 or total > 1e13 or table.concat(canonical, ',') ~= ARGV[6] or not day_keys then
  return refuse('invalid_request')
end
local function note_key(day)
  return day_keys[hold_note_tail(day, via == '' and buyer or nil)]
end
for _, item in ipairs(items) do
  if (item.stage or via ~= '') and not note_key(item.day) then
    return refuse('invalid_request')  -- the caller must pass the notes of each such day
  end
end

local stored = redis.call('GET', KEYS[4])
if stored then
  return {'replay', stored}
end
local ms, seconds = now_ms()
if ms - claimed_ms > ttl * 1000 - SKEW_MS then
  return refuse('transfer_expired')
end

-- The notes this clawback takes down: key -> {field -> coins}. A creator's note of one
-- buyer and day is read whole (HGETALL: the recipients of that buyer's gifts to guests that
-- day, a few fields); a guest's note of a day holds every sender's, so only the field it
-- needs is read.
local notes, notes_order = {}, {}
local function notes_of(key, field)
  if not notes[key] then
    notes[key], notes_order[#notes_order + 1] = {now = {}, changed = {}, read = {}}, key
    if not field then
      local all = redis.call('HGETALL', key)
      for i = 1, #all, 2 do
        notes[key].now[all[i]] = stored_int(all[i + 1])
      end
    end
  end
  local n = notes[key]
  if field and not n.read[field] then
    n.read[field] = true
    n.now[field] = stored_int(redis.call('HGET', key, field))
  end
  return n
end
local function take_note(n, name, coins)
  n.now[name] = n.now[name] - coins
  n.changed[name] = true
end

-- What this account gives back (applied here), and the guests' parts (forwarded).
local mine, guests, guest_order = {}, {}, {}
for _, item in ipairs(items) do
  if via ~= '' then
    local name = buyer .. '|' .. via .. '|' .. int(item.share)
    local n = notes_of(note_key(item.day), name)
    if n.now[name] < item.coins then
      return refuse('not_credited', {day = item.day, share_bps = item.share})
    end
    take_note(n, name, item.coins)
    mine[#mine + 1] = {day = item.day, share = item.share, coins = item.coins}
  elseif not item.stage then
    mine[#mine + 1] = {day = item.day, share = item.share, coins = item.coins}
  else
    local n = notes_of(note_key(item.day))
    local rows = {}
    for name, coins in pairs(n.now) do
      local r, s = string.match(name, '^([^|]+)|(%d+)$')
      if r and tonumber(s) == item.share and coins > 0 then
        rows[#rows + 1] = {name = name, recipient = r, coins = coins}
      end
    end
    table.sort(rows, function(a, b) return a.recipient < b.recipient end)
    local left = item.coins
    for _, row in ipairs(rows) do
      if left == 0 then
        break
      end
      local t = math.min(row.coins, left)
      left = left - t
      take_note(n, row.name, t)
      if row.recipient == account then  -- redirected to the creator: given back here
        mine[#mine + 1] = {day = item.day, share = item.share, coins = t, stage = true}
      else
        local g = guests[row.recipient]
        if not g then
          g = {coins = 0, items = {}}
          guests[row.recipient] = g
          guest_order[#guest_order + 1] = row.recipient
        end
        g.coins = g.coins + t
        g.items[#g.items + 1] = int(item.day) .. ':' .. int(item.share) .. ':' .. int(t)
      end
    end
    if left > 0 then
      return refuse('not_credited', {day = item.day, share_bps = item.share})
    end
  end
end
table.sort(guest_order)

local f = redis.call('HMGET', KEYS[1], 'held', 'hold_day', 'hold_ring', 'diamonds', 'share_rem')
local st = hold_view(f, math.floor(seconds / hold_day_s), hold_days)
st.diamonds, st.share_rem = stored_int(f[4]), stored_int(f[5])
if st.share_rem < 0 or st.share_rem >= HOLD_UNITS then
  error('giftwire: stored share remainder out of range: ' .. int(st.share_rem))
end
local diamonds_total, platform = 0, 0
for _, item in ipairs(mine) do
  local diamonds, share_rem = hold_unsplit(item.coins, item.share, st.share_rem)
  hold_take(st, item.day, diamonds)
  st.diamonds, st.share_rem = st.diamonds - diamonds, share_rem
  item.diamonds, item.share_rem = diamonds, share_rem
  diamonds_total, platform = diamonds_total + diamonds, platform + item.coins - diamonds
end
if st.diamonds < 0 then
  return refuse('insufficient_funds', {balance = st.diamonds + diamonds_total,
    diamonds = diamonds_total})
end
if st.diamonds < st.held then
  error('giftwire: a clawback takes more diamonds than ' .. account .. ' holds')
end
if stored_int(redis.call('HGET', KEYS[2], 'coins')) < platform then
  error('giftwire: the platform shard holds less than the clawback returns')
end
redis.call('XLEN', KEYS[3])  -- a wrong-typed ledger key fails before any write
if #guest_order > 0 and redis.call('XLEN', KEYS[5]) + #guest_order > outbox_max then
  return refuse('unavailable', {reason = 'outbox_full'})
end

-- Every check passed: write.
if #mine > 0 then
  redis.call('HSET', KEYS[1], 'diamonds', int(st.diamonds), 'share_rem', int(st.share_rem))
  hold_write(KEYS[1], st)
  redis.call('HINCRBY', KEYS[2], 'coins', int(-platform))
end
for _, key in ipairs(notes_order) do
  for name in pairs(notes[key].changed) do
    local left = notes[key].now[name]
    if left > 0 then
      redis.call('HSET', key, name, int(left))
    else
      redis.call('HDEL', key, name)
    end
  end
end
for _, item in ipairs(mine) do
  local entry = {'type', 'clawback', 'clawback_id', clawback_id,
    'payment', payment_id, 'refund_id', refund_id, 'from', account, 'to', buyer,
    'coins', int(item.coins), 'diamonds', int(item.diamonds),
    'platform', int(item.coins - item.diamonds), 'share_bps', int(item.share),
    'share_rem', int(item.share_rem), 'day', int(item.day)}
  if item.stage then
    entry[#entry + 1], entry[#entry + 2] = 'stage', '1'
  elseif via ~= '' then
    entry[#entry + 1], entry[#entry + 2] = 'via', via
  end
  redis.call('XADD', KEYS[3], '*', unpack(entry))
end
local forwarded = {}
for _, guest in ipairs(guest_order) do
  local g = guests[guest]
  local id = clawback_id .. '|' .. guest
  local list = table.concat(g.items, ',')
  redis.call('XADD', KEYS[3], '*', 'type', 'clawback_forward', 'clawback_id', id,
    'parent', clawback_id, 'payment', payment_id, 'refund_id', refund_id, 'from', guest,
    'via', account, 'to', buyer, 'coins', int(g.coins), 'items', list)
  local outbox_id = redis.call('XADD', KEYS[5], '*', 'kind', 'clawback', 'clawback_id', id,
    'payment', payment_id, 'refund_id', refund_id, 'from', guest, 'to', buyer,
    'coins', int(g.coins), 'items', list, 'ts', int(claimed_ms), 'via', account)
  forwarded[#forwarded + 1] = {clawback_id = id, guest_id = guest, coins = g.coins,
    items = list, outbox_id = outbox_id}
end
local result = cjson.encode({clawback_id = clawback_id, coins = total,
  diamonds = diamonds_total, platform = platform, ts = ms, forwarded = forwarded})
redis.call('SET', KEYS[4], result, 'EX', ttl)
return {'ok', result}
