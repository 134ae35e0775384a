-- Refund: succeeded → refunded, with the refunded totals, in one step so that the books never
-- show a refund without its counters or the reverse, and two concurrent refunds cannot both
-- pass the status check. Already refunded: the existing refund is returned ('already_refunded':
-- a refund is idempotent by state, whatever the key), so it needs no marker of its own.
-- Failed (declined): refused. Totals first and per provider, as in charge.lua.
-- KEYS: charge, totals. ARGV: new refundId, refundedAt.
local charge, totals = KEYS[1], KEYS[2]
local refund_id, refunded_at = ARGV[1], ARGV[2]
local c = redis.call('HMGET', charge, 'status', 'amount', 'currency', 'refundId', 'gateway')
if not c[1] then return {'not_found'} end
if c[1] == 'refunded' then return {'already_refunded', c[4], c[2]} end
if c[1] ~= 'succeeded' then return {'not_refundable', c[1]} end
local books = (c[5] or 'simulator') .. ':' .. c[3] .. ':refunded:'
redis.call('HINCRBY', totals, books .. 'amount', c[2])
redis.call('HINCRBY', totals, books .. 'count', 1)
redis.call('HSET', charge, 'status', 'refunded', 'refundId', refund_id, 'refundedAt', refunded_at)
return {'refunded', refund_id, c[2]}
