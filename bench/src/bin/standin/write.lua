-- Like the services' scripts: read, write a hash, set its expiry — one round trip.
-- KEYS: the hash. ARGV: the value to write. Answers how many writes the hash has had.
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], 60000)
return n
