-- Battles in cluster mode (docs/ledger.md, "Battles in cluster mode"): helpers of the
-- per-slot battle scripts. A side's hash {u:CREATOR}:s:STREAM:battle has the fields of
-- _battle.lua, and: state 'starting' (side a between the accept's steps 1 and 3, not
-- scoring), running_at (ms, this primary's TIME when the side began to score), and
-- side_result (the side's final JSON, once ended; its score no longer changes then).

-- True while a side holds its stream (starting or running, past its end or not: the server
-- ends an overdue one first, so that its result is stored).
local function battle_held(b)
  return b.state == 'running' or b.state == 'starting'
end

-- A decoded JSON argument that is an object, or nil.
local function json_arg(s)
  if type(s) ~= 'string' or #s == 0 or #s > 65536 then
    return nil
  end
  local ok, doc = pcall(cjson.decode, s)
  if ok and type(doc) == 'table' then
    return doc
  end
  return nil
end
