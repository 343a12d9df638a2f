-- include: _gift_rules.lua
-- change_rate: take one token from a user's bucket of state-changing HTTP calls (goals,
-- spending limits, guests, battles, the admin's catalog and accounts), or refuse. The
-- server runs it before the call's own script, so one bucket per user holds across every
-- process, and on a cluster too: its one key is in the user's slot. The bucket is the gift
-- rate's token bucket (_gift_rules.lua, gift_rate_take), at a rate per minute.
--
-- KEYS[1]  {u:USER}:changes   hash: tokens (milli-tokens), at (ms, Redis' clock); it
--                             expires once it would be full again, so an idle user holds
--                             nothing
--
-- ARGV[1]  changes per minute (the refill rate)   ARGV[2]  burst (the bucket's size)
--
-- Reply: {'ok', tokens left (whole)} | {'refused', code [, detail JSON]}
-- Refusal codes: invalid_request (bad ARGV), rate_limited (detail: {retry_after_ms})

local per_minute = int_arg(ARGV[1], 1, 1000000)
local burst = int_arg(ARGV[2], 1, 1000000)
if not (per_minute and burst) then
  return refuse('invalid_request')
end
local stored_tokens, stored_at = unpack(redis.call('HMGET', KEYS[1], 'tokens', 'at'))
local ms = now_ms()
-- gift_rate_take counts `rate` milli-tokens a millisecond, that is `rate` tokens a second.
local rate = per_minute / 60
local tokens, retry_after_ms = gift_rate_take(stored_tokens, stored_at, ms, rate, burst)
if not tokens then
  return refuse('rate_limited', {retry_after_ms = retry_after_ms})
end
local left = math.floor(tokens - 1000)  -- a fraction of a milli-token is dropped, never made
redis.call('HSET', KEYS[1], 'tokens', int(left), 'at', int(ms))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst * 1000 - left) / rate) + 1)
return {'ok', int(math.floor(left / 1000))}
