-- bump_epoch: start a new epoch of a stream's history after the store went back in time
-- (a restore, a failover to a replica that missed writes, a lost fsync tail), if no one else
-- has yet: compare and set. Every process that notices the rollback calls it with the epoch
-- it knew; the first one wins, the others get the winner's epoch back.
--
-- KEYS[1]  {s:STREAM}:stream   stream hash (epoch, prev_epoch, prev_epoch_seq, seq)
-- KEYS[2]  {s:STREAM}:room     pub/sub channel
--
-- ARGV[1]  stream id
-- ARGV[2]  expected epoch (the current one as the caller knows it; '' for a stream from
--          before epochs existed)
-- ARGV[3]  new epoch (a fresh random id)
-- ARGV[4]  valid seq: the last sequence of the expected epoch the caller found still true
--          (capped at the stream's seq)
--
-- Reply: {'ok', JSON} (this call set the epoch) | {'replay', JSON} (the stream is no longer
--   in the expected epoch: nothing written, the current one returned) | {'refused', code}
-- JSON: epoch, prev_epoch, prev_epoch_seq
-- Publishes (on 'ok'): {type = 'epoch', stream_id, epoch, prev_epoch, prev_epoch_seq}
-- Refusal codes: invalid_request, unknown_stream

local stream_id, expected, epoch = ARGV[1], ARGV[2], ARGV[3]
local valid = int_arg(ARGV[4], 0, 9007199254740991)
if not (id_arg(stream_id) and type(expected) == 'string' and #expected <= 64
    and id_arg(epoch) and valid) then
  return refuse('invalid_request')
end
local s = redis.call('HMGET', KEYS[1], 'creator', 'epoch', 'prev_epoch', 'prev_epoch_seq', 'seq')
if not s[1] then
  return refuse('unknown_stream')
end
local current = s[2] or ''
if current ~= expected then
  return {'replay', cjson.encode({epoch = current, prev_epoch = s[3] or '',
    prev_epoch_seq = stored_int(s[4])})}
end
local seq = stored_int(s[5])
if valid > seq then
  valid = seq
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'prev_epoch', expected, 'prev_epoch_seq', int(valid))
local body = {epoch = epoch, prev_epoch = expected, prev_epoch_seq = valid}
redis.call('PUBLISH', KEYS[2], cjson.encode({type = 'epoch', stream_id = stream_id,
  epoch = epoch, prev_epoch = expected, prev_epoch_seq = valid}))
return {'ok', cjson.encode(body)}
