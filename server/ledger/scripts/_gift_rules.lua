-- _gift_rules: the money rules of a gift as pure functions (no redis.call), one copy for
-- both modes: send_gift.lua (single node) calls both; on a cluster, debit_gift.lua the rate
-- limit and credit_gifts.lua the split. change_rate.lua reuses the token bucket for the
-- rate of state-changing HTTP calls. The spending limits are _spend.lua's, which both
-- send_gift.lua and debit_gift.lua include.

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
