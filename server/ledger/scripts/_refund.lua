-- _refund.lua: a chargeback's part in the buyer's account and the payment, shared by refund
-- (single node) and refund_claim (the buyer's leg on a Redis Cluster). Functions only.

-- The stored refund of this id: its replay, a mismatch, or nil when it is new.
local function refund_replay(record_key, user, coins)
  local record = redis.call('HMGET', record_key, 'user', 'coins', 'receipt')
  if record[1] then
    if record[1] ~= user or tonumber(record[2]) ~= coins then
      return refuse('duplicate_mismatch')
    end
    return {'replay', record[3]}
  end
  return nil
end

-- Before any write: what the refund takes from the payment and the buyer's balance. Returns
-- the state for refund_write, or nil and a refusal. `debt_added` is what the balance cannot
-- give back: the caller reverses held gifts against it and lowers it by what they cover.
local function refund_decide(payment_key, acct_key, payment_id, user, coins, amount_max)
  local payment = redis.call('HMGET', payment_key, 'user', 'coins', 'state', 'refunded', 'early')
  if payment[1] and payment[1] ~= user then
    -- Naming someone else is refused like today's refunds: the buyer is the payment's content.
    return nil, refuse('invalid_request')
  end
  local r = {before_payment = not payment[3] or payment[3] == 'awaiting_payment',
    refunded = 0, early = 0, paid = 0, so_far = 0}
  if r.before_payment then
    r.early = stored_int(payment[5]) + coins
    if r.early > amount_max then
      return nil, refuse('invalid_request')
    end
  else
    r.paid = stored_int(payment[2])
    r.so_far = stored_int(payment[4])
    if payment[3] == 'refunded' and not payment[4] then
      r.so_far = r.paid  -- refunded whole before refunds had ids
    end
    r.refunded = math.min(coins, r.paid - r.so_far)
    if r.refunded < 0 then
      error('giftwire: payment refunded beyond its coins: ' .. payment_id)
    end
  end
  local acct = redis.call('HMGET', acct_key, 'coins', 'debt')
  local balance = stored_int(acct[1])
  stored_int(acct[2])
  r.clawed = math.min(balance, r.refunded)
  r.debt_added = r.refunded - r.clawed
  return r
end

-- The first writes: the buyer's balance and debt, and the payment.
local function refund_write(r, payment_key, acct_key, user)
  -- int(): with nothing to claw back, -clawed is the double -0, which Lua passes to Redis as
  -- "-0", and HINCRBY refuses that as not an integer.
  r.balance = redis.call('HINCRBY', acct_key, 'coins', int(-r.clawed))
  r.debt = redis.call('HINCRBY', acct_key, 'debt', int(r.debt_added))
  if r.before_payment then
    redis.call('HSET', payment_key, 'user', user, 'state', 'awaiting_payment',
      'early', int(r.early))
  else
    local total = r.so_far + r.refunded
    redis.call('HSET', payment_key, 'refunded', int(total),
      'state', total == r.paid and 'refunded' or 'credited')
  end
end

-- The last writes: the refund's log entry, its receipt and record. `extra`: more receipt
-- fields (the cluster's clawbacks). Returns the receipt JSON.
local function refund_finish(r, log_key, record_key, payment_id, refund_id, user, coins,
                             reversed, extra)
  local ms = now_ms()
  local transfer_id = redis.call('XADD', log_key, '*', 'type', 'refund', 'payment', payment_id,
    'refund_id', refund_id, 'from', user, 'coins', int(coins), 'refunded', int(r.refunded),
    'clawed', int(r.clawed), 'reversed', int(reversed), 'debt', int(r.debt_added),
    'before_payment', r.before_payment and '1' or '0')
  local doc = {
    transfer_id = transfer_id, payment_id = payment_id, refund_id = refund_id, user_id = user,
    coins = coins, refunded = r.refunded, clawed = r.clawed, debt_added = r.debt_added,
    balance = r.balance, debt = r.debt, before_payment = r.before_payment,
    reversed = reversed, ts = ms,
  }
  for name, value in pairs(extra or {}) do
    doc[name] = value
  end
  local receipt = cjson.encode(doc)
  redis.call('HSET', record_key, 'user', user, 'coins', int(coins), 'receipt', receipt)
  return receipt
end
