-- The payment event log, for the script that makes the change it records (the same step, so
-- never one without the other). Each aggregate (a charge, a wallet) has its own list of events
-- in its own slot: its sequence is the list's length, gapless by construction; the shard's set
-- of aggregates lets `verify` find every list without SCAN. Events are never expired.
--
-- append_event(list, index, aggregate, kind, at, correlation, data): appends one event and
--   returns its sequence. `data` is a JSON object as text, built by the caller (amounts as
--   exact integers: Lua's cjson would print large numbers in floating point).
-- int(n): an integer as JSON text, exactly (Lua's tostring would print 1e+15).
local function int(n)
  return string.format('%d', n)
end
local function append_event(list, index, aggregate, kind, at, correlation, data)
  local seq = redis.call('LLEN', list) + 1
  redis.call('RPUSH', list, '{"eventId":' .. cjson.encode(aggregate .. '-' .. seq) .. ',"sequence":' .. seq ..
    ',"type":"' .. kind .. '","aggregateId":' .. cjson.encode(aggregate) .. ',"at":"' .. at ..
    '","correlationId":' .. cjson.encode(correlation) .. ',"data":' .. data .. '}')
  if seq == 1 then redis.call('SADD', index, aggregate) end
  return seq
end
