-- The payment event log, for the script that makes the change it records (the same step, so
-- never one without the other). Each aggregate (a charge, a wallet) has its own list of events
-- in its own slot. An event's sequence is its position in the list (1, 2, …) and its id
-- `<aggregate>-<sequence>`: both are given when it is read, so they are gapless by construction
-- and cost no read here. The shard's set of aggregates lets `verify` find every list without
-- SCAN. Events are never expired.
--
-- append_event(list, index, aggregate, event): appends `event` (JSON text, from event_json or
--   built by the caller) and returns its sequence.
-- event_json(kind, at, correlation, data): an event's JSON; `data` is a JSON object as text
--   (amounts as exact integers: Lua's cjson would print large numbers in floating point).
-- int(n): an integer as JSON text, exactly (Lua's tostring would print 1e+15).
-- publish(outbox, aggregate, seq, item): tells the merchant-webhook dispatcher that an event
--   merchants may subscribe to (charge.succeeded, refund.succeeded, wallet.credited) was
--   appended, in the same step: a pointer to it in the shard's outbox stream, not a copy (the
--   dispatcher reads the event from its list). `item`: the charge's item, whose owner the
--   event belongs to ('' for none).
local function int(n)
  return string.format('%d', n)
end
local function append_event(list, index, aggregate, event)
  local seq = redis.call('RPUSH', list, event)
  if seq == 1 then redis.call('SADD', index, aggregate) end
  return seq
end
local function event_json(kind, at, correlation, data)
  return '{"type":"' .. kind .. '","at":"' .. at .. '","correlationId":' .. cjson.encode(correlation) ..
    ',"data":' .. data .. '}'
end
local function publish(outbox, aggregate, seq, item)
  redis.call('XADD', outbox, '*', 'a', aggregate, 's', seq, 'i', item)
end
