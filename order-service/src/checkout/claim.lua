-- Takes over an order whose runner's lease ran out: exactly one caller wins, because the score
-- moves into the future in the same step. 'claimed', 'held' (the lease is live) or 'gone'.
-- KEYS: order, active. ARGV: order id, new owner, lease (ms).
local order, active = KEYS[1], KEYS[2]
local id, owner, lease_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
if redis.call('EXISTS', order) == 0 then
  redis.call('ZREM', active, id)
  return 'gone'
end
local score = redis.call('ZSCORE', active, id)
if score and tonumber(score) > now then return 'held' end
redis.call('ZADD', active, now + lease_ms, id)
redis.call('HSET', order, 'owner', owner)
redis.call('HINCRBY', order, 'claims', 1)
return 'claimed'
