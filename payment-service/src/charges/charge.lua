-- Charge: one script so that the charge record, its order index, the totals that count it and
-- the Idempotency-Key marker are written together or not at all. If the marker exists (a retry
-- after a crash between this script and the idempotency record's finish), the charge it names
-- is returned ('found') instead of recording a second one ('charged'). A marker found for a
-- different request (the key's idempotency record vanished, the marker not yet) is refused as
-- a reused key.
-- The totals are incremented first: HINCRBY is the only write here that can fail (overflow),
-- and a failing script keeps the writes made before the failure.
-- A new charge also stores its answer, when given one, so that the Idempotency-Key's record
-- needs no second write; a found one is answered by the caller.
-- The charge's first event (charge.succeeded or charge.declined) is appended in the same step
-- (events.lua), with the order as its correlation id.
-- KEYS: charge, order index, totals, marker, the charge's events, the shard's aggregates[, answer].
-- The totals count per provider (`<gateway>:<CUR>:charged:amount`): the per-currency books are
-- their sum, read at GET /totals, so byGateway costs no extra write here.
-- ARGV: chargeId, orderId, amount, currency, customerId, paymentMethod, status, declineCode,
--   createdAt, marker TTL (ms), charge key prefix (to read the marker's charge: same slot),
--   gateway, gatewayReference, traceId [, the answer (answer_from)].
local charge, order_index, totals, marker, events, aggregates, answer_at = unpack(KEYS, 1, 7)
local charge_id, order_id, amount, currency, customer_id, method, status, decline_code, created_at,
  marker_ttl_ms, charge_prefix, gateway, gateway_ref, trace_id = unpack(ARGV, 1, 14)
local ans = answer_from(ARGV, 15)
local prev = redis.call('GET', marker)
if prev then
  local c = redis.call('HMGET', charge_prefix .. prev, 'orderId', 'amount', 'currency', 'customerId', 'paymentMethod', 'declineCode')
  if c[1] then
    if c[1] ~= order_id or c[2] ~= amount or c[3] ~= currency or c[4] ~= customer_id or c[5] ~= method then
      return {'reused'}
    end
    return {'found', prev, c[1], c[2], c[3], c[6] or ''}
  end
end
if status == 'succeeded' then
  local books = gateway .. ':' .. currency .. ':charged:'
  redis.call('HINCRBY', totals, books .. 'amount', amount)
  redis.call('HINCRBY', totals, books .. 'count', 1)
end
redis.call('HSET', charge, 'chargeId', charge_id, 'orderId', order_id, 'amount', amount, 'currency', currency,
  'customerId', customer_id, 'paymentMethod', method, 'status', status, 'declineCode', decline_code,
  'refundId', '', 'createdAt', created_at, 'refundedAt', '', 'gateway', gateway, 'gatewayReference', gateway_ref)
redis.call('RPUSH', order_index, charge_id)
local data = '{"chargeId":"' .. charge_id .. '","orderId":"' .. order_id .. '","amount":' .. amount ..
  ',"currency":"' .. currency .. '","customerId":' .. cjson.encode(customer_id) .. ',"paymentMethod":"' .. method ..
  '","gateway":"' .. gateway .. '","gatewayReference":' .. cjson.encode(gateway_ref) ..
  ',"declineCode":' .. (decline_code ~= '' and cjson.encode(decline_code) or 'null') ..
  ',"traceId":' .. (trace_id ~= '' and cjson.encode(trace_id) or 'null') .. '}'
append_event(events, aggregates, charge_id, status == 'succeeded' and 'charge.succeeded' or 'charge.declined',
  created_at, order_id, data)
redis.call('SET', marker, charge_id, 'PX', marker_ttl_ms)
if ans then store_answer(answer_at, ans) end
return {'charged', charge_id, order_id, amount, currency, decline_code}
