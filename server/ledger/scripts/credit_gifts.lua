-- include: _gift_rules.lua
-- include: _goals.lua
-- include: _battle.lua
-- include: _hold.lua
-- include: _hold_legs.lua
-- include: _guests.lua
-- include: _stage_credit.lua
-- credit_gifts: the creator's leg of gifts on a Redis Cluster (docs/ledger.md, "Redis
-- Cluster"). One call applies a BATCH of debited transfers into one creator's stream, each
-- exactly once by its transfer id: the diamonds (carrying share_rem), the platform share of
-- the slot, seq (with the stream's epoch), totals, leaderboard, combo, feed, a ledger log
-- entry, the stream's goals, the sender's lifetime coins to the creator (gifter level) and
-- display name (_goals.lua), and the events, SPUBLISHed on the room's shard channel. Every
-- key is in the creator's slot. Every check of every transfer comes before the first write.
--
-- KEYS[1]  {u:CREATOR}:acct               creator account hash (diamonds, share_rem)
-- KEYS[2]  {u:CREATOR}:s:STREAM:stream    stream hash (creator, state, seq, totals, epoch)
-- KEYS[3]  {u:CREATOR}:s:STREAM:top       leaderboard zset
-- KEYS[4]  {u:CREATOR}:s:STREAM:feed      gift feed stream (entry id SEQ-0)
-- KEYS[5]  {u:CREATOR}:s:STREAM:room      shard channel (SPUBLISH)
-- KEYS[6]  {~N}:platform                  the creator's slot's platform share hash (coins)
-- KEYS[7]  {~N}:log                       the creator's slot's ledger log
-- KEYS[6 + 2i]  {u:CREATOR}:credit:TRANSFER_i   transfer i's credit marker (TTL), i = 1..n
-- KEYS[7 + 2i]  {u:CREATOR}:s:STREAM:combo:SENDER_i:GIFT_i   its combo counter
-- KEYS[8 + 2n]  {u:CREATOR}:s:STREAM:goals  the stream's goals and progress (_goals.lua)
-- KEYS[9 + 2n]  {u:CREATOR}:fans            zset: viewer -> lifetime coins to the creator
-- KEYS[10 + 2n] {u:CREATOR}:s:STREAM:names  hash: sender -> display name (leaderboard)
--   (these three: KEYS[8 + 2n ..], after the per-transfer keys)
-- KEYS[11 + 2n] {u:CREATOR}:s:STREAM:battle      the stream's battle side (_battle.lua)
-- KEYS[12 + 2n] {u:CREATOR}:s:STREAM:battle_top  that side's gifters (zset)
-- KEYS[#KEYS - d - 1]  {u:CREATOR}:s:STREAM:guests  the stage (_guests.lua, _stage_credit.lua)
-- KEYS[#KEYS - d]      {~N}:outbox          the creator's slot's outbox: guest-credits
--   (these two after every key above, whatever comes between them and the ones above)
-- KEYS[#KEYS - d + j]  {u:CREATOR}:stage_held:DAY|SENDER  j = 1..d (d = ARGV[#ARGV]): who
--   this creator's credits gave SENDER's coins of gifts to guests of debit day DAY within
--   the payout hold, field RECIPIENT|SHARE_BPS -> coins (a guest, or the creator for a
--   redirected gift), one per distinct (debit day, sender) of the batch's gifts to guests
--   (_hold_legs.lua; none with the hold off): what a chargeback's clawback resolves its
--   stage items from
--
-- ARGV[1]  creator id   ARGV[2]  stream id   ARGV[3]  receipt TTL, seconds (marker TTL)
-- ARGV[4]  combo window, ms   ARGV[5]  feed length   ARGV[6]  largest balance
-- ARGV[7]  n, the transfers in this call (1..256)
-- ARGV[8 + 11(i-1) ...]: transfer i: transfer id, client id, sender id, sender name, gift
--   id, count, coins, price, catalog version, share bps, debit time (ms, the debit's clock)
-- ARGV[8 + 11n]  gifter level ladder (server/domain/levels.py, ladder_arg)
-- ARGV[9 + 11n]  payout hold, days (0: none)   ARGV[10 + 11n]  length of a hold day, seconds
--   (the diamonds are held in the creator's bucket of the DEBIT's day, _hold_legs.lua)
-- ARGV[#ARGV - 1 - n + i]  transfer i's recipient (the debit's `to`): '' the creator, a
--   guest's id, '*' every guest on stage (_stage_credit.lua): the n ARGV before the last
-- ARGV[#ARGV]  d, the stage_held day keys at the end of KEYS
--
-- Reply: {'ok', JSON array, one result per transfer in order} | {'refused', code} for the
--   whole batch (invalid_request: malformed call; unknown_stream: no stream hash).
-- Result: {transfer_id, status = 'ok' | 'replay', seq, diamonds, platform_coins, combo, ts,
--   epoch} or {transfer_id, status = 'refused', code}: invalid_request (a malformed
--   transfer), balance_limit (the creator or the slot's platform share would pass the
--   largest balance), transfer_expired (debited longer ago than the marker TTL less a
--   minute and not credited: it may have been credited before its marker expired, so it
--   is left to an operator, never applied twice). A refused transfer writes nothing and
--   stays in the outbox.
-- Marker: the result JSON of its first credit; kept for the receipt TTL, which bounds how
--   long after its debit a transfer can still be credited (see transfer_expired).
-- Ledger entry: type=gift_credit, transfer_id, client_id, from, to, stream, gift, count,
--   price, coins, catalog_version, diamonds, platform, share_bps, share_rem (after), seq
-- Event JSON (fields in server/protocol/events.py): type, seq, epoch, transfer_id,
--   stream_id, sender_id, sender_name, gift_id, count, combo, coins, diamonds, ts, level
--   (the sender's gifter level with the creator after this transfer), and goals
--   ({goal_id, progress} of each goal it advanced) only when it advanced one.
-- A transfer to guests (_stage_credit.lua): its result adds guests [{user_id, coins,
--   credit_id, outbox_id}] (diamonds 0, platform_coins 0: the guest-credits decide them),
--   its event `to` and recipients [{user_id, coins}], its entry `recipient` and
--   `recipients` (id:coins;...), and one guest_credit entry per guest goes into KEYS[#KEYS].
--   One whose guests are gone goes to the creator: result and entry `redirected` (reason).
-- Also SPUBLISHed after a transfer's event, when it causes them, as send_gift does:
--   level_up (type, stream_id, seq, user_id, user_name, level, prev_level, coins) and
--   goal_reached (_goals.lua), once each: progress and lifetime coins are carried from
--   transfer to transfer within the batch, and a replayed transfer moves neither.
--
-- A stream that ended after the debit still takes the credit: the server saw it live
-- before debiting (docs/ledger.md, "The two legs"), and refusing here would strand coins.

local FIELDS = 11
local SKEW_MS = 60000  -- clock difference between two primaries that the expiry tolerates
local creator, stream_id = ARGV[1], ARGV[2]
local ttl = int_arg(ARGV[3], 1, 1e9)
local combo_window = int_arg(ARGV[4], 1, 1e9)
local feed_max = int_arg(ARGV[5], 1, 1e9)
local amount_max = int_arg(ARGV[6], 1, 1e13)
local n = int_arg(ARGV[7], 1, 256)
local A_TAIL = 8 + FIELDS * (n or 0)  -- the ladder, then the arguments after it
local ladder = ARGV[A_TAIL]
local hold_days = int_arg(ARGV[A_TAIL + 1], 0, 365)
local hold_day_s = int_arg(ARGV[A_TAIL + 2], 1, 1000000)
-- Guests on stage (_stage_credit.lua): n ARGV and two KEYS read from the end, then the
-- payout hold's stage_held day keys (their count is the last ARGV), so that what other
-- features append after the ladder and the names keeps its place.
local D = int_arg(ARGV[#ARGV], 0, 256)
local A_TO = n and #ARGV - 1 - n  -- ARGV[A_TO + i]: transfer i's recipient
local K_STAGE, K_GUEST_OUTBOX = KEYS[#KEYS - (D or 0) - 1], KEYS[#KEYS - (D or 0)]
if not (id_arg(creator) and id_arg(stream_id) and ttl and combo_window and feed_max
    and amount_max and n and D and #ARGV == 11 + (FIELDS + 1) * n
    and #KEYS == 14 + 2 * n + D and ladder and ladder_ok(ladder) and hold_days
    and hold_day_s) then
  return refuse('invalid_request')
end
local stage_days = hold_day_keys(KEYS, #KEYS - D + 1, #KEYS, 'stage_held')
if not stage_days then
  return refuse('invalid_request')
end
local K_GOALS, K_FANS, K_NAMES = KEYS[8 + 2 * n], KEYS[9 + 2 * n], KEYS[10 + 2 * n]
local K_BATTLE, K_BATTLE_TOP = KEYS[11 + 2 * n], KEYS[12 + 2 * n]

local stream = redis.call('HMGET', KEYS[2], 'creator', 'seq', 'coins', 'diamonds', 'gifts',
  'epoch')
if not stream[1] then
  return refuse('unknown_stream')
end
if stream[1] ~= creator then
  return refuse('invalid_request')
end
local seq, total_coins, total_diamonds, total_gifts = stored_int(stream[2]),
  stored_int(stream[3]), stored_int(stream[4]), stored_int(stream[5])
local epoch = stream[6] or ''
local acct = redis.call('HMGET', KEYS[1], 'diamonds', 'share_rem')
local diamonds_held, share_rem = stored_int(acct[1]), stored_int(acct[2])
local platform_held = stored_int(redis.call('HGET', KEYS[6], 'coins'))
-- Read every key written below with a command of its type (Redis has no rollback).
redis.call('ZSCORE', KEYS[3], creator)
if redis.call('EXISTS', KEYS[4]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[4])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last = tonumber(string.match(info[i + 1], '^(%d+)-'))
      if last > seq then
        error('giftwire: feed is ahead of the stream sequence: ' .. info[i + 1])
      end
    end
  end
end
redis.call('XLEN', KEYS[7])
local ms, seconds = now_ms()
local hold = hold_credit_open(KEYS[1], ms, hold_days, hold_day_s)
local stage_notes = hold_notes_open(stage_days, hold_days, hold_day_s, seconds)
-- Whether this call's transfers score in a battle: decided on this primary's clock, once
-- for the batch, so a transfer racing the start or the end is inside or outside, never both.
local battle_id = battle_scoring(K_BATTLE, ms)
if battle_id then
  redis.call('ZSCORE', K_BATTLE_TOP, creator)  -- type check, only when it will be written
end

-- First pass: decide every transfer, writing nothing.
local results, plan, seen, combos = {}, {}, {}, {}
-- Carried through the batch, read once per goal / sender: each transfer sees the progress
-- and lifetime coins left by the transfers before it in this call.
local carried, fans, names = {}, {}, {}
local platform_add = 0
for i = 1, n do
  local a = 7 + FIELDS * (i - 1)
  local transfer, client_id, sender, name, gift = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5]
  local count = int_arg(ARGV[a + 6], 1, 9999)
  local coins = int_arg(ARGV[a + 7], 0, 1e11)
  local price = int_arg(ARGV[a + 8], 0, 1e11)
  local version = int_arg(ARGV[a + 9], 0, 9007199254740991)
  local share_bps = int_arg(ARGV[a + 10], 0, 10000)
  local debit_ms = int_arg(ARGV[a + 11], 0, 9007199254740991)
  local marker_key, combo_key = KEYS[6 + 2 * i], KEYS[7 + 2 * i]
  local suffix = ':credit:' .. tostring(transfer)
  local to = ARGV[A_TO + i]
  if not (type(transfer) == 'string' and #transfer <= 200 and id_arg(client_id)
      and id_arg(sender) and id_arg(gift) and count and coins and price and version
      and share_bps and debit_ms and type(name) == 'string' and #name <= 256
      and coins == price * count and sender ~= creator
      and string.sub(marker_key, -#suffix) == suffix
      and (to == '' or ((to == '*' or id_arg(to)) and to ~= creator
        and hold_notes_known(stage_notes, debit_ms, sender)))) then
    results[i] = {transfer_id = tostring(transfer), status = 'refused', code = 'invalid_request'}
  elseif seen[transfer] then
    results[i] = seen[transfer]
  else
    local stored = redis.call('GET', marker_key)
    if stored then
      local done = cjson.decode(stored)
      done.status = 'replay'
      results[i] = done
    elseif ms - debit_ms > ttl * 1000 - SKEW_MS then
      results[i] = {transfer_id = transfer, status = 'refused', code = 'transfer_expired'}
    else
      local diamonds, rem, platform = gift_split(share_rem, coins, share_bps)
      local guest_ids, redirected = nil, nil
      if to ~= '' then
        guest_ids, redirected = stage_recipients(K_STAGE, to, sender)
      end
      local guests = guest_ids and stage_split(K_STAGE, transfer, guest_ids, coins, seq + 1)
      if guests then
        -- The guests earn it, in their own slots (credit_guest.lua): nothing for the creator.
        diamonds, rem, platform = 0, share_rem, 0
        redis.call('XLEN', K_GUEST_OUTBOX)  -- wrong-typed: fail before the first write
      end
      if diamonds_held + diamonds > amount_max
          or platform_held + platform_add + platform > amount_max then
        results[i] = {transfer_id = transfer, status = 'refused', code = 'balance_limit'}
      else
        if combos[combo_key] == nil then
          combos[combo_key] = stored_int(redis.call('GET', combo_key))
        end
        combos[combo_key] = combos[combo_key] + count
        local goals = goals_for_gift(K_GOALS, gift, coins, count, carried)
        for _, goal in ipairs(goals) do
          carried[goal.id] = goal.now
        end
        if fans[sender] == nil then
          fans[sender] = stored_int(redis.call('ZSCORE', K_FANS, sender))
        end
        local fan_coins = fans[sender]
        fans[sender] = fan_coins + coins
        -- A climb past a level (2 and up: level 1 is the first gift itself), as send_gift.
        local level = level_of(ladder, fan_coins + coins)
        local leveled = level >= 2 and level_threshold(ladder, level) > fan_coins
        if names[sender] == nil then
          names[sender] = redis.call('HGET', K_NAMES, sender) or false
        end
        local rename = names[sender] ~= name
        names[sender] = name
        diamonds_held, share_rem = diamonds_held + diamonds, rem
        hold_credit_add(hold, debit_ms, diamonds)
        -- A gift to guests (or redirected to the creator): who received its coins, for the
        -- clawback of a chargeback (the sender's record names only this creator).
        for _, g in ipairs(guests or {}) do
          hold_note(stage_notes, debit_ms, sender, g.user_id .. '|' .. int(share_bps), g.coins)
        end
        if redirected then
          hold_note(stage_notes, debit_ms, sender, creator .. '|' .. int(share_bps), coins)
        end
        platform_add = platform_add + platform
        seq = seq + 1
        total_coins, total_diamonds, total_gifts = total_coins + coins,
          total_diamonds + diamonds, total_gifts + count
        results[i] = {transfer_id = transfer, status = 'ok', seq = seq, diamonds = diamonds,
          platform_coins = platform, combo = combos[combo_key], ts = ms, epoch = epoch,
          guests = guests or nil, redirected = redirected}
        plan[#plan + 1] = {i = i, client_id = client_id, sender = sender, name = name,
          gift = gift, count = count, coins = coins, price = price, version = version,
          share_bps = share_bps, share_rem = rem, marker = marker_key, combo = combo_key,
          goals = goals, fan_coins = fan_coins, level = level, leveled = leveled,
          rename = rename, to = to, guests = guests, redirected = redirected,
          debit_ms = debit_ms}
      end
    end
    seen[transfer] = results[i]
  end
end
if #plan == 0 then
  return {'ok', cjson.encode(results)}
end
hold_notes_read(stage_notes)  -- integers, or fail before the first write

-- Second pass: write what the first pass decided.
redis.call('HSET', KEYS[1], 'diamonds', int(diamonds_held), 'share_rem', int(share_rem))
hold_credit_write(KEYS[1], hold)
hold_notes_write(stage_notes)
redis.call('HINCRBY', KEYS[6], 'coins', int(platform_add))
redis.call('HSET', KEYS[2], 'seq', int(seq), 'coins', int(total_coins),
  'diamonds', int(total_diamonds), 'gifts', int(total_gifts))
local scored = {}  -- {sender, coins} of each transfer that scores in the battle
for _, p in ipairs(plan) do
  local r = results[p.i]
  redis.call('ZINCRBY', KEYS[3], p.coins, p.sender)
  redis.call('ZINCRBY', K_FANS, p.coins, p.sender)
  if p.rename then
    redis.call('HSET', K_NAMES, p.sender, p.name)
  end
  local progress, reached = goals_advance(K_GOALS, p.goals)
  redis.call('INCRBY', p.combo, p.count)
  redis.call('PEXPIRE', p.combo, combo_window)
  if battle_id then
    scored[#scored + 1] = {p.sender, p.coins}
  end
  if p.guests then
    stage_emit(K_STAGE, K_GUEST_OUTBOX, p.guests, {transfer_id = r.transfer_id,
      sender = p.sender, creator = creator, stream = stream_id, share_bps = p.share_bps,
      seq = r.seq, ms = ms, debit_ms = p.debit_ms})
  end
  local entry = {'type', 'gift_credit', 'transfer_id', r.transfer_id,
    'client_id', p.client_id, 'from', p.sender, 'to', creator, 'stream', stream_id,
    'gift', p.gift, 'count', int(p.count), 'price', int(p.price), 'coins', int(p.coins),
    'catalog_version', int(p.version), 'diamonds', int(r.diamonds),
    'platform', int(r.platform_coins), 'share_bps', int(p.share_bps),
    'share_rem', int(p.share_rem), 'seq', int(r.seq)}
  stage_entry_fields(entry, p.to, p.guests, p.redirected)
  redis.call('XADD', KEYS[7], '*', unpack(entry))
  local doc = {
    type = 'gift', seq = r.seq, epoch = epoch, transfer_id = r.transfer_id,
    stream_id = stream_id, sender_id = p.sender, sender_name = p.name, gift_id = p.gift,
    count = p.count, combo = r.combo, coins = p.coins, diamonds = r.diamonds, ts = ms,
    level = p.level, goals = #progress > 0 and progress or nil,
    battle_id = battle_id,  -- nil (absent) unless the transfer scored in a battle
  }
  stage_event_fields(doc, p.to, p.guests)
  local event = cjson.encode(doc)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', int(feed_max), int(r.seq) .. '-0', 'e', event)
  redis.call('SPUBLISH', KEYS[5], event)
  if p.leveled then
    redis.call('SPUBLISH', KEYS[5], cjson.encode({type = 'level_up', stream_id = stream_id,
      seq = r.seq, user_id = p.sender, user_name = p.name, level = p.level,
      prev_level = level_of(ladder, p.fan_coins), coins = p.fan_coins + p.coins}))
  end
  for _, goal in ipairs(reached) do
    redis.call('SPUBLISH', KEYS[5],
      goal_reached_event(stream_id, goal, r.seq, p.sender, p.name, ms))
  end
  redis.call('SET', p.marker, cjson.encode(r), 'EX', ttl)
end
battle_score_batch(K_BATTLE, K_BATTLE_TOP, scored)
return {'ok', cjson.encode(results)}
