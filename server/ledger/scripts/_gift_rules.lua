-- _gift_rules: the money rules of a gift as pure functions (no redis.call), shared by the
-- cluster's two legs (debit_gift.lua: rate limit, daily cap; credit_gifts.lua: the split).
-- They are the rules of send_gift.lua, moved here unchanged; send_gift.lua still spells its
-- own copy (other work edits it), and a later change can make it include this fragment.

-- Token bucket in milli-tokens: `rate` tokens per second is `rate` milli-tokens per ms.
-- Returns the tokens after the refill, or nil and the wait in ms until the next token.
local function gift_rate_take(stored_tokens, stored_at, ms, rate, burst)
  local capacity = burst * 1000
  local tokens = tonumber(stored_tokens) or capacity
  local elapsed = ms - (tonumber(stored_at) or ms)
  if elapsed < 0 then
    elapsed = 0
  end
  tokens = math.min(capacity, tokens + elapsed * rate)
  if tokens < 1000 then
    return nil, math.ceil((1000 - tokens) / rate)
  end
  return tokens
end

-- The rolling daily window of 25 hourly buckets (docs/ledger.md, "The daily cap"), from the
-- account's stored fields: spend_hour, spend_hours, spend_sum, spend_day, spend_coins.
-- Returns the hour of the newest bucket, the ring (oldest first) and the spend inside the
-- window, before this gift. Raises on a corrupt ring.
local function gift_spend_window(hour_field, ring, sum_field, day_field, day_coins, seconds)
  local hour = math.floor(seconds / 3600)
  local newest, spent = hour, stored_int(sum_field)
  if ring then
    newest = stored_int(hour_field)
  else
    ring, spent = string.rep('0,', 24) .. '0', 0
    if day_field and stored_int(day_field) == math.floor(seconds / 86400) then
      spent = stored_int(day_coins)
      ring = string.rep('0,', 24) .. int(spent)
    end
  end
  if hour > newest then
    local buckets = {}
    for n in string.gmatch(ring, '[^,]+') do
      buckets[#buckets + 1] = stored_int(n)
    end
    if #buckets ~= 25 then
      error('giftwire: stored spend_hours is not 25 buckets: ' .. ring)
    end
    local shift = math.min(hour - newest, 25)
    spent = 0
    for i = 1, 25 do
      buckets[i] = buckets[i + shift] or 0
      spent = spent + buckets[i]
      buckets[i] = int(buckets[i])
    end
    ring, newest = table.concat(buckets, ','), hour
  end
  return newest, ring, spent
end

-- The ring with `coins` added to its newest bucket.
local function gift_spend_add(ring, coins)
  local head, last = string.match(ring, '^(.*,)(%d+)$')
  if not head then
    error('giftwire: stored spend_hours is not a list of buckets: ' .. ring)
  end
  return head .. int(stored_int(last) + coins)
end

-- The split, carrying the creator's fraction of a diamond (docs/ledger.md, "Rounding"):
-- returns the diamonds credited, the remainder after, and the platform's coins.
local function gift_split(share_rem, coins, share_bps)
  if share_rem < 0 or share_rem >= 10000 then
    error('giftwire: stored share remainder out of range: ' .. int(share_rem))
  end
  local earned = share_rem + coins * share_bps
  local diamonds = math.floor(earned / 10000)
  return diamonds, earned - diamonds * 10000, coins - diamonds
end
