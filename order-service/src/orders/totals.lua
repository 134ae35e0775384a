-- A shard's totals as GET /order/totals reads them. The hash counts every order that left
-- processing; a processing order is counted here, when read, from recovery's set, which holds
-- each one until it ends (with ended orders that await a Pix or owe stock a release: only a
-- status of processing counts). The checkout then writes its totals once, when its order ends.
-- Hashes written before #29's twelfth pass also counted processing orders
-- (XXX:processing:count): orders::store leaves those fields out.
-- KEYS: totals, active. Returns {the hash's fields and values, the processing orders' count}.
local fields = redis.call('HGETALL', KEYS[1])
local orders = string.match(KEYS[1], '^(.*:)totals$') .. 'order:'
local processing = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('HGET', orders .. id, 'status') == 'processing' then processing = processing + 1 end
end
return {fields, processing}
