-- Battles (docs/ledger.md, "Battles"): functions shared by send_gift.lua and the battle
-- scripts. A stream's side of its current (or last) battle is the hash {s:STREAM}:battle:
--   id, side ('a' the inviter, 'b' the invitee), creator, name (the creator's display
--   name when the battle started), opponent (stream id),
--   opponent_creator, duration_s, starts_at, ends_at (ms, Redis TIME), state ('running' |
--   'ended'), score (coins gifted in this room during the window), ended_at, reason.
-- Its top gifters are the zset {s:STREAM}:battle_top (cleared when a battle starts).
-- A gift scores when state is 'running' and starts_at <= now < ends_at, both read by the
-- gift script itself, so a gift is in the window or not, never both.

-- The id of the battle a gift at `ms` scores in, or nil.
local function battle_scoring(battle_key, ms)
  local b = redis.call('HMGET', battle_key, 'state', 'starts_at', 'ends_at', 'id', 'score')
  if b[1] ~= 'running' then
    return nil
  end
  if ms < stored_int(b[2]) or ms >= stored_int(b[3]) then
    return nil
  end
  stored_int(b[5])  -- added to by battle_score: an integer, or fail before any write
  return b[4]
end

-- Called with the gift's other writes: the room's side gains the coins, the sender its
-- place on the side's top gifters. Returns the side's score after.
local function battle_score(battle_key, top_key, sender, coins)
  redis.call('ZINCRBY', top_key, coins, sender)
  return redis.call('HINCRBY', battle_key, 'score', coins)
end

-- A batch's scoring at once (credit_gifts.lua, with the batch's other writes): each
-- sender's coins onto the side's top gifters, the batch's total onto the score, one
-- write each instead of two per transfer. rows: {sender, coins}, in the batch's order.
local function battle_score_batch(battle_key, top_key, rows)
  local by_sender, order, total = {}, {}, 0
  for _, row in ipairs(rows) do
    local sender, coins = row[1], row[2]
    if not by_sender[sender] then
      by_sender[sender] = 0
      order[#order + 1] = sender
    end
    by_sender[sender] = by_sender[sender] + coins
    total = total + coins
  end
  for _, sender in ipairs(order) do
    redis.call('ZINCRBY', top_key, int(by_sender[sender]), sender)
  end
  if #order > 0 then
    redis.call('HINCRBY', battle_key, 'score', int(total))
  end
end

-- A stream's battle hash as a table ({} when it has none).
local function battle_read(battle_key)
  local raw = redis.call('HGETALL', battle_key)
  local b = {}
  for i = 1, #raw, 2 do
    b[raw[i]] = raw[i + 1]
  end
  return b
end

-- True while the battle holds its streams: running and not past its end.
local function battle_busy(b, ms)
  return b.state == 'running' and ms < stored_int(b.ends_at)
end

-- JSON array of a zset's first `n` members with their scores: {user_id, coins} rows.
-- Built by hand: cjson encodes an empty Lua table as {} where clients expect [].
local function battle_top_json(top_key, n)
  local rows = redis.call('ZREVRANGE', top_key, 0, n - 1, 'WITHSCORES')
  local parts = {}
  for i = 1, #rows, 2 do
    parts[#parts + 1] = cjson.encode({user_id = rows[i], coins = tonumber(rows[i + 1])})
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- cjson.encode(doc), with each string value '@NAME@' replaced by raw JSON raws[NAME].
local function battle_encode(doc, raws)
  local out = cjson.encode(doc)
  for name, raw in pairs(raws) do
    out = string.gsub(out, '"@' .. name .. '@"', function() return raw end)
  end
  return out
end
