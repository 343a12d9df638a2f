-- include: _spend.lua
-- spending_limits: show, set (the user's own) and protect (the platform's caps for a minor)
-- the spending limits that send_gift.lua enforces (_spend.lua holds the fields and rules).
--
-- Modes:
--   show     change nothing; reply with the status.
--   set      the user's own limits, each ARGV '-' (leave it) or 0..1e13 (0: none). A limit
--            at or below the one in force takes effect at once and cancels a pending raise
--            of its period; a higher one (or none, 0) becomes a pending raise, in force
--            from now + the cooling-off. Asking again for the raise already pending keeps
--            its time (a retry does not restart the wait); another raise restarts it. A
--            limit above the platform's cap (a minor's) is refused: nothing changes.
--   protect  the platform marks the account a minor with caps (ARGV[6], ARGV[7]: 0..1e13,
--            0 = none for that period), or unmarks it (ARGV[5] = '0'; caps ignored).
--            In force at once, both ways.
--
-- KEYS[1]  {u:USER}:acct   the user's account hash
--
-- ARGV[1]  mode: 'show' | 'set' | 'protect'
-- ARGV[2]  default daily limit (coins, 0 = none)    ARGV[3]  default monthly limit
-- set:     ARGV[4] cooling-off, ms   ARGV[5] daily limit   ARGV[6] monthly limit
-- protect: ARGV[4] unused ('0')      ARGV[5] '1' minor | '0' not   ARGV[6] daily cap
--          ARGV[7] monthly cap
--
-- Reply: {'ok', status JSON} (spend_status in _spend.lua; `set` adds `applied`: for each
--   period 'now', 'pending', 'kept' (the raise already pending) or 'unchanged')
--   | {'refused', code [, detail JSON]}
-- Refusal codes: invalid_request, spending_cap (detail: {period, cap})

local mode = ARGV[1]
local daily_default = int_arg(ARGV[2], 0, 1e13)
local monthly_default = int_arg(ARGV[3], 0, 1e13)
local cooling_ms = int_arg(ARGV[4], 0, 1e11)
if not ((mode == 'show' or mode == 'set' or mode == 'protect') and daily_default
    and monthly_default and cooling_ms) then
  return refuse('invalid_request')
end

local function limit_arg(s)
  if s == '-' then
    return false
  end
  return int_arg(s, 0, 1e13)
end

local key = KEYS[1]
local f = spend_read(key)
local ms, seconds = now_ms()
local s = spend_state(f, ms, seconds, daily_default, monthly_default)

if mode == 'show' then
  return {'ok', cjson.encode(spend_status(f, s, ms))}
end

if mode == 'protect' then
  local minor = ARGV[5]
  local day_cap, month_cap = int_arg(ARGV[6], 0, 1e13), int_arg(ARGV[7], 0, 1e13)
  if not ((minor == '1' or minor == '0') and day_cap and month_cap) then
    return refuse('invalid_request')
  end
  if minor == '1' then
    redis.call('HSET', key, 'minor', '1', 'cap_daily', int(day_cap), 'cap_monthly',
      int(month_cap), 'spend_limits', '1')
  else
    redis.call('HDEL', key, 'minor', 'cap_daily', 'cap_monthly')
  end
  f = spend_read(key)
  return {'ok', cjson.encode(spend_status(f, spend_state(f, ms, seconds, daily_default,
    monthly_default), ms))}
end

-- mode == 'set'
local wanted = {day = limit_arg(ARGV[5]), month = limit_arg(ARGV[6])}
if wanted.day == nil or wanted.month == nil then
  return refuse('invalid_request')
end
local periods = {
  day = {own = s.day_own, cap = s.day_cap, limit = 'daily_limit', pending = 'daily_pending',
    at = 'daily_pending_at'},
  month = {own = s.month_own, cap = s.month_cap, limit = 'monthly_limit',
    pending = 'monthly_pending', at = 'monthly_pending_at'},
}
-- 0 is "none": larger than any number.
local function above(a, b)
  return b ~= 0 and (a == 0 or a > b)
end
for _, name in ipairs({'day', 'month'}) do
  local want, p = wanted[name], periods[name]
  if want and p.cap > 0 and above(want, p.cap) then
    return refuse('spending_cap', {period = name, cap = p.cap})
  end
end

-- Every check passed: write. `spend_limits` tells send_gift to read the limit fields.
redis.call('HSET', key, 'spend_limits', '1')
local applied = {}
for _, name in ipairs({'day', 'month'}) do
  local want, p = wanted[name], periods[name]
  if not want then
    applied[name] = 'unchanged'
  elseif not above(want, p.own) then
    -- Lower (or the same): at once. The limit in force is written down, so a matured
    -- raise replaced by a lower limit is gone with it.
    redis.call('HSET', key, p.limit, int(want))
    redis.call('HDEL', key, p.pending, p.at)
    applied[name] = 'now'
  elseif f[p.pending] and stored_int(f[p.pending]) == want
      and stored_int(f[p.at]) > ms then
    applied[name] = 'kept'
  else
    -- A raise. A matured raise it replaces is the limit in force: written down first.
    if f[p.pending] and stored_int(f[p.at]) <= ms then
      redis.call('HSET', key, p.limit, int(p.own))
    end
    redis.call('HSET', key, p.pending, int(want), p.at, int(ms + cooling_ms))
    applied[name] = 'pending'
  end
end
f = spend_read(key)
local status = spend_status(f, spend_state(f, ms, seconds, daily_default, monthly_default), ms)
status.applied = applied
return {'ok', cjson.encode(status)}
