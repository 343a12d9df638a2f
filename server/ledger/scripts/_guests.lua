-- Guests on stage (docs/ledger.md, "Guests on stage"): functions shared by send_gift.lua and
-- the stage scripts. The hash {s:STREAM}:guests holds, per guest user id:
--   USER -> 'invited' | 'on' | 'left',  'n|USER' -> display name (set when they joined),
--   'c|USER' / 'd|USER' -> coins gifted to them / diamonds they earned, in this stream.
-- A gift names its recipient in `to`: '' the creator, a guest's id, or '*' every guest on
-- stage, split exactly: the coins by integer division, the remainder coins one each to
-- the guests from a place that turns with the stream's seq, and each guest's diamonds
-- from their own carried share remainder (`share_rem` in their account, as a creator's,
-- by _gift_rules.lua's gift_split: every script that includes this fragment includes
-- _gift_rules.lua before it).

-- Every guest's state, name and totals, the guests in id order.
local function guests_read(key)
  local raw = redis.call('HGETALL', key)
  local by_id, ids = {}, {}
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    local prefix, id = string.match(field, '^([ncd])|(.+)$')
    if not prefix then
      prefix, id = 's', field
      ids[#ids + 1] = id
    end
    by_id[id] = by_id[id] or {}
    by_id[id][prefix] = value
  end
  table.sort(ids)
  local guests = {}
  for _, id in ipairs(ids) do
    local g = by_id[id]
    guests[#guests + 1] = {user_id = id, state = g.s, name = g.n or id,
      coins = stored_int(g.c), diamonds = stored_int(g.d)}
  end
  return guests
end

-- Guests invited or on stage (they count against the bound of the stage).
local function guests_seated(guests)
  local n = 0
  for _, g in ipairs(guests) do
    if g.state == 'invited' or g.state == 'on' then
      n = n + 1
    end
  end
  return n
end

-- The `guests` event: the stage as viewers see it (invited and on-stage guests, id order).
local function guests_event(key, stream_id)
  local parts = {}
  for _, g in ipairs(guests_read(key)) do
    if g.state ~= 'left' then
      parts[#parts + 1] = cjson.encode(g)
    end
  end
  local doc = cjson.encode({type = 'guests', stream_id = stream_id, guests = '@G@'})
  return (string.gsub(doc, '"@G@"', function() return '[' .. table.concat(parts, ',') .. ']' end))
end

-- The guests on stage now, in id order (the recipients of a gift to '*').
local function guests_on(key)
  local ids = {}
  for _, id in ipairs(redis.call('HKEYS', key)) do
    if not string.find(id, '|', 1, true) and redis.call('HGET', key, id) == 'on' then
      ids[#ids + 1] = id
    end
  end
  table.sort(ids)
  return ids
end

-- The coins of the i-th of n recipients of a split of `coins`: the remainder coins go to
-- `coins mod n` guests, starting at place `turn` (mod n), so no guest is favoured over time.
local function guests_coin_share(i, n, coins, turn)
  local base = math.floor(coins / n)
  local extra = coins - base * n
  local place = (i - 1 - turn) % n
  return base + (place < extra and 1 or 0)
end

-- The recipients of a gift to `to` (see above) as guest ids, or nil and a refusal code.
-- `listed`: the ids the caller passed accounts for in KEYS, comma-separated, in order;
-- they must be exactly the recipients, or nothing is written ('guests_changed': the caller
-- reads the stage again and retries).
local function guests_recipients(key, to, listed, sender)
  if to == '' then
    return nil
  end
  local ids = {}
  if to == '*' then
    ids = guests_on(key)
    if #ids == 0 then
      return nil, 'no_guests'
    end
  else
    local state = redis.call('HGET', key, to)
    if state == 'left' then
      return nil, 'guest_left'
    end
    if state ~= 'on' then
      return nil, 'not_a_guest'
    end
    ids = {to}
  end
  for _, id in ipairs(ids) do
    if id == sender then
      return nil, 'self_gift'
    end
  end
  if table.concat(ids, ',') ~= listed then
    return nil, 'guests_changed'
  end
  return ids
end

-- Each recipient's coins, diamonds and carried remainder: checks only, nothing written.
-- Returns the plan and the diamonds in all, or nil when a balance would pass amount_max.
local function guests_plan(key, ids, accounts, coins, share_bps, turn, amount_max)
  local plan, total = {}, 0
  for i, id in ipairs(ids) do
    local share = guests_coin_share(i, #ids, coins, turn)
    local acct = redis.call('HMGET', accounts[i], 'diamonds', 'share_rem')
    -- Each guest's carry, by the creator's rule (_gift_rules.lua, included before this).
    local diamonds, share_rem = gift_split(stored_int(acct[2]), share, share_bps)
    local held = stored_int(acct[1])
    if held + diamonds > amount_max then
      return nil
    end
    -- The stage's totals of this guest are added to below: integers, or fail now.
    stored_int(redis.call('HGET', key, 'c|' .. id))
    stored_int(redis.call('HGET', key, 'd|' .. id))
    plan[i] = {id = id, key = accounts[i], coins = share, diamonds = diamonds,
      share_rem = share_rem, held = held}
    total = total + diamonds
  end
  return plan, total
end

-- The writes of a plan: each guest's account and their totals on the stage.
local function guests_credit(plan, key)
  for _, p in ipairs(plan) do
    redis.call('HSET', p.key, 'diamonds', int(p.held + p.diamonds), 'share_rem', int(p.share_rem))
    redis.call('HINCRBY', key, 'c|' .. p.id, p.coins)
    redis.call('HINCRBY', key, 'd|' .. p.id, p.diamonds)
  end
end

-- The ledger entry's `recipients` field: id:coins:diamonds:share_rem per guest, ';'-joined.
local function guests_entry(plan)
  local parts = {}
  for _, p in ipairs(plan) do
    parts[#parts + 1] = p.id .. ':' .. int(p.coins) .. ':' .. int(p.diamonds) .. ':'
      .. int(p.share_rem)
  end
  return table.concat(parts, ';')
end

-- The gift event's `recipients`: [{user_id, coins, diamonds}].
local function guests_event_rows(plan)
  local rows = {}
  for i, p in ipairs(plan) do
    rows[i] = {user_id = p.id, coins = p.coins, diamonds = p.diamonds}
  end
  return rows
end
