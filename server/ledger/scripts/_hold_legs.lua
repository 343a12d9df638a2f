-- _hold_legs.lua: the payout hold on a Redis Cluster (docs/ledger.md, "The payout hold in
-- cluster mode"). Functions only, on top of _hold.lua (include that first). A gift's two legs
-- run in two slots: the debit leg notes the coins in the sender's record, the credit leg
-- holds the diamonds in the creator's buckets; both name the gift's hold day by the DEBIT's
-- clock (its `ts`, carried in the outbox entry), so that the record and the bucket agree on
-- the day whatever the two primaries' clocks say and however late the credit comes.

-- The hold day of a moment `ms` (milliseconds): as `math.floor(seconds / day_s)` for the
-- seconds of the same TIME call.
local function hold_day_of(ms, day_s)
  return math.floor(math.floor(ms / 1000) / day_s)
end

-- debit_gift, before its first write: the sender's record entry for this gift (creator, day,
-- share; `stage`: a gift to guests, whose recipients the credit leg decides) and the
-- record's bound. Returns the plan, or nil and a refusal (hold_limit).
local function hold_debit_prepare(record_key, creator, share_bps, ms, hold_days, day_s,
                                  entries_max, stage)
  if hold_days == 0 then
    return {off = true}
  end
  local today = hold_day_of(ms, day_s)
  local field = creator .. '|' .. int(today) .. '|' .. int(share_bps)
  if stage then
    field = field .. '|stage'
  end
  return hold_record_prepare({}, record_key, field, today, hold_days, entries_max)
end

-- debit_gift, with its writes: note the coins in the record.
local function hold_debit_commit(plan, coins)
  if not plan.off then
    hold_record_commit(plan, coins)
  end
end

-- credit_gifts, before its first pass: the creator's hold as of the creator's clock `ms`.
local function hold_credit_open(acct_key, ms, hold_days, day_s)
  if hold_days == 0 then
    return {off = true}
  end
  local st = hold_read(acct_key, hold_day_of(ms, day_s), hold_days)
  st.day_s = day_s
  return st
end

-- credit_gifts, per transfer credited (in memory): hold `diamonds` in the bucket of the
-- debit's day. A debit day ahead of the creator's newest (the sender's primary's clock is
-- ahead) moves the ring on to it; a debit day already out of the ring (a credit settled by
-- the relay after the hold ended) holds nothing: the record names that day too, so no
-- chargeback would reverse it either.
local function hold_credit_add(st, debit_ms, diamonds)
  if st.off or diamonds == 0 then
    return
  end
  local day = hold_day_of(debit_ms, st.day_s)
  local n = #st.buckets
  if day > st.day then
    local shift = day - st.day
    st.held = 0
    for j = 1, n do
      local v = (j + shift <= n) and st.buckets[j + shift] or 0
      st.buckets[j] = v
      st.held = st.held + v
    end
    st.day = day
  end
  local j = n - (st.day - day)
  if j >= 1 then
    st.buckets[j] = st.buckets[j] + diamonds
    st.held = st.held + diamonds
  end
end

-- credit_gifts, with its writes: store the creator's hold.
local function hold_credit_write(acct_key, st)
  if not st.off then
    hold_write(acct_key, st)
  end
end

