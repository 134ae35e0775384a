-- A Pix the provider reports paid: pending (or canceled by its order's expiry) → succeeded,
-- counted in the books, charge.succeeded appended and the split kept aside at creation
-- executed, in one step. Applied once: a charge already past pending is left as it is, so
-- duplicate and out-of-order webhooks change nothing. A payment that arrives after its order
-- expired (the charge was canceled) is marked `lateRefund`: the money is the customer's, and
-- the worker gives it back (that mark survives a crash between here and the refund).
-- KEYS: charge, totals, the charge's events, the shard's aggregates, the shard's recipients set,
--   the shard's outbox (charge.succeeded is published there for merchant webhooks).
-- ARGV: chargeId, the amount the provider reports, charge.succeeded (JSON), paidAt, the
--   recipients' key prefix.
-- Answers {'paid'|'late'|'already'|'missing'|'mismatch', status, lateRefund ('1' or '')}.
local charge, totals, events, aggregates, recipients, outbox = unpack(KEYS, 1, 6)
local charge_id, amount, event, paid_at, recipient_prefix = unpack(ARGV, 1, 5)
local c = charge_fields(charge, events, {'status', 'amount', 'currency', 'gateway', 'pendingSplits', 'splitEvent',
  'lateRefund', 'itemId'})
if not c[1] then return {'missing', '', ''} end
if c[1] ~= 'pending' and c[1] ~= 'canceled' then return {'already', c[1], c[7] or ''} end
if c[2] ~= amount then return {'mismatch', c[1], ''} end
local books = c[4] .. ':' .. c[3] .. ':c:'
add_counts(totals, {books .. 'a', amount, books .. 'n', 1})
local late = c[1] == 'canceled'
redis.call('HSET', charge, 'status', 'succeeded', 'paidAt', paid_at)
if late then redis.call('HSET', charge, 'lateRefund', '1') end
publish(outbox, charge_id, append_event(events, aggregates, charge_id, event), c[8] or '')
if c[5] then
  for recipient, part in string.gmatch(c[5], '([^:;]+):(%d+):0') do
    redis.call('HINCRBY', recipient_prefix .. recipient, c[3] .. ':earned', part)
    redis.call('SADD', recipients, recipient)
  end
  redis.call('HSET', charge, 'splits', c[5])
  redis.call('HDEL', charge, 'pendingSplits', 'splitEvent')
  append_event(events, aggregates, charge_id, c[6])
end
if late then return {'late', 'succeeded', '1'} end
return {'paid', 'succeeded', ''}
