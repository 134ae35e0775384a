-- A manual retry: the delivery is due at once. A dead or succeeded one gets one more attempt
-- (`manual`: a failure makes it dead again); a pending one keeps its place in the schedule and
-- is only brought forward.
-- KEYS: the delivery, due, pending. ARGV: member, now (ms).
-- Answers the status it had, or 'missing'.
local delivery, due, pending = KEYS[1], KEYS[2], KEYS[3]
local member, now = ARGV[1], ARGV[2]
local d = redis.call('HMGET', delivery, 'status', 'createdAt')
if not d[1] then return 'missing' end
if d[1] ~= 'pending' then
  redis.call('HSET', delivery, 'status', 'pending', 'manual', '1')
  redis.call('ZADD', pending, d[2], member)
end
redis.call('HSET', delivery, 'nextAt', now)
redis.call('ZADD', due, now, member)
return d[1]
