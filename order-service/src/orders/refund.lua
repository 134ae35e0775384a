-- An order's refund, after payment made it: the order's refunded amount and status, its step,
-- and the refunds tally of its currency's totals, in one step; once per payment refund (the
-- order's set of refund ids), so a retried request records nothing twice. With `restocked`,
-- marks the order's units as returned (that step may come later, in another call).
-- The order stays counted as completed: it was sold; `refunds` counts what went back, so the
-- books read charged − refunded = completed − refunds.
-- Each refund is published to the shard's outbox (order.refunded) for merchant webhooks.
-- KEYS: order, steps (the legacy list, unused), totals, the order's refund ids, the shard's outbox.
-- ARGV: refundId ('' to record only a restock), amount, at, step ("name status at"), restocked
--   ('1' or '').
local order, steps, totals, refunds, outbox = unpack(KEYS, 1, 5)
local refund_id, amount, at, step, restocked = unpack(ARGV, 1, 5)
local cur = redis.call('HMGET', order, 'status', 'currency', 'amount', 'amountRefunded', 'restocked', 'orderId',
  'itemId', 'quantity', 'customerId', 'n', 'st')
-- Orders stored since #29 do not repeat their id in their hash: it is the key's.
cur[6] = cur[6] or string.match(order, ':order:(.+)$')
if not cur[1] then return {'missing'} end
if cur[1] ~= 'completed' and cur[1] ~= 'partially_refunded' and cur[1] ~= 'refunded' then
  return {'not_refundable', cur[1]}
end
local refunded = tonumber(cur[4]) or 0
local set = {'updatedAt', at}
local taken = steps_of(cur[10], cur[11])
if refund_id ~= '' and redis.call('SADD', refunds, refund_id) == 1 then
  refunded = refunded + tonumber(amount)
  add_counts(totals, {cur[2] .. ':r:n', 1, cur[2] .. ':r:a', amount})
  push_steps(set, taken, step)
  local status = refunded >= tonumber(cur[3]) and 'refunded' or 'partially_refunded'
  set[#set + 1] = 'status'; set[#set + 1] = status
  set[#set + 1] = 'amountRefunded'; set[#set + 1] = string.format('%d', refunded)
  redis.call('XADD', outbox, '*', 't', 'order.refunded', 'o', cur[6] or '', 'i', cur[7] or '', 'q', cur[8] or '',
    'u', cur[9] or '',
    'm', cur[3], 'c', cur[2], 'r', refund_id, 'ra', amount, 'f', string.format('%d', refunded), 's', status)
end
if restocked == '1' and not cur[5] then
  set[#set + 1] = 'restocked'; set[#set + 1] = '1'
  push_steps(set, taken, step)
end
redis.call('HSET', order, unpack(set))
local status = redis.call('HGET', order, 'status')
return {'ok', status, string.format('%d', refunded), (restocked == '1' or cur[5]) and '1' or ''}
