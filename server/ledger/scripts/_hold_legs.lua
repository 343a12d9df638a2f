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
-- share) and the record's bound. Returns the plan, or nil and a refusal (hold_limit).
local function hold_debit_prepare(record_key, creator, share_bps, ms, hold_days, day_s,
                                  entries_max)
  if hold_days == 0 then
    return {off = true}
  end
  local today = hold_day_of(ms, day_s)
  return hold_record_prepare({}, record_key,
    creator .. '|' .. int(today) .. '|' .. int(share_bps), today, hold_days, entries_max)
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
