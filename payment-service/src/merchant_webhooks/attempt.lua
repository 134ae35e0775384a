-- Records an attempt and what follows it (the caller decided: schedule.rs): 'retry' makes the
-- delivery due again at `next`; 'succeeded' and 'dead' take it out of the queue. The attempt
-- is appended to its history either way.
-- KEYS: the delivery, its attempts, due, pending.
-- ARGV: member, outcome ('succeeded' | 'retry' | 'dead'), the attempt (JSON), next (ms, for a retry).
local delivery, attempts, due, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, outcome, attempt, next_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', delivery) == 0 then
  redis.call('ZREM', due, member)
  redis.call('ZREM', pending, member)
  return 'missing'
end
redis.call('RPUSH', attempts, attempt)
redis.call('HINCRBY', delivery, 'attempts', 1)
if outcome == 'retry' then
  redis.call('HSET', delivery, 'status', 'pending', 'nextAt', next_at, 'manual', '')
  redis.call('ZADD', due, next_at, member)
else
  redis.call('HSET', delivery, 'status', outcome, 'nextAt', '', 'manual', '')
  redis.call('ZREM', due, member)
  redis.call('ZREM', pending, member)
end
return outcome
