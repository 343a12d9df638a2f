-- include: _gift_rules.lua
-- include: _hold.lua
-- include: _battle.lua
-- include: _guests.lua
-- include: _goals.lua
-- include: _spend.lua
-- send_gift: debit the sender's coins, credit the creator's diamonds and the platform's
-- share, bump combo, leaderboard and totals, append to the ledger and the stream's feed,
-- and publish the event to the room. All checks come before the first write.
--
-- KEYS[1]  {u:SENDER}:gift:CLIENT_ID   receipt (string: fingerprint "\n" receipt JSON)
-- KEYS[2]  {u:SENDER}:acct             sender account hash (coins, rl_tokens/rl_at, and the
--                                      spending limits and spend of _spend.lua)
-- KEYS[3]  {u:CREATOR}:acct            creator account hash (diamonds, share_rem)
-- KEYS[4]  {platform}:acct             platform account hash
-- KEYS[5]  {s:STREAM}:stream           stream hash (state, creator, seq, totals)
-- KEYS[6]  {s:STREAM}:top              leaderboard zset
-- KEYS[7]  {s:STREAM}:feed             gift feed stream (entry id SEQ-0)
-- KEYS[8]  {s:STREAM}:combo:SENDER:GIFT combo counter
-- KEYS[9]  {ledger}:log                ledger stream
-- KEYS[10] {catalog}:prices            gift id -> price hash
-- KEYS[11] {s:STREAM}:room             pub/sub channel (declared as a key for sharded pub/sub)
-- KEYS[12] {u:SENDER}:held             the sender's gifts within the payout hold (_hold.lua);
--                                      the creator's account holds the held day buckets
-- KEYS[13] {s:STREAM}:battle           the stream's battle side (_battle.lua): scores the
--                                      coins while a battle runs
-- KEYS[14] {s:STREAM}:battle_top       the side's top gifters (zset)
-- KEYS[15] {s:STREAM}:guests           the stage (_guests.lua)
-- KEYS[16] {s:STREAM}:goals            the stream's goals and their progress (_goals.lua)
-- KEYS[17] {u:CREATOR}:fans            zset: viewer -> lifetime coins sent to the creator
-- KEYS[18] {s:STREAM}:names            hash: sender -> display name (for the leaderboard)
-- KEYS[19..] {u:GUEST}:acct            the recipients' accounts when ARGV[21] names guests,
--                                      in the order of ARGV[22]
--
-- ARGV[1]  client id (the client-chosen transfer id)   ARGV[2]  sender id
-- ARGV[3]  creator id (as the caller believes)          ARGV[4]  stream id
-- ARGV[5]  gift id                                      ARGV[6]  count
-- ARGV[7]  sender display name                          ARGV[8]  creator share, basis points
-- ARGV[9]  gifts per second (rate)                      ARGV[10] burst
-- ARGV[11] default daily spend limit, coins (0 = none)  ARGV[12] receipt TTL, seconds
-- ARGV[13] combo window, ms                             ARGV[14] feed length
-- ARGV[15] largest balance                              ARGV[16] largest coins per send
-- ARGV[17] catalog version the client was shown (0: not checked)
-- ARGV[18] payout hold, days (0: none)                  ARGV[19] length of a hold day, s
-- ARGV[20] most entries in the sender's hold record
-- ARGV[21] recipient: '' the creator, a guest's user id, '*' every guest on stage (split)
-- ARGV[22] the recipients' ids, comma-separated, as the caller read the stage ('' for none)
-- ARGV[23] gifter level ladder (server/domain/levels.py, ladder_arg)
-- ARGV[24] default monthly spend limit, coins (0 = none; a calendar month, UTC)
--
-- Reply: {'ok', receipt JSON} | {'replay', receipt JSON} | {'refused', code [, detail JSON]}
-- Event JSON (published and stored in the feed; fields in server/protocol/events.py):
--   type, seq, epoch (the stream hash's, '' before epochs existed), transfer_id, stream_id,
--   sender_id, sender_name, gift_id, count, combo, coins, diamonds, ts (ms),
--   battle_id (only when the gift scored in a battle), level (the
--   sender's gifter level with the creator after this gift), and goals ({goal_id,
--   progress} of each goal this gift advanced) only when it advanced one.
-- Also published after the gift, when it causes them: level_up (type, stream_id, seq,
--   user_id, user_name, level, prev_level, coins) and goal_reached (_goals.lua), once each.
-- Receipt JSON: transfer_id, client_id, stream_id, gift_id, count, coins, diamonds,
--   platform_coins, balance (sender's coins after), combo, seq, ts (ms)
-- Ledger entry: type=gift, client_id, from, to, stream, gift, count, price (unit), coins,
--   diamonds, platform, share_bps, share_rem (the creator's remainder after), seq,
--   catalog_version (the version charged, '0' when the catalog had none)
-- Refusal codes: invalid_request, duplicate_mismatch, unknown_stream, stream_not_live,
--   self_gift, unknown_gift, rate_limited, spending_limit, insufficient_funds, balance_limit,
--   catalog_changed (detail: {catalog_version = current version}), not_a_guest, guest_left,
--   no_guests, guests_changed (the stage changed since the caller read it: read, retry),
--   hold_limit (detail: {entries_max}: the sender's gifts in the hold name too many creators)
--   spending_limit detail: {period = 'day' | 'month', limit, spent, set_by = 'own' |
--   'platform', spent_24h (day only, = spent)}
-- A gift to guests: event adds `to` (ARGV[21]) and recipients [{user_id, coins, diamonds}];
--   the ledger entry's `to` is the guest (or '*') and `recipients` lists
--   id:coins:diamonds:share_rem per guest; the receipt's diamonds are the guests' total.
--   Guests' diamonds are held like a creator's (one hold per recipient).

local K_BATTLE, K_BATTLE_TOP, K_GUESTS = KEYS[13], KEYS[14], KEYS[15]
local K_GUEST_ACCOUNTS = 19  -- KEYS[19..]: the recipients' accounts
local to, listed = ARGV[21] or '', ARGV[22] or ''
local K_GOALS, K_FANS, K_NAMES = KEYS[16], KEYS[17], KEYS[18]
local ladder = ARGV[23]
local client_id, sender, creator, stream_id, gift = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count = int_arg(ARGV[6], 1, 9999)
local share_bps = int_arg(ARGV[8], 0, 10000)
local rate = int_arg(ARGV[9], 1, 1000000)
local burst = int_arg(ARGV[10], 1, 1000000)
local daily_default = int_arg(ARGV[11], 0, 1e13)
local receipt_ttl = int_arg(ARGV[12], 1, 1e9)
local combo_window = int_arg(ARGV[13], 1, 1e9)
local feed_max = int_arg(ARGV[14], 1, 1e9)
local amount_max = int_arg(ARGV[15], 1, 1e13)
local send_max = int_arg(ARGV[16], 1, 1e11)
local shown_version = int_arg(ARGV[17], 0, 9007199254740991)
local K_HOLD = KEYS[12]
local hold_days, hold_day_s = int_arg(ARGV[18], 0, 365), int_arg(ARGV[19], 1, 1000000)
local hold_entries_max = int_arg(ARGV[20], 1, 100000)
local monthly_default = int_arg(ARGV[24], 0, 1e13)
if not (id_arg(client_id) and id_arg(sender) and id_arg(creator) and id_arg(stream_id)
    and id_arg(gift) and count and share_bps and rate and burst and daily_default
    and receipt_ttl and combo_window and feed_max and amount_max and send_max and shown_version
    and hold_days and hold_day_s and hold_entries_max and monthly_default
    and type(ARGV[7]) == 'string' and #ARGV[7] <= 256
    and (to == '' or to == '*' or id_arg(to)) and #listed <= 1024 and ladder_ok(ladder)) then
  return refuse('invalid_request')
end

local fingerprint = stream_id .. '|' .. gift .. '|' .. int(count)
if to ~= '' then
  fingerprint = fingerprint .. '|' .. to  -- the same id for another recipient is a mismatch
end
local stored = redis.call('GET', KEYS[1])
if stored then
  local cut = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, cut - 1) ~= fingerprint then
    return refuse('duplicate_mismatch')
  end
  return {'replay', string.sub(stored, cut + 1)}
end

local stream = redis.call('HMGET', KEYS[5], 'state', 'creator', 'seq', 'coins', 'diamonds',
  'gifts', 'epoch')
if not stream[1] then
  return refuse('unknown_stream')
end
if stream[1] ~= 'live' then
  return refuse('stream_not_live')
end
if stream[2] ~= creator then
  -- The caller's view of the stream's owner is stale or forged: the key it passed in
  -- KEYS[3] is not the owner's account, so nothing may be written.
  return refuse('invalid_request')
end
if sender == creator then
  return refuse('self_gift')
end
local guest_ids, not_to_guests = guests_recipients(K_GUESTS, to, listed, sender)
if not_to_guests then
  return refuse(not_to_guests)
end
-- The prices and their version are read together: a client that names the version it
-- was shown is charged those prices or refused, never charged another version's.
local price, version = unpack(redis.call('HMGET', KEYS[10], gift, '@version'))
if shown_version > 0 and tonumber(version) ~= shown_version then
  return refuse('catalog_changed', {catalog_version = tonumber(version) or 0})
end
if not price then
  return refuse('unknown_gift')
end
local coins = tonumber(price) * count
if coins > send_max then
  return refuse('invalid_request')
end

for i = 3, 6 do
  stored_int(stream[i])
end
-- The sender's account: its coins and rate limiter, and the spending fields (_spend.lua).
local acct, acct_coins, rl_tokens, rl_at = spend_read(KEYS[2], 'coins', 'rl_tokens', 'rl_at')
local ms, seconds = now_ms()
-- The sender's token bucket (_gift_rules.lua), the same rule as the cluster's debit leg.
local tokens, retry_after_ms = gift_rate_take(rl_tokens, rl_at, ms, rate, burst)
if not tokens then
  return refuse('rate_limited', {retry_after_ms = retry_after_ms})
end
-- Spending limits (_spend.lua): the rolling 24 hours and the calendar month, each capped
-- by the user's own limit and, for a minor, the platform's.
local spend = spend_state(acct, ms, seconds, daily_default, monthly_default)
local over = spend_over(spend, coins)
if over then
  return refuse('spending_limit', over)
end
local balance = stored_int(acct_coins)
if balance < coins then
  return refuse('insufficient_funds', {balance = balance, price = coins})
end
-- The split carries the creator's fraction of a diamond from gift to gift: `share_rem`
-- (basis-point units, 0..9999) is what the creator has earned beyond its whole diamonds,
-- so that however the coins arrive, the diamonds credited are the floor of the sum of
-- coins x share. coins x share <= 10^11 x 10^4 stays exact below 2^53. The rule is
-- _gift_rules.lua's gift_split, the same as the cluster's credit leg.
local creator_acct = redis.call('HMGET', KEYS[3], 'diamonds', 'share_rem')
local diamonds, share_rem = gift_split(stored_int(creator_acct[2]), coins, share_bps)
local creator_diamonds = stored_int(creator_acct[1])
local plan
if guest_ids then
  -- The guests earn the gift instead of the creator (_guests.lua), each with their carry.
  local accounts = {unpack(KEYS, K_GUEST_ACCOUNTS, K_GUEST_ACCOUNTS - 1 + #guest_ids)}
  plan, diamonds = guests_plan(K_GUESTS, guest_ids, accounts, coins, share_bps,
    stored_int(stream[3]) + 1, amount_max)
  if not plan then
    return refuse('balance_limit')
  end
  creator_diamonds = 0
  share_rem = plan[1].share_rem
end
local platform = coins - diamonds
local platform_coins = stored_int(redis.call('HGET', KEYS[4], 'coins'))
if creator_diamonds + diamonds > amount_max or platform_coins + platform > amount_max then
  return refuse('balance_limit')
end
-- The payout hold (_hold.lua) covers whoever earns the diamonds: the creator, or each guest.
local hold, hold_refusal, guest_holds
if plan then
  guest_holds = {}
  for i, p in ipairs(plan) do
    guest_holds[i], hold_refusal = hold_gift_prepare(p.key, K_HOLD, p.id, share_bps, seconds,
      hold_days, hold_day_s, hold_entries_max)
    if not guest_holds[i] then
      return hold_refusal
    end
  end
else
  hold, hold_refusal = hold_gift_prepare(KEYS[3], K_HOLD, creator, share_bps, seconds,
    hold_days, hold_day_s, hold_entries_max)
  if not hold then
    return hold_refusal
  end
end
-- Read every key written below with a command of its type: a key of the wrong type fails
-- here, before the first write, instead of halfway through (Redis has no rollback).
redis.call('ZSCORE', KEYS[6], sender)
if redis.call('EXISTS', KEYS[7]) == 1 then
  -- The feed entry id is the next sequence number; XADD refuses an id at or below the
  -- feed's last one, which only a hand-edited seq or feed can cause. Fail now, not there.
  local info = redis.call('XINFO', 'STREAM', KEYS[7])  -- fails on a wrong-typed feed too
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last = tonumber(string.match(info[i + 1], '^(%d+)-'))
      if last > stored_int(stream[3]) then
        error('giftwire: feed is ahead of the stream sequence: ' .. info[i + 1])
      end
    end
  end
end
stored_int(redis.call('GET', KEYS[8]))
redis.call('XLEN', KEYS[9])
local fan_coins = stored_int(redis.call('ZSCORE', K_FANS, sender))
local known_name = redis.call('HGET', K_NAMES, sender)
local goals = goals_for_gift(K_GOALS, gift, coins, count)
-- The level after this gift, and whether it climbs past one (2 and up: level 1 is the first
-- gift itself), computed now: a malformed ladder raises before anything is written.
local level = level_of(ladder, fan_coins + coins)
local leveled = level >= 2 and level_threshold(ladder, level) > fan_coins
-- Whether this gift scores in a battle: decided here, on this script's clock, so a gift
-- racing the battle's start or end is inside the window or outside it, never both.
local battle_id = battle_scoring(K_BATTLE, ms)
if battle_id then
  redis.call('ZSCORE', K_BATTLE_TOP, sender)  -- type check, only when it will be written
end

-- Every check passed: write.
local new_balance = redis.call('HINCRBY', KEYS[2], 'coins', -coins)
spend_record(KEYS[2], spend, coins, 'rl_tokens', int(tokens - 1000), 'rl_at', int(ms))
if plan then
  guests_credit(plan, K_GUESTS)
  for i, p in ipairs(plan) do
    hold_gift_commit(guest_holds[i], p.diamonds, p.coins)
  end
else
  redis.call('HSET', KEYS[3], 'diamonds', int(creator_diamonds + diamonds),
    'share_rem', int(share_rem))
  hold_gift_commit(hold, diamonds, coins)
end
redis.call('HINCRBY', KEYS[4], 'coins', platform)
local seq = redis.call('HINCRBY', KEYS[5], 'seq', 1)
redis.call('HINCRBY', KEYS[5], 'coins', coins)
redis.call('HINCRBY', KEYS[5], 'diamonds', diamonds)
redis.call('HINCRBY', KEYS[5], 'gifts', count)
redis.call('ZINCRBY', KEYS[6], coins, sender)
redis.call('ZINCRBY', K_FANS, coins, sender)
if known_name ~= ARGV[7] then
  redis.call('HSET', K_NAMES, sender, ARGV[7])
end
local progress, reached = goals_advance(K_GOALS, goals)
local combo = redis.call('INCRBY', KEYS[8], count)
redis.call('PEXPIRE', KEYS[8], combo_window)
if battle_id then
  battle_score(K_BATTLE, K_BATTLE_TOP, sender, coins)
end
local entry = {'type', 'gift', 'client_id', client_id, 'from', sender,
  'to', plan and to or creator, 'stream', stream_id, 'gift', gift, 'count', int(count),
  'price', price, 'coins', int(coins), 'diamonds', int(diamonds), 'platform', int(platform),
  'share_bps', int(share_bps), 'share_rem', int(share_rem), 'seq', int(seq),
  'catalog_version', version or '0'}
if plan then
  entry[#entry + 1] = 'recipients'
  entry[#entry + 1] = guests_entry(plan)
end
local transfer_id = redis.call('XADD', KEYS[9], '*', unpack(entry))

local event = cjson.encode({
  type = 'gift', seq = seq, epoch = stream[7] or '', transfer_id = transfer_id,
  stream_id = stream_id, sender_id = sender, sender_name = ARGV[7], gift_id = gift,
  count = count, combo = combo, coins = coins, diamonds = diamonds, ts = ms, level = level,
  goals = #progress > 0 and progress or nil,
  battle_id = battle_id,  -- nil (absent) unless the gift scored in a battle
  to = plan and to or nil, recipients = plan and guests_event_rows(plan) or nil,
})
redis.call('XADD', KEYS[7], 'MAXLEN', '~', int(feed_max), int(seq) .. '-0', 'e', event)
redis.call('PUBLISH', KEYS[11], event)
if leveled then
  redis.call('PUBLISH', KEYS[11], cjson.encode({type = 'level_up', stream_id = stream_id,
    seq = seq, user_id = sender, user_name = ARGV[7], level = level,
    prev_level = level_of(ladder, fan_coins), coins = fan_coins + coins}))
end
for _, goal in ipairs(reached) do
  redis.call('PUBLISH', KEYS[11],
    goal_reached_event(stream_id, goal, seq, sender, ARGV[7], ms))
end

local receipt = cjson.encode({
  transfer_id = transfer_id, client_id = client_id, stream_id = stream_id, gift_id = gift,
  count = count, coins = coins, diamonds = diamonds, platform_coins = platform,
  balance = new_balance, combo = combo, seq = seq, ts = ms,
})
redis.call('SET', KEYS[1], fingerprint .. '\n' .. receipt, 'EX', receipt_ttl)
return {'ok', receipt}
