-- An ended order's owed release was answered: no longer owed, and the step is on its record.
-- Recovery retires the order when it settles its key.
-- KEYS: order, steps (the legacy list, unused). ARGV: step ("name status at").
if redis.call('HDEL', KEYS[1], 'releaseOwed') == 1 then
  local set = {}
  local cur = redis.call('HMGET', KEYS[1], 'n', 'st')
  push_steps(set, steps_of(cur[1], cur[2]), ARGV[1])
  redis.call('HSET', KEYS[1], unpack(set))
end
return 1
