-- Orders of one shard whose lease has run out.
-- KEYS: active. ARGV: how many at most.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
