-- Cancels a pending Pix whose order expired: from here a payment is refunded, not kept. Only a
-- pending charge moves (to canceled, with charge.canceled appended); any other is answered as
-- it stands, so an order whose Pix was paid at the last instant completes instead.
-- KEYS: charge, the charge's events, the shard's aggregates. ARGV: chargeId, charge.canceled (JSON).
-- Answers the charge's status after the call ('' when there is no such charge).
local charge, events, aggregates = KEYS[1], KEYS[2], KEYS[3]
local status = redis.call('HGET', charge, 'status')
if not status then return '' end
if status ~= 'pending' then return status end
redis.call('HSET', charge, 'status', 'canceled')
append_event(events, aggregates, ARGV[1], ARGV[2])
return 'canceled'
