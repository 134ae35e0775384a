-- An ended order's owed release was answered: no longer owed, and the step is on its record.
-- Recovery retires the order when it settles its key.
-- KEYS: order, steps. ARGV: step JSON.
if redis.call('HDEL', KEYS[1], 'releaseOwed') == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return 1
