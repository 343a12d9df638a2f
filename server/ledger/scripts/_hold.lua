-- _hold.lua: the payout hold (docs/ledger.md, "The payout hold"). Functions only; included by
-- send_gift, cash_out and refund.
--
-- A creator's account carries its held diamonds in day buckets, like the sender's rolling
-- spend ring: `hold_ring` lists hold_days + 1 buckets oldest first, the newest being day
-- `hold_day` (Unix seconds / day length), and `held` is their sum. Diamonds earned on day d
-- are held while the day is at most d + hold_days, so they become withdrawable at the start
-- of day d + hold_days + 1: never sooner than hold_days after the gift. The creator's
-- `diamonds` stays the whole balance; withdrawable = diamonds - held.
--
-- A sender's `{u:SENDER}:held` hash notes, per creator, day and share, the coins its gifts
-- paid within the hold (field `CREATOR|DAY|SHARE_BPS`), so that a chargeback can reverse
-- them; `@day` is the day it was last pruned. Bounded by the caller's entries_max.

local HOLD_UNITS = 10000

-- The creator's hold as of `today`: buckets released since the stored day are dropped, and a
-- clock that stepped back never moves the newest day back (gifts then count in the newest
-- bucket and are released later, not sooner). hold_days = 0: nothing is held.
local function hold_view(fields, today, hold_days)
  local st = {day = today, buckets = {}, held = 0, stored_held = stored_int(fields[1])}
  if hold_days == 0 then
    return st
  end
  local ring, newest = fields[3], today
  local values = {}
  if ring then
    newest = stored_int(fields[2])
    for n in string.gmatch(ring, '[^,]+') do
      values[#values + 1] = stored_int(n)
    end
  end
  if newest > today then
    st.day = newest
  end
  local n, m = hold_days + 1, #values
  for j = 1, n do
    -- bucket j is day st.day - (n - j); stored bucket i was day newest - (m - i)
    local i = m - newest + st.day - (n - j)
    local v = (i >= 1 and i <= m) and values[i] or 0
    if v < 0 then
      error('giftwire: stored hold bucket is negative: ' .. ring)
    end
    st.buckets[j] = v
    st.held = st.held + v
  end
  return st
end

local function hold_read(acct_key, today, hold_days)
  return hold_view(redis.call('HMGET', acct_key, 'held', 'hold_day', 'hold_ring'), today,
    hold_days)
end

-- The fields to write back for a hold view.
local function hold_fields(st)
  local parts = {}
  for j = 1, #st.buckets do
    parts[j] = int(st.buckets[j])
  end
  return 'held', int(st.held), 'hold_day', int(st.day), 'hold_ring', table.concat(parts, ',')
end

-- Store a hold view (nothing for an account that never had a hold and has none now).
local function hold_write(acct_key, st)
  if #st.buckets > 0 or st.stored_held ~= 0 then
    redis.call('HSET', acct_key, hold_fields(st))
  end
end

-- When the oldest held diamonds are released (ms), or 0 with none held.
local function hold_next_release_ms(st, hold_days, day_s)
  local n = #st.buckets
  for j = 1, n do
    if st.buckets[j] > 0 then
      return (st.day - (n - j) + hold_days + 1) * day_s * 1000
    end
  end
  return 0
end

-- Take `diamonds` out of the held buckets, from the bucket of day `day` first, then newest to
-- oldest; returns what the buckets could not give (taken from the withdrawable part).
local function hold_take(st, day, diamonds)
  local n = #st.buckets
  local first = n - (st.day - day)
  local order = {}
  if first >= 1 and first <= n then
    order[1] = first
  end
  for j = n, 1, -1 do
    if j ~= first then
      order[#order + 1] = j
    end
  end
  for _, j in ipairs(order) do
    if diamonds == 0 then
      break
    end
    local t = math.min(st.buckets[j], diamonds)
    st.buckets[j] = st.buckets[j] - t
    st.held = st.held - t
    diamonds = diamonds - t
  end
  return diamonds
end

-- The sender's side of a gift's hold, before any write: the record's entry `field`
-- (CREATOR|DAY|SHARE_BPS), the once-a-day prune and the bound. Fills the plan for
-- hold_record_commit; returns nil and a refusal past the bound. send_gift (through
-- hold_gift_prepare) and the cluster's debit leg (_hold_legs.lua) share it.
local function hold_record_prepare(plan, record_key, field, today, hold_days, entries_max)
  plan.record_key, plan.field, plan.prune = record_key, field, plan.prune or {}
  -- One read on the same-day path: the day last pruned and this gift's entry.
  local r = redis.call('HMGET', record_key, '@day', plan.field)
  local pruned = stored_int(r[1])
  stored_int(r[2])
  local entries
  if pruned < today then
    -- Once a day per sender: forget what has left the hold (this gift's entry is of
    -- today or later, so it is never among them).
    local all = redis.call('HGETALL', record_key)
    entries = 0
    for i = 1, #all, 2 do
      local d = string.match(all[i], '^[^|]+|(%d+)|')
      if d and tonumber(d) < today - hold_days then
        plan.prune[#plan.prune + 1] = all[i]
      elseif all[i] ~= '@day' then
        stored_int(all[i + 1])
        entries = entries + 1
      end
    end
    plan.pruned_day = today
  end
  if not r[2] then
    -- A new entry: the bound applies (counted only then, not on every gift).
    entries = entries or redis.call('HLEN', record_key) - (r[1] and 1 or 0)
    if entries >= entries_max then
      return nil, refuse('hold_limit', {entries_max = entries_max})
    end
  end
  return plan
end

-- The sender's side of a gift's hold, with the writes: prune, and note the coins.
local function hold_record_commit(plan, coins)
  if #plan.prune > 0 then
    redis.call('HDEL', plan.record_key, unpack(plan.prune))
  end
  if plan.pruned_day then
    redis.call('HSET', plan.record_key, '@day', int(plan.pruned_day))
  end
  if coins > 0 then
    redis.call('HINCRBY', plan.record_key, plan.field, int(coins))
  end
end

-- send_gift, before its first write: read the creator's hold and the sender's record, and
-- check the record's bound. Returns the plan for hold_gift_commit, or nil and a refusal.
local function hold_gift_prepare(creator_key, record_key, creator, share_bps, seconds,
                                 hold_days, day_s, entries_max)
  if hold_days == 0 then
    return {off = true}
  end
  local today = math.floor(seconds / day_s)
  local f = redis.call('HMGET', creator_key, 'held', 'hold_day', 'hold_ring')
  local plan = {creator_key = creator_key}
  if f[3] and f[3] ~= '' and stored_int(f[2]) >= today then
    -- The same day as the creator's last gift: only the newest bucket changes (no parse).
    local head, last = string.match(f[3], '^(.-)(%d+)$')
    if not head then
      error('giftwire: stored hold_ring is not a list of buckets: ' .. f[3])
    end
    plan.head, plan.last, plan.held = head, stored_int(last), stored_int(f[1])
    plan.day = stored_int(f[2])
  else
    plan.view = hold_view(f, today, hold_days)
    plan.day = plan.view.day
  end
  return hold_record_prepare(plan, record_key,
    creator .. '|' .. int(plan.day) .. '|' .. int(share_bps), today, hold_days, entries_max)
end

-- send_gift, after its writes to the creator's account: hold the diamonds and note the coins.
local function hold_gift_commit(plan, diamonds, coins)
  if plan.off then
    return
  end
  if plan.view then
    local st = plan.view
    st.buckets[#st.buckets] = st.buckets[#st.buckets] + diamonds
    st.held = st.held + diamonds
    redis.call('HSET', plan.creator_key, hold_fields(st))
  else
    redis.call('HSET', plan.creator_key, 'held', int(plan.held + diamonds),
      'hold_ring', plan.head .. int(plan.last + diamonds))
  end
  hold_record_commit(plan, coins)
end

-- The creator's diamonds to take back when `coins` of a gift at `share_bps` are reversed, and
-- the creator's share remainder after: the exact inverse of send_gift's split, so that
-- diamonds x 10000 + share_rem goes down by coins x share_bps. Split as q x 10000 + m so that
-- no product passes 2^53 (coins may be up to 10^13).
local function hold_unsplit(coins, share_bps, share_rem)
  local q = math.floor(coins / HOLD_UNITS)
  local m = coins - q * HOLD_UNITS
  local k = -math.floor((share_rem - m * share_bps) / HOLD_UNITS)
  return q * share_bps + k, share_rem + k * HOLD_UNITS - m * share_bps
end

-- refund, before its first write: which of the buyer's gifts still in the hold a chargeback
-- reverses, newest first, up to `spent` coins (the part the buyer's balance could not give
-- back). Gifts whose hold is over are not reversed: their diamonds are withdrawable, and the
-- rest of the chargeback stays the buyer's debt. Returns the plan, or nil and a refusal.
local function hold_reverse_plan(record_key, platform_key, creator_keys, spent, today, hold_days)
  local plan = {coins = 0, platform = 0, items = {}, creators = {}, order = {}, record = {}}
  if spent <= 0 or hold_days == 0 then
    return plan
  end
  local all = redis.call('HGETALL', record_key)
  local live = {}
  for i = 1, #all, 2 do
    local c, d, s = string.match(all[i], '^([^|]+)|(%d+)|(%d+)$')
    if c and tonumber(d) >= today - hold_days then
      live[#live + 1] = {field = all[i], creator = c, day = tonumber(d), share = tonumber(s),
        coins = stored_int(all[i + 1])}
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
    local key = creator_keys[e.creator]
    if not key then
      return nil, refuse('hold_changed', {creator = e.creator})
    end
    local st = plan.creators[e.creator]
    if not st then
      local f = redis.call('HMGET', key, 'held', 'hold_day', 'hold_ring', 'diamonds', 'share_rem')
      st = hold_view(f, today, hold_days)
      st.key, st.diamonds, st.share_rem = key, stored_int(f[4]), stored_int(f[5])
      if st.share_rem < 0 or st.share_rem >= HOLD_UNITS then
        error('giftwire: stored share remainder out of range: ' .. int(st.share_rem))
      end
      plan.creators[e.creator] = st
      plan.order[#plan.order + 1] = e.creator
    end
    if e.share > HOLD_UNITS then
      error('giftwire: held gift with a share above 10000: ' .. e.field)
    end
    -- The creator's clock view may be ahead of today (a clock that stepped back): a bucket
    -- already released there is withdrawable and not reversed.
    if e.coins > 0 and e.day >= st.day - hold_days then
      local r = math.min(e.coins, spent)
      local diamonds, share_rem = hold_unsplit(r, e.share, st.share_rem)
      hold_take(st, e.day, diamonds)
      st.diamonds, st.share_rem = st.diamonds - diamonds, share_rem
      if st.diamonds < st.held then
        error('giftwire: a clawback takes more diamonds than ' .. e.creator .. ' holds')
      end
      plan.platform = plan.platform + r - diamonds
      plan.items[#plan.items + 1] = {creator = e.creator, coins = r, diamonds = diamonds,
        share = e.share, share_rem = share_rem, day = e.day}
      plan.record[#plan.record + 1] = {e.field, e.coins - r}
      spent, plan.coins = spent - r, plan.coins + r
    end
  end
  if stored_int(redis.call('HGET', platform_key, 'coins')) < plan.platform then
    error('giftwire: the platform holds less than the clawbacks return')
  end
  return plan
end

-- refund, with its writes: reverse the planned gifts (a `clawback` ledger entry each). The
-- coins go back to the buyer, and the refund then takes them, so the buyer's own balance
-- and debt are the refund's to write.
local function hold_reverse_commit(plan, log_key, record_key, platform_key, payment_id,
                                   refund_id, buyer)
  if #plan.items == 0 then
    return
  end
  for _, change in ipairs(plan.record) do
    if change[2] > 0 then
      redis.call('HSET', record_key, change[1], int(change[2]))
    else
      redis.call('HDEL', record_key, change[1])
    end
  end
  for _, name in ipairs(plan.order) do
    local st = plan.creators[name]
    redis.call('HSET', st.key, 'diamonds', int(st.diamonds), 'share_rem', int(st.share_rem),
      hold_fields(st))
  end
  if plan.platform > 0 then
    redis.call('HINCRBY', platform_key, 'coins', int(-plan.platform))
  end
  for _, item in ipairs(plan.items) do
    redis.call('XADD', log_key, '*', 'type', 'clawback', 'payment', payment_id,
      'refund_id', refund_id, 'from', item.creator, 'to', buyer, 'coins', int(item.coins),
      'diamonds', int(item.diamonds), 'platform', int(item.coins - item.diamonds),
      'share_bps', int(item.share), 'share_rem', int(item.share_rem), 'day', int(item.day))
  end
end
