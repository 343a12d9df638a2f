-- _spend.lua: responsible spending, shared by send_gift.lua (the check and the record of
-- each gift) and spending_limits.lua (show, set, protect). Functions only.
--
-- Every field lives in the user's account hash ({u:USER}:acct), so a gift still touches
-- one key per party and the debit leg of cluster mode keeps it in the sender's slot:
--
--   daily_limit, monthly_limit          the user's own limits in force (coins; '0': none;
--                                       absent: the platform default, ARGV)
--   daily_pending, daily_pending_at     a raise waiting out its cooling-off: the limit and
--   monthly_pending, monthly_pending_at the time (Redis ms) from which it is in force
--   minor, cap_daily, cap_monthly       set by the platform for a minor: caps ('0': none)
--                                       that no own limit can pass
--   spend_limits                        '1' once any field above but daily_limit was written:
--                                       the gift script reads them only then
--   spend_hour, spend_hours, spend_sum  the rolling 24 h: 25 hourly buckets (send_gift.lua
--                                       header, docs/ledger.md "The daily cap")
--   spend_day, spend_coins              the calendar-day fields of older accounts
--   spend_month, spend_month_sum        the calendar month (UTC, year * 12 + month - 1)
--                                       of the last gift, and what was spent in it
--
-- Limit values are 0 (none) or 1..1e13. A limit in force is the own one, capped by the
-- platform's: effective = min(own, cap) with 0 meaning unbounded on either side.

-- The limit fields are read only when `spend_limits` is set (spending_limits.lua sets it
-- with them): most accounts have none, and each field an HMGET names that the hash lacks
-- costs a scan of the whole (small, listpack) hash.
local SPEND_LIMIT_FIELDS = {
  'daily_pending', 'daily_pending_at', 'monthly_limit', 'monthly_pending',
  'monthly_pending_at', 'minor', 'cap_daily', 'cap_monthly',
}
-- Read once per account: before its first gift since the rolling window existed.
local SPEND_OLD_FIELDS = {'spend_day', 'spend_coins'}

local function spend_fetch(f, key, names)
  local values = redis.call('HMGET', key, unpack(names))
  for i = 1, #names do
    f[names[i]] = values[i] or nil
  end
end

-- The spending fields of account `key` by name (absent: nil), then the values of the
-- other fields `...` the caller needs, read in the same HMGET (send_gift: coins and the
-- rate limiter; absent: false). On the hot path: no table built but the one returned.
local function spend_read(key, ...)
  local v = redis.call('HMGET', key, 'daily_limit', 'spend_limits', 'spend_hour',
    'spend_hours', 'spend_sum', 'spend_month', 'spend_month_sum', ...)
  local f = {
    daily_limit = v[1] or nil, spend_limits = v[2] or nil, spend_hour = v[3] or nil,
    spend_hours = v[4] or nil, spend_sum = v[5] or nil, spend_month = v[6] or nil,
    spend_month_sum = v[7] or nil,
  }
  if f.spend_limits then
    spend_fetch(f, key, SPEND_LIMIT_FIELDS)
  end
  if not f.spend_hours then
    spend_fetch(f, key, SPEND_OLD_FIELDS)
  end
  return f, unpack(v, 8)
end

