-- Revokes an API key: out of the account's keys and out of the lookup by hash in one step. Every
-- replica looks a key up on each request (nothing is cached), so it stops working at once.
-- KEYS: the account's keys. ARGV: keyId, lookup prefix.
local hash = redis.call('HGET', KEYS[1], ARGV[1])
if not hash then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[2] .. hash)
return 1
