-- Refund, whole or partial: the charge's refunded amount and status, the refunded totals (per
-- provider, as charge.lua counts), the key's marker and the refund.succeeded event, in one step,
-- so the books never show a refund without its counters or its event, and concurrent refunds
-- can never together exceed the charge.
-- A key that refunded before (its marker) gets that refund again. Without an amount, what
-- remains is refunded; with nothing left, the charge's last refund is answered again.
-- Failed (declined): refused. More than remains: refused ('exceeds'). Totals first, as in
-- charge.lua.
-- A charge with a split has its parts reversed in the same step: the caller divided the refund
-- over the parts still standing as it read them (exact integer arithmetic, which Lua's doubles
-- cannot do for large amounts), so the script checks the charge is still as read (its
-- amountRefunded) and answers 'stale' otherwise, for the caller to read and divide again.
-- KEYS: charge, totals, marker, the charge's events, the shard's aggregates, the shard's outbox
--   (refund.succeeded is published there for merchant webhooks: charge.refunded).
-- ARGV: new refundId, refundedAt, amount ('' = what remains), marker TTL (ms), the provider's
--   refund reference, traceId, then for a split: amountRefunded as read ('' = no split), the
--   parts after the refund, the reversals (`recipient:amount;…`), the split.reversed event,
--   the recipients' key prefix.
local charge, totals, marker, events, aggregates, outbox = unpack(KEYS, 1, 6)
local refund_id, refunded_at, asked, marker_ttl_ms, reference, trace_id,
  read_refunded, parts, reversals, split_event, recipient_prefix = unpack(ARGV, 1, 11)
local c = charge_fields(charge, events, {'status', 'amount', 'currency', 'refundId', 'gateway', 'amountRefunded',
  'lastRefundAmount', 'orderId', 'chargeId', 'itemId'})
if not c[1] then return {'not_found'} end
-- Charges recorded since #29's sixth pass do not repeat their id: their key's name has it.
c[9] = c[9] or string.match(charge, ':charge:(.+)$')
local prev = redis.call('GET', marker)
if prev then
  local id, amount = string.match(prev, '^([^|]+)|(%d+)$')
  return {'already', id, amount, c[1]}
end
-- A declined charge, or a Pix not paid (pending, canceled), took no money: nothing to give back.
if c[1] == 'failed' or c[1] == 'pending' or c[1] == 'canceled' then return {'not_refundable', c[1]} end
if read_refunded ~= '' and (c[6] or '0') ~= read_refunded then return {'stale'} end
local charged = tonumber(c[2])
local refunded = tonumber(c[6]) or 0
if c[1] == 'refunded' and c[6] == false then refunded = charged end
local remaining = charged - refunded
if asked == '' and remaining == 0 then
  return {'already', c[4], c[7] or c[2], c[1]}
end
local amount = asked == '' and remaining or tonumber(asked)
if amount > remaining then return {'exceeds', int(remaining)} end
local books = (c[5] or 'simulator') .. ':' .. c[3] .. ':r:'
add_counts(totals, {books .. 'a', amount, books .. 'n', 1})
refunded = refunded + amount
local status = refunded == charged and 'refunded' or 'partially_refunded'
redis.call('HSET', charge, 'status', status, 'refundId', refund_id, 'refundedAt', refunded_at,
  'amountRefunded', int(refunded), 'lastRefundAmount', int(amount))
redis.call('SET', marker, refund_id .. '|' .. int(amount), 'PX', marker_ttl_ms)
local seq = append_event(events, aggregates, c[9], event_json('refund.succeeded', refunded_at, c[8],
  '{"refundId":"' .. refund_id .. '","chargeId":"' .. c[9] .. '","amount":' .. int(amount) .. ',"currency":"' ..
  c[3] .. '","amountRefunded":' .. int(refunded) .. ',"status":"' .. status .. '","gateway":"' .. (c[5] or '') ..
  '","gatewayReference":' .. cjson.encode(reference) ..
  ',"traceId":' .. (trace_id ~= '' and cjson.encode(trace_id) or 'null') .. '}'))
publish(outbox, c[9], seq, c[10] or '')
if read_refunded ~= '' then
  redis.call('HSET', charge, 'splits', parts)
  for recipient, part in string.gmatch(reversals, '([^:;]+):(%d+)') do
    redis.call('HINCRBY', recipient_prefix .. recipient, c[3] .. ':reversed', part)
  end
  append_event(events, aggregates, c[9], split_event)
end
return {'refunded', refund_id, int(amount), status}
