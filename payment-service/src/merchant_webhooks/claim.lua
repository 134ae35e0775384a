-- Takes up to `count` of an endpoint's due deliveries for one attempt each: a claimed one's
-- due time moves to `until` (now plus the attempt's timeout and a margin), a lease — a replica
-- killed while sending leaves it due again then, and it is sent again under the same
-- webhook-id (at least once). A delivery is claimed once: a second claimant finds it not due.
-- KEYS: due, the endpoint's due set. ARGV: endpointId, now (ms), until (ms), count, the
--   deliveries' key prefix (same slot).
-- Answers per claimed delivery: id, eventId, body, attempts, manual.
local due, endpoint_due = KEYS[1], KEYS[2]
local endpoint, now, lease_until, count, prefix = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ids = redis.call('ZRANGE', endpoint_due, '-inf', now, 'BYSCORE', 'LIMIT', 0, count)
local claimed = {}
for _, id in ipairs(ids) do
  local d = redis.call('HMGET', prefix .. id, 'eventId', 'body', 'status', 'attempts', 'manual')
  if d[1] and d[3] == 'pending' then
    redis.call('ZADD', endpoint_due, lease_until, id)
    for _, v in ipairs({id, d[1], d[2], d[4], d[5] or ''}) do claimed[#claimed + 1] = v end
  else
    -- Gone, or no longer pending (finished by a sender whose lease had run out): not due.
    redis.call('ZREM', endpoint_due, id)
  end
end
refresh_due(due, endpoint_due, endpoint)
return claimed
