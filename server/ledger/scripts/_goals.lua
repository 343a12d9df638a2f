-- Stream goals and gifter levels: functions shared by the scripts that name this file in
-- an `-- include: _goals.lua` line (send_gift, set_goal, delete_goal, and the cluster's
-- credit leg, credit_gifts). Functions only: nothing here runs by itself. docs/ledger.md,
-- "Goals and levels", explains the layout and the costs.
--
-- A stream's goals hash (KEYS: {s:STREAM}:goals; on a cluster in the creator's slot):
--   @ids        'ID,ID'               every goal, in creation order (at most goals_max)
--   @coins      'ID=TARGET;ID=TARGET' the goals that count coins
--   @g:GIFT     'ID=TARGET;...'       the goals that count one gift
--   d:ID        goal JSON: goal_id, kind, gift_id, target, title
--   p:ID        progress (integer: coins, or gifts of gift_id)
-- A gift reads two fields of it (and its goals' progress), never the whole hash: its cost
-- is bounded by goals_max, whatever else the hash holds.

-- The goals a gift of `gift` (`coins` coins, `count` of it) advances, read before the first
-- write: {id, target, progress, now (after the gift), doc (the goal's JSON, decoded, only
-- for a goal this gift reaches)}. Raises on corrupted fields, so nothing is written then.
-- `carried` (optional; the credit leg's batch, credit_gifts.lua): goal id -> the progress
-- after the earlier transfers of the same call, which counts instead of the stored one (not
-- written yet), so that exactly one transfer of a batch reaches a goal.
local function goals_for_gift(key, gift, coins, count, carried)
  local lists = redis.call('HMGET', key, '@coins', '@g:' .. gift)
  if not lists[1] and not lists[2] then
    return {}
  end
  local goals, fields = {}, {}
  for i = 1, 2 do
    for id, target in string.gmatch(lists[i] or '', '([^=;]+)=(%d+)') do
      goals[#goals + 1] = {id = id, target = stored_int(target), amount = i == 1 and coins
        or count}
      fields[#fields + 1] = 'p:' .. id
    end
  end
  if #goals > 0 then
    local progress = redis.call('HMGET', key, unpack(fields))
    for i, goal in ipairs(goals) do
      goal.progress = stored_int(progress[i])
      if carried and carried[goal.id] then
        goal.progress = carried[goal.id]
      end
      goal.now = goal.progress + goal.amount
      -- Reached by this gift: the one that takes progress from below the target to it or
      -- past it, so each goal is reached exactly once. Its title goes into goal_reached.
      if goal.progress < goal.target and goal.now >= goal.target then
        goal.doc = cjson.decode(redis.call('HGET', key, 'd:' .. goal.id))
      end
    end
  end
  return goals
end

-- Add the gift to its goals (after every check). Returns the progress list for the gift
-- event ({goal_id, progress}) and the goals this gift reached. One HSET for all of them:
-- five separate ones cost 2.5x its time in Redis (docs/benchmarks.md, "Live features").
local function goals_advance(key, goals)
  local progress, reached, fields = {}, {}, {}
  for _, goal in ipairs(goals) do
    fields[#fields + 1] = 'p:' .. goal.id
    fields[#fields + 1] = int(goal.now)
    progress[#progress + 1] = {goal_id = goal.id, progress = goal.now}
    if goal.doc then
      reached[#reached + 1] = goal
    end
  end
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  return progress, reached
end

-- Every goal of a stream with its progress, in creation order, as a JSON array (built by
-- hand: cjson encodes an empty table as an object).
local function goals_json(key)
  local ids = redis.call('HGET', key, '@ids')
  local out = {}
  for id in string.gmatch(ids or '', '[^,]+') do
    local doc, progress = unpack(redis.call('HMGET', key, 'd:' .. id, 'p:' .. id))
    local goal = cjson.decode(doc)
    goal.progress = stored_int(progress)
    goal.reached = goal.progress >= goal.target
    out[#out + 1] = cjson.encode(goal)
  end
  return '[' .. table.concat(out, ',') .. ']'
end

-- The `goals` room event: the stream's goals after a change (set_goal, delete_goal).
local function goals_event(key, stream_id)
  return '{"type":"goals","stream_id":' .. cjson.encode(stream_id) .. ',"goals":'
    .. goals_json(key) .. '}'
end

-- The `goal_reached` room event of a goal reached by the gift `seq` (from goals_advance).
local function goal_reached_event(stream_id, goal, seq, sender, sender_name, ms)
  return cjson.encode({type = 'goal_reached', stream_id = stream_id, goal_id = goal.id,
    kind = goal.doc.kind, gift_id = goal.doc.gift_id, title = goal.doc.title,
    target = goal.target, progress = goal.now, seq = seq, sender_id = sender,
    sender_name = sender_name, ts = ms})
end

-- Gifter levels. The ladder comes as one ARGV string of fixed-width thresholds
-- (server/domain/levels.py, ladder_arg): level L starts at the L-th number.
local LADDER_DIGITS = 12

local function ladder_ok(ladder)
  return type(ladder) == 'string' and #ladder > 0 and #ladder % LADDER_DIGITS == 0
    and #ladder <= 50 * LADDER_DIGITS and string.match(ladder, '^%d+$') ~= nil
end

local function level_threshold(ladder, level)
  return tonumber(string.sub(ladder, (level - 1) * LADDER_DIGITS + 1, level * LADDER_DIGITS))
end

-- The level of `coins` lifetime coins: the highest level whose threshold is at most
-- `coins` (0 below the first). A binary search: six string.sub for 50 levels.
local function level_of(ladder, coins)
  local low, high = 0, #ladder / LADDER_DIGITS
  while low < high do
    local mid = math.floor((low + high + 1) / 2)
    if level_threshold(ladder, mid) <= coins then
      low = mid
    else
      high = mid - 1
    end
  end
  return low
end
