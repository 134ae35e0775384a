-- Records an attempt and what follows it (the caller decided: schedule.rs): 'retry' makes the
-- delivery due again at `next`; 'succeeded' and 'dead' take it out of the queue. The attempt
-- is appended to its history either way. A finished delivery (and its attempts) is kept for
-- the retention, then expires; a manual retry keeps it again (retry.lua).
-- KEYS: the delivery, its attempts, due, the endpoint's due set, pending.
-- ARGV: endpointId, deliveryId, outcome ('succeeded' | 'retry' | 'dead'), the attempt (JSON),
--   next (ms, for a retry), retention (ms).
local delivery, attempts, due, endpoint_due, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local endpoint, id, outcome, attempt, next_at, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', delivery) == 0 then
  redis.call('ZREM', endpoint_due, id)
  redis.call('ZREM', pending, id)
  refresh_due(due, endpoint_due, endpoint)
  return 'missing'
end
redis.call('RPUSH', attempts, attempt)
redis.call('HINCRBY', delivery, 'attempts', 1)
if outcome == 'retry' then
  redis.call('HSET', delivery, 'status', 'pending', 'nextAt', next_at, 'manual', '')
  redis.call('ZADD', endpoint_due, next_at, id)
else
  redis.call('HSET', delivery, 'status', outcome, 'nextAt', '', 'manual', '')
  redis.call('ZREM', endpoint_due, id)
  redis.call('ZREM', pending, id)
  redis.call('PEXPIRE', delivery, retention)
  redis.call('PEXPIRE', attempts, retention)
end
refresh_due(due, endpoint_due, endpoint)
return outcome
