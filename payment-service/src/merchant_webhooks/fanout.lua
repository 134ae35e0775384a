-- One event's deliveries, one per endpoint it goes to, each due at once (due.lua). A delivery's
-- id is derived from the event and the endpoint, so the relay re-reading an event it did not
-- get to acknowledge (it died in between) finds the delivery there and creates nothing twice.
-- KEYS: due, pending, then per endpoint: the delivery, the endpoint's due set, its history.
-- ARGV: now (ms), eventId, type, body, the history's retention (ms), then per endpoint:
--   endpointId, deliveryId.
-- An endpoint's history forgets ids older than the retention (their deliveries have expired).
-- Answers how many deliveries it created.
local due, pending = KEYS[1], KEYS[2]
local now, event_id, kind, body, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local created = 0
local n = (#KEYS - 2) / 3
for i = 0, n - 1 do
  local delivery, endpoint_due, history = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local endpoint_id, delivery_id = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  if redis.call('EXISTS', delivery) == 0 then
    redis.call('HSET', delivery, 'id', delivery_id, 'endpointId', endpoint_id, 'eventId', event_id, 'type', kind,
      'body', body, 'status', 'pending', 'attempts', 0, 'createdAt', now, 'nextAt', now)
    redis.call('ZADD', endpoint_due, now, delivery_id)
    refresh_due(due, endpoint_due, endpoint_id)
    redis.call('ZADD', pending, now, delivery_id)
    redis.call('ZADD', history, now, delivery_id)
    redis.call('ZREMRANGEBYSCORE', history, '-inf', '(' .. (tonumber(now) - retention))
    created = created + 1
  end
end
return created
