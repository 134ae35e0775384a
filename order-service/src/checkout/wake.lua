-- Wakes an order awaiting its Pix (payment heard it was paid): due for recovery now instead of
-- at its expiry. Answers the order's status before the call ('' for no such order): only an
-- awaiting_payment one is woken; one already going on, or ended, has nothing to wake.
-- KEYS: order, active. ARGV: order id.
local order, active = KEYS[1], KEYS[2]
local status = redis.call('HGET', order, 'status')
if not status then return '' end
if status == 'awaiting_payment' then redis.call('ZADD', active, now_ms(), ARGV[1]) end
return status
