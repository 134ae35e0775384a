-- The payment event log, for the script that makes the change it records (the same step, so
-- never one without the other). Each aggregate (a charge, a wallet) has its own list of events
-- in its own slot. An event's sequence is its position in the list (1, 2, …) and its id
-- `<aggregate>-<sequence>`: both are given when it is read, so they are gapless by construction
-- and cost no read here. The shard's set of aggregates lets `verify` find every list without
-- SCAN. Events are never expired.
--
-- append_event(list, index, aggregate, event): appends `event` (JSON text, from event_json or
--   built by the caller) and returns its sequence. A new aggregate is added to the set `index`
--   for verify to find, unless `index` is '' (one node: verify scans; Store::aggregates_key).
-- event_json(kind, at, correlation, data): an event's JSON; `data` is a JSON object as text
--   (amounts as exact integers: Lua's cjson would print large numbers in floating point).
-- int(n): an integer as JSON text, exactly (Lua's tostring would print 1e+15).
-- charge_fields(charge, events, names): a charge's fields `names` as HMGET answers them (false
--   for a missing one). A charge's facts (charge_fact: its order, amount, currency, method,
--   provider and reference, decline code and creation time) are its first event's, which every
--   charge has: since #29's eleventh pass its hash holds only what the event does not (status,
--   customer, item, refunds, …), each fact being fsynced once. The event (its `events` list's
--   first) is read and decoded only when a fact asked for is not in the hash; older charges
--   hold them there, and the hash wins.
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
  if seq == 1 and index ~= '' then redis.call('SADD', index, aggregate) end
  return seq
end
local function event_json(kind, at, correlation, data)
  return '{"type":"' .. kind .. '","at":"' .. at .. '","correlationId":' .. cjson.encode(correlation) ..
    ',"data":' .. data .. '}'
end
-- What a charge's first event `e` says of fact `name` (nil: nothing, or not a fact). Its
-- amount is an exact integer as text (cjson decodes numbers as doubles: exact up to 2^53,
-- above shared::money::MAX_CHARGE). A chain, not a table of functions.
local function charge_in_data(name)
  return name == 'amount' or name == 'currency' or name == 'paymentMethod' or name == 'gateway'
    or name == 'gatewayReference' or name == 'declineCode'
end
-- The letter a fact is stored under in a charge's first event since #29's twelfth pass (as
-- events::CHARGE_LETTERS says), its envelope's correlation and data being 'c' and 'd'.
local function charge_letter(name)
  if name == 'amount' then return 'a'
  elseif name == 'currency' then return 'u'
  elseif name == 'paymentMethod' then return 'm'
  elseif name == 'gateway' then return 'g'
  elseif name == 'gatewayReference' then return 'r'
  elseif name == 'declineCode' then return 'd'
  end
end
local function charge_fact(e, name)
  local v
  if name == 'orderId' then v = e.c or e.correlationId
  elseif name == 'createdAt' then v = e.at
  elseif charge_in_data(name) then
    local data = e.d or e.data
    if type(data) == 'table' then
      v = data[charge_letter(name)]
      if v == nil then v = data[name] end
    end
  end
  if v == nil or v == cjson.null then return nil end
  if name == 'amount' then return int(v) end
  return v
end
local function charge_fields(charge, events, names)
  local c = redis.call('HMGET', charge, unpack(names))
  local first
  for i, name in ipairs(names) do
    if not c[i] and (name == 'orderId' or name == 'createdAt' or charge_in_data(name)) then
      if first == nil then
        local raw = redis.call('LINDEX', events, 0)
        first = raw and cjson.decode(raw) or false
      end
      if first then c[i] = charge_fact(first, name) or false end
    end
  end
  return c
end
local function publish(outbox, aggregate, seq, item)
  redis.call('XADD', outbox, '*', 'a', aggregate, 's', seq, 'i', item)
end