-- The calendar month (UTC) of a Unix time, as year * 12 + month - 1: Howard Hinnant's
-- civil_from_days, integer arithmetic only (Redis' Lua has no os.date).
local function spend_month_of(seconds)
  local z = math.floor(seconds / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return year * 12 + month - 1
end

-- The own limit in force at `ms`: a pending raise counts once its cooling-off is over.
local function spend_own(stored, pending, pending_at, default, ms)
  if pending and stored_int(pending_at) <= ms then
    return stored_int(pending)
  end
  if stored then
    return stored_int(stored)
  end
  return default
end

-- min(own, cap), 0 being unbounded; and who set the binding one.
local function spend_effective(own, cap)
  if cap > 0 and (own == 0 or own > cap) then
    return cap, 'platform'
  end
  return own, 'own'
end

-- The rolling 24 hours: the buckets moved to the current hour (a clock that steps back
-- never moves them back), and their sum.
local function spend_window(f, seconds)
  local hour = math.floor(seconds / 3600)
  local newest, ring, spent = hour, f.spend_hours, stored_int(f.spend_sum)
  if ring then
    newest = stored_int(f.spend_hour)
  else
    ring, spent = string.rep('0,', 24) .. '0', 0
    -- Spend from before the rolling window (a UTC calendar day) still counts today.
    if f.spend_day and stored_int(f.spend_day) == math.floor(seconds / 86400) then
      spent = stored_int(f.spend_coins)
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
  return ring, newest, spent
end

-- The calendar month's spend: reset when a new month starts, never when the clock steps
-- back into an earlier one (the later month stays current).
local function spend_month_total(f, seconds)
  local month = spend_month_of(seconds)
  local stored = f.spend_month and stored_int(f.spend_month)
  if stored and stored >= month then
    return stored, stored_int(f.spend_month_sum)
  end
  stored_int(f.spend_month_sum)
  return month, 0
end

-- Everything a gift or a status needs: the limits in force and the spend so far.
local function spend_state(f, ms, seconds, daily_default, monthly_default)
  local ring, hour, day_spent = spend_window(f, seconds)
  -- Parsed here, before any write: a corrupt newest bucket fails the gift, not its record.
  local ring_head, ring_last = string.match(ring, '^(.*,)(%d+)$')
  if not ring_head then
    error('giftwire: stored spend_hours is not a list of buckets: ' .. ring)
  end
  local month, month_spent = spend_month_total(f, seconds)
  local day_own = spend_own(f.daily_limit, f.daily_pending, f.daily_pending_at, daily_default,
    ms)
  local month_own = spend_own(f.monthly_limit, f.monthly_pending, f.monthly_pending_at,
    monthly_default, ms)
  local day_cap, month_cap = stored_int(f.cap_daily), stored_int(f.cap_monthly)
  local day_limit, day_by = spend_effective(day_own, day_cap)
  local month_limit, month_by = spend_effective(month_own, month_cap)
  -- One constructor: the table is sized once (field by field, it would grow five times).
  return {
    ring = ring, hour = hour, day_spent = day_spent, ring_head = ring_head,
    ring_last = stored_int(ring_last), month = month, month_spent = month_spent,
    day_own = day_own, month_own = month_own, day_cap = day_cap, month_cap = month_cap,
    day_limit = day_limit, day_by = day_by, month_limit = month_limit, month_by = month_by,
  }
end

-- send_gift's check, before any write: nil when `coins` fits both limits, else the
-- refusal's detail (the first limit it would pass: the day's, then the month's).
local function spend_over(s, coins)
  if s.day_limit > 0 and s.day_spent + coins > s.day_limit then
    return {period = 'day', limit = s.day_limit, spent = s.day_spent, set_by = s.day_by,
      spent_24h = s.day_spent}
  end
  if s.month_limit > 0 and s.month_spent + coins > s.month_limit then
    return {period = 'month', limit = s.month_limit, spent = s.month_spent,
      set_by = s.month_by}
  end
  return nil
end

-- send_gift's write: `coins` in the newest hourly bucket and in the month, and any `...`
-- other field/value pairs of the account in the same HSET (the rate limiter's).
local function spend_record(key, s, coins, ...)
  redis.call('HSET', key, 'spend_hour', int(s.hour),
    'spend_hours', s.ring_head .. int(s.ring_last + coins),
    'spend_sum', int(s.day_spent + coins), 'spend_month', int(s.month),
    'spend_month_sum', int(s.month_spent + coins), ...)
end

-- A pending raise as shown: nil once in force (it then is the limit) or when there is none.
local function spend_pending(pending, pending_at, ms)
  if pending and stored_int(pending_at) > ms then
    return {limit = stored_int(pending), from_ms = stored_int(pending_at)}
  end
  return nil
end

-- The status shown to the user (GET /api/me/spending): JSON-ready.
local function spend_status(f, s, ms)
  local month = s.month % 12 + 1
  return {
    now_ms = ms,
    minor = f.minor == '1',
    day = {limit = s.day_limit, own = s.day_own, cap = s.day_cap, set_by = s.day_by,
      spent = s.day_spent, pending = spend_pending(f.daily_pending, f.daily_pending_at, ms)},
    month = {limit = s.month_limit, own = s.month_own, cap = s.month_cap,
      set_by = s.month_by, spent = s.month_spent,
      period = string.format('%04d-%02d', math.floor(s.month / 12), month),
      pending = spend_pending(f.monthly_pending, f.monthly_pending_at, ms)},
  }
end
