-- A manual retry: the delivery is due at once. A dead or succeeded one gets one more attempt
-- (`manual`: a failure makes it dead again); a pending one keeps its place in the schedule and
-- is only brought forward.
-- A retried delivery no longer expires (attempt.lua sets its retention again when it ends).
-- KEYS: the delivery, due, the endpoint's due set, pending, its attempts.
-- ARGV: endpointId, deliveryId, now (ms).
-- Answers the status it had, or 'missing'.
local delivery, due, endpoint_due, pending, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local endpoint, id, now = ARGV[1], ARGV[2], ARGV[3]
local d = redis.call('HMGET', delivery, 'status', 'createdAt')
if not d[1] then return 'missing' end
if d[1] ~= 'pending' then
  redis.call('HSET', delivery, 'status', 'pending', 'manual', '1')
  redis.call('ZADD', pending, d[2], id)
  redis.call('PERSIST', delivery)
  redis.call('PERSIST', attempts)
end
redis.call('HSET', delivery, 'nextAt', now)
redis.call('ZADD', endpoint_due, now, id)
refresh_due(due, endpoint_due, endpoint)
return d[1]
