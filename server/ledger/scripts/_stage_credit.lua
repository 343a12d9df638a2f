-- _stage_credit: guests on stage in the cluster's credit leg (credit_gifts.lua; docs/ledger.md,
-- "Guests on stage", cluster part). Needs _guests.lua. The stage ({u:CREATOR}:s:STREAM:guests)
-- is in the creator's slot, so the credit leg decides a transfer's recipients when it runs;
-- a guest's account is in the guest's own slot, so for each recipient it writes a
-- guest-credit entry into the creator's slot's outbox, which credit_guest.lua applies there
-- (the guest's diamonds, with the guest's own share_rem carry, and the platform's share).
--
-- A transfer the debit accepted is never refused here for the stage's sake (the coins are
-- gone from the sender): when its guest left, was never on, or `*` finds nobody on stage
-- (but the sender), the creator receives the gift as an ordinary one, and the log entry
-- says why (`redirected`).

-- The guests a transfer to `to` credits, as the stage is now: ids in order, or nil and
-- the reason the creator receives it ('' to: nil, nil). A sender on stage is no recipient
-- of their own gift to '*' (single-node refuses it with self_gift before the debit).
local function stage_recipients(key, to, sender)
  if to == '' then
    return nil, nil
  end
  local ids = {}
  if to == '*' then
    for _, id in ipairs(guests_on(key)) do
      if id ~= sender then
        ids[#ids + 1] = id
      end
    end
    if #ids == 0 then
      return nil, 'no_guests'
    end
    return ids
  end
  local state = redis.call('HGET', key, to)
  if state == 'left' then
    return nil, 'guest_left'
  end
  if state ~= 'on' or to == sender then
    return nil, 'not_a_guest'
  end
  return {to}
end

-- Each recipient's coins of a transfer of `coins` to `ids` (split exactly, the remainder
-- turning with `seq`): [{user_id, coins, credit_id = TRANSFER|GUEST}]; the stage's totals
-- are checked to be integers now, before any write.
local function stage_split(key, transfer, ids, coins, seq)
  local rows = {}
  for i, id in ipairs(ids) do
    stored_int(redis.call('HGET', key, 'c|' .. id))
    rows[i] = {user_id = id, coins = guests_coin_share(i, #ids, coins, seq),
      credit_id = transfer .. '|' .. id}
  end
  return rows
end

-- The writes of a transfer to guests: the stage's coins per guest, and one outbox entry
-- per guest-credit (its id goes into the result, so the fast path can delete it), with the
-- debit's time (`debit_ts`: the guest's diamonds are held by that day, credit_guest.lua).
local function stage_emit(key, outbox, rows, t)
  for _, r in ipairs(rows) do
    redis.call('HINCRBY', key, 'c|' .. r.user_id, r.coins)
    r.outbox_id = redis.call('XADD', outbox, '*', 'kind', 'guest_credit',
      'credit_id', r.credit_id, 'transfer_id', t.transfer_id, 'guest', r.user_id,
      'from', t.sender, 'creator', t.creator, 'stream', t.stream, 'coins', int(r.coins),
      'share_bps', int(t.share_bps), 'seq', int(t.seq), 'ts', int(t.ms),
      'debit_ts', int(t.debit_ms))
  end
end

-- The log entry's fields of the gift's recipient: `recipient` (the gift's `to`), and
-- either `recipients` (id:coins per guest, ';'-joined) or `redirected` (why the creator
-- received it instead).
local function stage_entry_fields(entry, to, rows, redirected)
  if to == '' then
    return
  end
  entry[#entry + 1] = 'recipient'
  entry[#entry + 1] = to
  if rows then
    local parts = {}
    for i, r in ipairs(rows) do
      parts[i] = r.user_id .. ':' .. int(r.coins)
    end
    entry[#entry + 1] = 'recipients'
    entry[#entry + 1] = table.concat(parts, ';')
  else
    entry[#entry + 1] = 'redirected'
    entry[#entry + 1] = redirected
  end
end

-- The gift event's `to` and `recipients` [{user_id, coins}] of a transfer to guests (their
-- diamonds are decided in their own slots, after this event: see docs/protocol.md).
local function stage_event_fields(doc, to, rows)
  if rows then
    doc.to = to
    local out = {}
    for i, r in ipairs(rows) do
      out[i] = {user_id = r.user_id, coins = r.coins}
    end
    doc.recipients = out
  end
end
