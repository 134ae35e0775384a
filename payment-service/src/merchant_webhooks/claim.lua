-- Takes a due delivery for one attempt: its score in the due set moves to `until` (now plus
-- the attempt's timeout and a margin), a lease — a replica killed while sending leaves it
-- due again then, and it is sent again under the same webhook-id (at least once). Claimed
-- once: a second claimant finds it not due.
-- KEYS: due, the delivery. ARGV: member (`<endpointId>/<deliveryId>`), now (ms), until (ms).
-- Answers nil when not due (or gone), else eventId, type, body, status, attempts, manual.
local due, delivery = KEYS[1], KEYS[2]
local member, now, lease_until = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local score = redis.call('ZSCORE', due, member)
if not score or tonumber(score) > now then return false end
local d = redis.call('HMGET', delivery, 'eventId', 'type', 'body', 'status', 'attempts', 'manual')
if not d[1] or d[4] ~= 'pending' then
  redis.call('ZREM', due, member)
  return false
end
redis.call('ZADD', due, lease_until, member)
return {d[1], d[2], d[3], d[4], d[5], d[6] or ''}