-- A chargeback on a cluster is two legs too: the buyer's (refund_claim.lua) decides which
-- held gifts it reverses from the buyer's record alone and queues one clawback per creator;
-- the creator's (clawback.lua) takes the diamonds back. Items travel as "DAY:SHARE:COINS,...",
-- an item of gifts to guests as "DAY:SHARE:COINS:stage" (resolved in the creator's slot).

-- refund_claim, before its first write: the buyer's gifts still in the hold (by the buyer's
-- slot's clock) that the chargeback reverses, newest first, up to `spent` coins, grouped per
-- creator. The creators' accounts are in other slots: what each clawback takes is decided
-- there, by the exact inverse of the split, when it is applied.
local function hold_claim_plan(record_key, spent, today, hold_days)
  local plan = {coins = 0, record = {}, claims = {}, order = {}}
  if spent <= 0 or hold_days == 0 then
    return plan
  end
  local all = redis.call('HGETALL', record_key)
  local live = {}
  for i = 1, #all, 2 do
    -- CREATOR|DAY|SHARE, or CREATOR|DAY|SHARE|stage: a gift to guests on CREATOR's stage,
    -- whose recipients the clawback leg resolves in the creator's slot (clawback.lua).
    local c, d, s, stage = string.match(all[i], '^([^|]+)|(%d+)|(%d+)(|?s?t?a?g?e?)$')
    if c and (stage == '' or stage == '|stage') and tonumber(d) >= today - hold_days then
      live[#live + 1] = {field = all[i], creator = c, day = tonumber(d), share = tonumber(s),
        coins = stored_int(all[i + 1]), stage = stage ~= ''}
    end
  end
  table.sort(live, function(a, b)
    if a.day ~= b.day then
      return a.day > b.day
    end
    return a.field < b.field
  end)
  for _, e in ipairs(live) do
    if spent == 0 then
      break
    end
    if e.share > HOLD_UNITS then
      error('giftwire: held gift with a share above 10000: ' .. e.field)
    end
    if e.coins > 0 then
      local r = math.min(e.coins, spent)
      local claim = plan.claims[e.creator]
      if not claim then
        claim = {creator = e.creator, coins = 0, items = {}}
        plan.claims[e.creator] = claim
        plan.order[#plan.order + 1] = e.creator
      end
      claim.coins = claim.coins + r
      claim.items[#claim.items + 1] = int(e.day) .. ':' .. int(e.share) .. ':' .. int(r)
        .. (e.stage and ':stage' or '')
      plan.record[#plan.record + 1] = {e.field, e.coins - r}
      spent, plan.coins = spent - r, plan.coins + r
    end
  end
  return plan
end

-- refund_claim, with its writes: the record, then per creator a `clawback_claim` log entry
-- and an outbox entry for the clawback leg. Returns the clawbacks for the receipt (the fast
-- path applies them at once; the relay, from the outbox, whatever it did not).
local function hold_claim_commit(plan, log_key, record_key, outbox_key, payment_id, refund_id,
                                 buyer, ms)
  for _, change in ipairs(plan.record) do
    if change[2] > 0 then
      redis.call('HSET', record_key, change[1], int(change[2]))
    else
      redis.call('HDEL', record_key, change[1])
    end
  end
  local out = {}
  for _, name in ipairs(plan.order) do
    local claim = plan.claims[name]
    local id = payment_id .. '|' .. refund_id .. '|' .. name
    local items = table.concat(claim.items, ',')
    redis.call('XADD', log_key, '*', 'type', 'clawback_claim', 'clawback_id', id,
      'payment', payment_id, 'refund_id', refund_id, 'from', name, 'to', buyer,
      'coins', int(claim.coins), 'items', items)
    local outbox_id = redis.call('XADD', outbox_key, '*', 'kind', 'clawback',
      'clawback_id', id, 'payment', payment_id, 'refund_id', refund_id, 'from', name,
      'to', buyer, 'coins', int(claim.coins), 'items', items, 'ts', int(ms))
    out[#out + 1] = {clawback_id = id, creator_id = name, coins = claim.coins, items = items,
      outbox_id = outbox_id, ts = ms}
  end
  return out
end

-- Stage notes (docs/ledger.md, "Guests on stage in cluster mode"): the coins of gifts to
-- guests within the hold, per DEBIT day: who the credit leg gave a sender's coins to, in
-- `{u:CREATOR}:stage_held:DAY|SENDER` (field RECIPIENT|SHARE_BPS: one small hash per sender,
-- so that a clawback reads only its buyer's), and what reached a guest, in
-- `{u:GUEST}:guest_held:DAY` (field SENDER|CREATOR|SHARE_BPS, read a field at a time). Each
-- is kept a day past that day's hold (EXPIREAT), so it prunes itself. The note keys come in
-- KEYS[from..to], each ending in ':KIND:DAY' or ':KIND:DAY|SENDER'. Returns their tails
-- ('DAY' or 'DAY|SENDER') -> key, or nil for a malformed one.
local function hold_day_keys(keys, from, to, kind)
  local out = {}
  for j = from, to do
    local d, who = string.match(keys[j], ':' .. kind .. ':(%d+)|([^|]+)$')
    if not d then
      d = string.match(keys[j], ':' .. kind .. ':(%d+)$')
    end
    if not d then
      return nil
    end
    out[d .. (who and '|' .. who or '')] = keys[j]
  end
  return out
end

-- The tail of the note key of `day` (and `who`, for per-sender notes).
local function hold_note_tail(day, who)
  return int(day) .. (who and '|' .. who or '')
end

-- When a day's notes expire (Unix seconds): a day after the day's diamonds are released.
local function hold_day_expiry_s(day, hold_days, day_s)
  return (day + hold_days + 2) * day_s
end

local function hold_notes_open(day_keys, hold_days, day_s, seconds)
  return {off = hold_days == 0, keys = day_keys, hold_days = hold_days, day_s = day_s,
    seconds = seconds, add = {}, order = {}}
end

-- The day a note of a debit at `debit_ms` goes to, or nil when none is kept (no hold, or
-- a day whose notes have expired already).
local function hold_notes_day(notes, debit_ms)
  if notes.off then
    return nil
  end
  local day = hold_day_of(debit_ms, notes.day_s)
  if hold_day_expiry_s(day, notes.hold_days, notes.day_s) <= notes.seconds then
    return nil
  end
  return day
end

-- Whether the caller passed the key a note of a debit at `debit_ms` (by `who`) needs.
local function hold_notes_known(notes, debit_ms, who)
  local day = hold_notes_day(notes, debit_ms)
  return day == nil or notes.keys[hold_note_tail(day, who)] ~= nil
end

-- In memory: `coins` more under `field` of the note of the debit's day (and `who`).
local function hold_note(notes, debit_ms, who, field, coins)
  local day = hold_notes_day(notes, debit_ms)
  if day == nil or coins == 0 then
    return
  end
  local key = notes.keys[hold_note_tail(day, who)]
  local add = notes.add[key]
  if not add then
    add = {day = day, fields = {}, names = {}}
    notes.add[key] = add
    notes.order[#notes.order + 1] = key
  end
  if add.fields[field] == nil then
    add.fields[field] = 0
    add.names[#add.names + 1] = field
  end
  add.fields[field] = add.fields[field] + coins
end

-- Before the first write: the noted fields' stored values (integers, or the script fails).
local function hold_notes_read(notes)
  for _, key in ipairs(notes.order) do
    local add = notes.add[key]
    local now = redis.call('HMGET', key, unpack(add.names))
    add.now = {}
    for j = 1, #add.names do
      add.now[j] = stored_int(now[j])
    end
  end
end

-- With the writes: one HSET and one EXPIREAT per note key.
local function hold_notes_write(notes)
  for _, key in ipairs(notes.order) do
    local add = notes.add[key]
    local values = {}
    for j, name in ipairs(add.names) do
      values[#values + 1] = name
      values[#values + 1] = int(add.now[j] + add.fields[name])
    end
    redis.call('HSET', key, unpack(values))
    redis.call('EXPIREAT', key, int(hold_day_expiry_s(add.day, notes.hold_days, notes.day_s)))
  end
end
