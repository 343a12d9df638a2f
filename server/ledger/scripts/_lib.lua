-- Shared prelude, prepended by server/ledger/scripts.py to every script before loading.
-- Lua numbers are doubles: every amount is bounded far below 2^53 by the caller's ARGV
-- bounds, and integers are written back with %d so Redis never sees an exponent.

local function int(n)
  return string.format('%d', n)
end

-- Parse a decimal integer argument within [lo, hi]; nil when it is anything else
-- (tonumber alone would accept '1e3', ' 7' or '0x10').
local function int_arg(s, lo, hi)
  if type(s) ~= 'string' or #s == 0 or #s > 16 or not string.match(s, '^-?%d+$') then
    return nil
  end
  local n = tonumber(s)
  if n < lo or n > hi then
    return nil
  end
  return n
end

local function id_arg(s)
  return type(s) == 'string' and #s >= 1 and #s <= 64 and string.match(s, '^[%w_.:-]+$') ~= nil
end

local function refuse(code, detail)
  if detail then
    return {'refused', code, cjson.encode(detail)}
  end
  return {'refused', code}
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[1])
end

-- A stored integer field, 0 when absent. Anything HINCRBY or INCRBY would not take as an
-- integer ('abc', but also '1e3', ' 7', '0x10', '5.0' or '007', which tonumber accepts) means
-- the data was corrupted outside the scripts: raise a script error now, before anything is
-- written, rather than at the write that trips over it.
local function stored_int(v)
  if not v then
    return 0
  end
  if v ~= '0' and not string.match(v, '^-?[1-9]%d*$') then
    error('giftwire: stored field is not an integer: ' .. tostring(v))
  end
  local n = tonumber(v)
  if n > 9007199254740991 or n < -9007199254740991 then
    error('giftwire: stored integer is beyond 2^53: ' .. v)
  end
  return n
end
