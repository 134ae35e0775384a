-- One event's deliveries, one per endpoint it goes to, each due at once. A delivery's id is
-- derived from the event and the endpoint, so the relay re-reading an event it did not get to
-- acknowledge (it died in between) finds the delivery there and creates nothing twice.
-- KEYS: due, pending, then per endpoint: the delivery, the endpoint's history.
-- ARGV: now (ms), eventId, type, body, then per endpoint: endpointId, deliveryId.
-- Answers how many deliveries it created.
local due, pending = KEYS[1], KEYS[2]
local now, event_id, kind, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local created = 0
for i = 3, #KEYS, 2 do
  local delivery, history = KEYS[i], KEYS[i + 1]
  local endpoint_id, delivery_id = ARGV[i + 2], ARGV[i + 3]
  if redis.call('EXISTS', delivery) == 0 then
    local member = endpoint_id .. '/' .. delivery_id
    redis.call('HSET', delivery, 'id', delivery_id, 'endpointId', endpoint_id, 'eventId', event_id, 'type', kind,
      'body', body, 'status', 'pending', 'attempts', 0, 'createdAt', now, 'nextAt', now)
    redis.call('ZADD', due, now, member)
    redis.call('ZADD', pending, now, member)
    redis.call('ZADD', history, now, delivery_id)
    created = created + 1
  end
end
return created
