-- Wakes an order awaiting its Pix (payment heard it was paid): due for recovery now instead of
-- at its expiry. 1 when it was awaiting, else 0 (already on, or ended: nothing to wake).
-- KEYS: order, active. ARGV: order id.
local order, active = KEYS[1], KEYS[2]
if redis.call('HGET', order, 'status') ~= 'awaiting_payment' then return 0 end
redis.call('ZADD', active, now_ms(), ARGV[1])
return 1
